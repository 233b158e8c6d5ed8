"""The metrics of the BatchNorm experiment (claims 14-17), on a quadratic with known answers."""

from __future__ import annotations

import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lecopt import data, nn, train
from lecopt.experiments import Context
from lecopt.experiments import batchnorm as bn

A = np.diag([1.0, 4.0, 9.0])
X = np.array([1.0, -0.5, 0.25])
ETAS = np.array([0.0, 0.02, 0.05, 0.08, 0.1])


def quad(params):
    """L(theta) = 1/2 x^T A x + 1/2 |w|^2 over a pytree theta = {"x", "w"}."""
    x, w = params["x"], params["w"]
    return 0.5 * x @ (jnp.asarray(A) @ x) + 0.5 * jnp.sum(w * w)


def quad_numpy(x, w):
    return 0.5 * x @ A @ x + 0.5 * np.sum(w * w)


@pytest.fixture
def point():
    w = np.array([[0.3, -1.0], [2.0, 0.5]])
    params = {"x": jnp.asarray(X, jnp.float32), "w": jnp.asarray(w, jnp.float32)}
    grad = {"x": jnp.asarray(A @ X, jnp.float32), "w": jnp.asarray(w, jnp.float32)}
    return params, grad, w


def test_landscape_variation_on_a_quadratic(point, compile_counter):
    params, grad, w = point
    # Closed form in NumPy: the loss at theta - eta g for g = (A x, w).
    expected_losses = np.array([quad_numpy(X - e * (A @ X), (1 - e) * w) for e in ETAS])
    expected = expected_losses.max() - expected_losses.min()
    f = jax.jit(lambda p, g, e: bn.landscape_variation(quad, p, g, e))
    got = f(params, grad, jnp.asarray(ETAS, jnp.float32))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    losses, _ = jax.jit(lambda p, g, e: bn.along_gradient(quad, p, g, e))(
        params, grad, jnp.asarray(ETAS, jnp.float32))
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
    # New values, same shapes: the same program.
    params2 = {"x": params["x"] * 2, "w": params["w"] * 2}
    etas2 = jnp.asarray(ETAS[::-1], jnp.float32)
    with compile_counter.expect(0):
        f(params2, grad, etas2)


def test_gradient_predictiveness_on_a_quadratic(point, compile_counter):
    params, grad, w = point
    # grad L(theta - eta g) - g = -eta (A A x, w) for the quadratic.
    expected_changes = ETAS * np.sqrt(np.sum((A @ A @ X) ** 2) + np.sum(w * w))
    f = jax.jit(lambda p, g, e: bn.gradient_predictiveness(quad, p, g, e))
    got = f(params, grad, jnp.asarray(ETAS, jnp.float32))
    assert float(got) == pytest.approx(expected_changes.max(), rel=1e-5)
    _, changes = bn.along_gradient(quad, params, grad, jnp.asarray(ETAS, jnp.float32))
    np.testing.assert_allclose(changes, expected_changes, rtol=1e-5, atol=1e-6)
    grad2 = {"x": -grad["x"], "w": -grad["w"]}
    etas = jnp.asarray(ETAS, jnp.float32)
    with compile_counter.expect(0):
        f(params, grad2, etas)


def test_flat_landscape_has_zero_variation():
    def flat(p):
        return jnp.sum(p * 0.0) + 3.0

    p = jnp.ones(3)
    assert float(bn.landscape_variation(flat, p, jnp.ones(3), jnp.linspace(0, 1, 5))) == 0.0
    assert float(bn.gradient_predictiveness(flat, p, jnp.zeros(3), jnp.linspace(0, 1, 5))) == 0.0


def test_spread():
    assert float(bn.spread(jnp.array([3.0, -1.0, 2.0]))) == 4.0


@pytest.fixture(scope="module")
def small_data():
    ds = data.load("mnist-5k")
    return types.SimpleNamespace(x_train=ds.x_train[:384], y_train=ds.y_train[:384],
                                 x_test=ds.x_test[:128], y_test=ds.y_test[:128])


def _numpy_cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits.astype(np.float64)
    z = z - z.max(1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


def test_smoothness_run_measures_the_states_fit_passes(small_data):
    """At step 0 the measured loss is the cross-entropy of fit's initial state on the fixed
    batch (recomputed in NumPy from the logits); the summaries are the metrics' formulas."""
    model = nn.MLP(features=(16,), batch_norm=True)
    x, y = small_data.x_train[:64], small_data.y_train[:64]
    fixed = (jnp.asarray(x), jnp.asarray(y, jnp.int32))
    etas = bn.LEARNING_RATE * bn.ETA_FACTORS
    out = bn.smoothness_run(model, small_data, seed=3, epochs=2, every=2, etas=etas, fixed=fixed)
    steps = 2 * (384 // bn.BATCH_SIZE)
    assert out["steps"].tolist() == list(range(0, steps + 1, 2))
    chex.assert_shape([out["losses"], out["changes"]], (len(out["steps"]), len(etas)))
    chex.assert_shape(out["train_loss"], (steps,))
    state = train.init_state(model, bn._optimizer(), x, seed=3)
    logits, _ = model.apply(state.variables, x, train=True, mutable=["batch_stats"])
    assert out["loss"][0] == pytest.approx(_numpy_cross_entropy(np.asarray(logits), y),
                                           rel=1e-5)
    # The first minibatch's training loss is measured at the same initial parameters.
    order = train.batch_order(3, 0, 384, bn.BATCH_SIZE)[0]
    logits0, _ = model.apply(state.variables, small_data.x_train[order], train=True,
                             mutable=["batch_stats"])
    assert out["train_loss"][0] == pytest.approx(
        _numpy_cross_entropy(np.asarray(logits0), small_data.y_train[order]), rel=1e-5)
    np.testing.assert_allclose(out["variation"], out["losses"].max(1) - out["losses"].min(1))
    np.testing.assert_allclose(out["predictiveness"], out["changes"].max(1))
    assert np.all(out["changes"] >= 0) and np.all(np.isfinite(out["losses"]))


def test_measure_uses_the_batch_statistics(small_data):
    """In training mode the measured loss does not depend on the stored running averages."""
    model = nn.MLP(features=(8,), batch_norm=True)
    x, y = jnp.asarray(small_data.x_train[:32]), jnp.asarray(small_data.y_train[:32])
    v = jax.jit(lambda k: model.init(k, x[:1], train=False))(jax.random.PRNGKey(0))
    etas = jnp.asarray(ETAS, jnp.float32)
    a = bn._measure(model, v["params"], v["batch_stats"], x, y, etas)
    shifted = jax.tree.map(lambda s: s + 5.0, v["batch_stats"])
    b = bn._measure(model, v["params"], shifted, x, y, etas)
    chex.assert_trees_all_close(a, b, rtol=1e-6)


@pytest.mark.slow
def test_quick_run():
    res = bn.run(Context(quick=True, progress=False))
    assert [(c.number, c.id, c.statement) for c in res.claims] == [tuple(s) for s in bn.CLAIMS]
    for c in res.claims:
        assert c.evidence and c.threshold and c.seeds["run"] == 3
    assert [f.filename for f in res.figures] == ["batchnorm_curves.png",
                                                 "batchnorm_smoothness.png"]
    # Claim 17's verdict is its rule applied to the recorded test errors.
    pop = {c.id: c for c in res.claims}["batchnorm-population-stats"]
    diffs = np.abs(np.subtract(pop.numbers["running_average"], pop.numbers["population"]))
    assert pop.holds == bool(np.all(diffs <= bn.POP_TOLERANCE))
