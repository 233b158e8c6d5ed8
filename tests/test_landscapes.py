"""Tests of lecopt.landscapes against NumPy closed forms and the lecture's known results."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.tree_util import Partial

from lecopt import landscapes as L
from lecopt import optimizers as O

# ----------------------------------------------------------------------------- references
# The functions and gradients written out by hand in float64 NumPy.


def np_quadratic(x, a=1.0, b=20.0):
    return 0.5 * (a * x[0] ** 2 + b * x[1] ** 2), np.array([a * x[0], b * x[1]])


def np_styblinski_tang(x):
    x = np.asarray(x, float)
    return 0.5 * np.sum(x**4 - 16 * x**2 + 5 * x), 0.5 * (4 * x**3 - 32 * x + 5)


def np_saddle(x):
    return x[0] ** 2 - x[1] ** 2 + x[1] ** 4 / 4, np.array([2 * x[0], -2 * x[1] + x[1] ** 3])


def np_rosenbrock(x):
    f = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
    g = np.array([-2 * (1 - x[0]) - 400 * x[0] * (x[1] - x[0] ** 2), 200 * (x[1] - x[0] ** 2)])
    return f, g


REFERENCES = {
    "quadratic": np_quadratic,
    "styblinski_tang": np_styblinski_tang,
    "saddle": np_saddle,
    "rosenbrock": np_rosenbrock,
}


def np_heavy_ball(grad, x0, alpha, phi, num_steps):
    """Algorithm 1 with exact gradients: nu <- phi nu - alpha g; x <- x + nu."""
    x = np.array(x0, float)
    nu = np.zeros_like(x)
    out = [x.copy()]
    for _ in range(num_steps):
        nu = phi * nu - alpha * grad(x)
        x = x + nu
        out.append(x.copy())
    return np.array(out)


# ----------------------------------------------------------------------------- functions


@pytest.mark.parametrize("name", list(REFERENCES))
def test_values_and_gradients_match_closed_forms(name, x64):
    fn = L.LANDSCAPES[name].fn
    points = np.random.default_rng(0).uniform(-3, 3, size=(16, 2))
    value = jax.jit(jax.vmap(fn))(points)
    grad = jax.jit(jax.vmap(jax.grad(fn)))(points)
    for p, v, g in zip(points, value, grad):
        f_ref, g_ref = REFERENCES[name](p)
        np.testing.assert_allclose(v, f_ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-12)


def test_quadratic_parameters_and_factory(x64):
    x = np.array([0.7, -1.3])
    np.testing.assert_allclose(L.quadratic(x, 2.0, 50.0), np_quadratic(x, 2.0, 50.0)[0])
    f = L.make_quadratic(2.0, 50.0)
    assert L.make_quadratic(2.0, 50.0) is f  # same object: trajectory compiles once
    np.testing.assert_allclose(f(x), np_quadratic(x, 2.0, 50.0)[0])
    np.testing.assert_allclose(jax.hessian(f)(jnp.asarray(x)), np.diag([2.0, 50.0]), rtol=1e-12)
    with pytest.raises(ValueError, match="b=0"):
        L.make_quadratic(1.0, 0)


def test_styblinski_tang_any_dimension_and_known_minima(x64):
    x = np.random.default_rng(1).normal(size=5)
    np.testing.assert_allclose(L.styblinski_tang(x), np_styblinski_tang(x)[0], rtol=1e-12)
    # The lecture's / literature values: x_i = -2.903534, f = -39.16617 d; local min 2.746803.
    rec = L.LANDSCAPES["styblinski_tang"]
    np.testing.assert_allclose(rec.minimizers[0], [-2.903534] * 2, atol=1e-6)
    np.testing.assert_allclose(rec.minimum, -39.16617 * 2, atol=1e-4)
    np.testing.assert_allclose(rec.local_minimizers[0], [2.746803] * 2, atol=1e-6)
    for d in (1, 3):
        np.testing.assert_allclose(
            L.styblinski_tang(jnp.full(d, -2.903534)), -39.16617 * d, rtol=1e-6
        )


@pytest.mark.parametrize("name", list(REFERENCES))
def test_registry_minima_are_stationary_and_global(name, x64):
    rec = L.LANDSCAPES[name]
    assert rec.name == name
    grad = jax.grad(rec.fn)
    hess = jax.hessian(rec.fn)
    for m in rec.minimizers + rec.local_minimizers:
        np.testing.assert_allclose(grad(jnp.asarray(m)), 0.0, atol=1e-9)
        assert np.all(np.linalg.eigvalsh(np.asarray(hess(jnp.asarray(m)))) > 0)
    for m in rec.minimizers:
        np.testing.assert_allclose(rec.fn(jnp.asarray(m)), rec.minimum, atol=1e-9)
    for m in rec.local_minimizers:
        assert rec.fn(jnp.asarray(m)) > rec.minimum + 1.0
    for s in rec.saddle_points:
        np.testing.assert_allclose(grad(jnp.asarray(s)), 0.0, atol=1e-9)
        eig = np.linalg.eigvalsh(np.asarray(hess(jnp.asarray(s))))
        assert eig.min() < 0 < eig.max()
    # Nothing in the plotting window is lower than the global minimum.
    (a, b), (c, d) = rec.window
    grid = np.stack(np.meshgrid(np.linspace(a, b, 101), np.linspace(c, d, 101)), -1)
    values = jax.vmap(rec.fn)(jnp.asarray(grid.reshape(-1, 2)))
    assert float(values.min()) >= rec.minimum - 1e-9
    assert a <= rec.start[0] <= b and c <= rec.start[1] <= d


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"shape \(2,\), got shape \(3,\)"):
        L.quadratic(jnp.zeros(3))
    with pytest.raises(ValueError, match="saddle"):
        jax.jit(L.saddle)(jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="styblinski_tang"):
        L.styblinski_tang(jnp.zeros(0))


# ----------------------------------------------------------------------------- trajectory


def test_gradient_descent_on_quadratic_is_the_closed_form(x64):
    # GD multiplies x1 by (1 - alpha a) and x2 by (1 - alpha b) per step.
    alpha, t = 0.09, np.arange(41)[:, None]
    path = L.trajectory(optax.sgd(alpha), L.quadratic, jnp.array([-9.0, 2.0]), 40)
    expected = np.array([-9.0, 2.0]) * np.array([1 - alpha, 1 - 20 * alpha]) ** t
    chex.assert_shape(path, (41, 2))
    np.testing.assert_allclose(path, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(REFERENCES))
def test_trajectory_matches_numpy_heavy_ball(name, x64):
    rec = L.LANDSCAPES[name]
    s = rec.suggested
    phi = s["momentum"]
    n = min(s["num_steps"], 100)
    grad = lambda x: REFERENCES[name](x)[1]
    ref = np_heavy_ball(grad, s["x0"], s["learning_rate"], phi, n)
    for opt in (O.sgd(s["learning_rate"], momentum=phi), optax.sgd(s["learning_rate"], phi)):
        path = L.trajectory(opt, rec.fn, s["x0"], n)
        np.testing.assert_allclose(path, ref, rtol=1e-9, atol=1e-9)


def test_quadratic_momentum_damps_the_zigzag():
    rec = L.LANDSCAPES["quadratic"]
    s = rec.suggested
    gd = np.asarray(L.trajectory(O.sgd(s["learning_rate"]), rec.fn, s["x0"], s["num_steps"]))
    mom = np.asarray(
        L.trajectory(
            O.sgd(s["learning_rate"], momentum=s["momentum"]), rec.fn, s["x0"], s["num_steps"]
        )
    )
    flips = lambda p: int(np.sum(np.sign(p[1:, 1]) != np.sign(p[:-1, 1])))
    assert flips(gd) == s["num_steps"]  # GD crosses the ravine at every single step
    assert flips(mom) < 0.7 * s["num_steps"]
    f = lambda p: np.asarray(jax.vmap(rec.fn)(jnp.asarray(p)))
    assert f(mom)[20] < 1e-3 < 0.5 < f(gd)[20]
    assert np.abs(mom[5:, 1]).max() < np.abs(gd[5:, 1]).max()


def test_styblinski_tang_momentum_escapes_local_minimum():
    # The lecture's figure: GD stays in the local minimum, SGD with momentum reaches the global.
    rec = L.LANDSCAPES["styblinski_tang"]
    s = rec.suggested
    gd = L.trajectory(O.sgd(s["learning_rate"]), rec.fn, s["x0"], s["num_steps"])
    mom = L.trajectory(
        O.sgd(s["learning_rate"], momentum=s["momentum"]), rec.fn, s["x0"], s["num_steps"]
    )
    np.testing.assert_allclose(gd[-1], rec.local_minimizers[0], atol=1e-4)
    np.testing.assert_allclose(mom[-1], rec.minimizers[0], atol=1e-4)
    # GD never crosses the ridge at x_i = 0.1567; momentum does, in both coordinates.
    assert float(gd.min()) > 2.7
    # Robust to the exact settings (the reproduce experiments rely on this).
    for lr, phi in [(0.007, 0.9), (0.013, 0.9), (0.01, 0.85), (0.01, 0.92)]:
        end = L.trajectory(O.sgd(lr, momentum=phi), rec.fn, s["x0"], 600)[-1]
        np.testing.assert_allclose(end, rec.minimizers[0], atol=1e-3)
        end = L.trajectory(O.sgd(lr), rec.fn, s["x0"], 600)[-1]
        np.testing.assert_allclose(end, rec.local_minimizers[0], atol=1e-3)


def test_saddle_escape():
    rec = L.LANDSCAPES["saddle"]
    s = rec.suggested
    n, lr = s["num_steps"], s["learning_rate"]
    # Exactly on the ridge, GD converges to the saddle point.
    on_ridge = L.trajectory(O.sgd(lr), rec.fn, (1.5, 0.0), 200)
    np.testing.assert_allclose(on_ridge[-1], rec.saddle_points[0], atol=1e-6)
    # Off the ridge by 1e-3: GD has barely left; RMSProp sits in a global minimum.
    gd = L.trajectory(O.sgd(lr), rec.fn, s["x0"], n)
    rms = L.trajectory(O.rmsprop(lr), rec.fn, s["x0"], n)
    assert abs(float(gd[-1, 1])) < 0.4 and float(rec.fn(gd[-1])) > -0.2
    np.testing.assert_allclose(rms[-1], rec.minimizers[0], atol=1e-2)
    for opt in (O.sgd(lr, momentum=s["momentum"]), O.adagrad(0.1)):
        assert float(rec.fn(L.trajectory(opt, rec.fn, s["x0"], n)[-1])) < -0.8


def test_rosenbrock_suggested_settings():
    rec = L.LANDSCAPES["rosenbrock"]
    s = rec.suggested
    gd = L.trajectory(O.sgd(s["learning_rate"]), rec.fn, s["x0"], s["num_steps"])
    mom = L.trajectory(
        O.sgd(s["learning_rate"], momentum=s["momentum"]), rec.fn, s["x0"], s["num_steps"]
    )
    assert float(rec.fn(mom[-1])) < 1e-4 < 1e-2 < float(rec.fn(gd[-1])) < rec.fn(jnp.array(s["x0"]))


def test_trajectory_compiles_once_for_new_hyperparameters(compile_counter):
    x0 = jnp.array([4.6, 4.4])
    L.trajectory(O.sgd(0.01, momentum=0.9), L.styblinski_tang, x0, 7)  # warm up
    with compile_counter.expect(0):
        a = L.trajectory(O.sgd(0.02, momentum=0.5), L.styblinski_tang, x0, 7)
        b = L.trajectory(O.sgd(0.03, momentum=0.1), L.styblinski_tang, x0, 7)
    # Arrays (not weakly typed like Python numbers) are a second signature, shared by all arrays.
    lr = jnp.array(0.02, jnp.float32)
    L.trajectory(O.sgd(lr, momentum=jnp.array(0.9)), L.styblinski_tang, x0, 7)
    with compile_counter.expect(0):
        c = L.trajectory(O.sgd(lr, momentum=jnp.array(0.5)), L.styblinski_tang, x0, 7)
    np.testing.assert_allclose(a, c, rtol=1e-6)
    ref = np_heavy_ball(lambda x: np_styblinski_tang(x)[1], x0, 0.02, 0.5, 7)
    np.testing.assert_allclose(a, ref, rtol=1e-5)
    assert not np.allclose(a, b)
    # A different fn, length or structure is a new program; an optax optimizer object reused is
    # not.
    tx = optax.adam(0.1)
    with compile_counter.expect(1):
        L.trajectory(tx, L.saddle, x0, 7)
    with compile_counter.expect(0):
        L.trajectory(tx, L.saddle, x0, 7)


def test_trajectory_vmaps_over_learning_rates():
    lrs = jnp.array([0.005, 0.01, 0.02])
    x0 = jnp.array([-9.0, 2.0])
    paths = jax.vmap(lambda lr: L.trajectory(O.sgd(lr), L.quadratic, x0, 10))(lrs)
    chex.assert_shape(paths, (3, 11, 2))
    for lr, p in zip(lrs, paths):
        expected = (
            np.asarray(x0) * (1 - float(lr) * np.array([1.0, 20.0])) ** np.arange(11)[:, None]
        )
        np.testing.assert_allclose(p, expected, rtol=1e-5, atol=1e-6)


def _pytree_sgd(lr):
    # A hand-made optimizer in lecopt's style: init/update are Partials of module functions.
    return optax.GradientTransformation(Partial(_sgd_init), Partial(_sgd_update, lr))


def _sgd_init(params):
    return optax.EmptyState()


def _sgd_update(lr, updates, state, params=None):
    return jax.tree.map(lambda g: -lr * g, updates), state


def test_trajectory_with_a_pytree_optimizer_and_zero_steps(compile_counter):
    x0 = jnp.array([1.0, 1.0])
    path = L.trajectory(_pytree_sgd(0.1), L.saddle, x0, 3)
    np.testing.assert_allclose(
        path, np_heavy_ball(lambda x: np_saddle(x)[1], x0, 0.1, 0.0, 3), rtol=1e-6
    )
    with compile_counter.expect(0):
        L.trajectory(_pytree_sgd(0.2), L.saddle, x0, 3)
    np.testing.assert_array_equal(L.trajectory(_pytree_sgd(0.1), L.saddle, x0, 0), x0[None])


def test_trajectory_bad_arguments():
    with pytest.raises(TypeError, match="optimizer"):
        L.trajectory(object(), L.saddle, (1.0, 1.0), 3)
    with pytest.raises(TypeError, match="fn"):
        L.trajectory(optax.sgd(0.1), 3, (1.0, 1.0), 3)
    with pytest.raises(ValueError, match="num_steps=-1 is out of range"):
        L.trajectory(optax.sgd(0.1), L.saddle, (1.0, 1.0), -1)
    for bad in (2.5, True, "3"):
        with pytest.raises(TypeError, match="num_steps=.* must be an int >= 0"):
            L.trajectory(optax.sgd(0.1), L.saddle, (1.0, 1.0), bad)
    with pytest.raises(ValueError, match="shape"):
        L.trajectory(optax.sgd(0.1), L.saddle, np.zeros((2, 2)), 3)


# ----------------------------------------------------------------------------- plotting


def test_contour_draws_labelled_figure():
    import matplotlib.pyplot as plt

    ax = L.contour(L.styblinski_tang, num=40)
    assert ax.get_title().startswith("styblinski_tang")
    assert ax.get_xlabel() and ax.get_ylabel()
    assert ax.get_xlim() == (-5.0, 5.0)
    assert "global minimum" in [t.get_text() for t in ax.get_legend().get_texts()]
    fig, ax2 = plt.subplots()
    assert (
        L.contour(
            L.make_quadratic(1.0, 5.0),
            ax2,
            ((-1, 1), (-1, 1)),
            levels=[0.1, 0.5],
            filled=False,
            num=20,
        )
        is ax2
    )
    with pytest.raises(ValueError, match="window"):
        L.contour(L.make_quadratic(1.0, 5.0))
    with pytest.raises(ValueError, match="window"):
        L.contour(L.saddle, window=((1, -1), (0, 1)))
    plt.close("all")
