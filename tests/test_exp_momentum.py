"""Tests of the momentum experiment: its metrics on known inputs, its runs against the lecture's
formulas in NumPy, and one quick end-to-end run."""

from __future__ import annotations

import io
import json

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from lecopt import landscapes
from lecopt import optimizers as O
from lecopt.experiments import momentum as M
from tests import reference

# ----------------------------------------------------------------------------- overshoot


def test_overshoot_known_paths():
    assert M.overshoot([-1.0, -0.5, 0.3, -0.1, 0.0], 0.0) == pytest.approx(0.3)
    # Approached from above: passing below the target is the overshoot.
    assert M.overshoot([2.0, 1.0, -0.5, 0.2], 0.0) == pytest.approx(0.5)
    # A target away from zero.
    assert M.overshoot([5.0, 3.5, 2.6, 3.0], 3.0) == pytest.approx(0.4)
    # Never passes the target, or lands exactly on it.
    assert M.overshoot([-1.0, -0.5, -0.1], 0.0) == 0.0
    assert M.overshoot([-1.0, 0.0, 0.0], 0.0) == 0.0


def test_overshoot_of_damped_oscillation_is_the_first_peak():
    # x_t = -cos(w t) d^t: the first maximum past 0 is the largest.
    t = np.arange(200)
    x = -np.cos(0.3 * t) * 0.95**t
    assert M.overshoot(x, 0.0) == pytest.approx(np.max(x))
    assert M.overshoot(x, 0.0) == pytest.approx(x[np.argmax(x[: int(np.pi / 0.3) + 3])])


def test_overshoot_bad_input():
    with pytest.raises(ValueError, match="target"):
        M.overshoot([0.0, 1.0], 0.0)
    with pytest.raises(ValueError, match="1-D"):
        M.overshoot(np.zeros((3, 2)), 0.0)
    with pytest.raises(ValueError, match="1-D"):
        M.overshoot([], 0.0)


# ----------------------------------------------------------------------------- reversals


def test_reversals_known_sequences():
    assert M.reversals([0, 1, 0, 1, 1, 2]) == 2  # the rest (1 -> 1) neither breaks nor adds
    assert M.reversals(np.arange(10.0)) == 0
    assert M.reversals([3.0]) == 0
    assert M.reversals([1.0, -1.0, 1.0, -1.0, 1.0]) == 3
    # Steps up to tol are ignored: the tiny wiggle at 1 is not a reversal.
    assert M.reversals([0.0, 1.0, 0.9995, 2.0]) == 2
    assert M.reversals([0.0, 1.0, 0.9995, 2.0], tol=1e-3) == 0


def test_reversals_of_gradient_descent_zigzag_closed_form():
    # GD on h x^2/2 with 1 < alpha h < 2: x_t = (1 - alpha h)^t x0 flips sign every step, so
    # every one of the T - 1 consecutive difference pairs is a reversal.
    x = 2.0 * (1 - 1.8) ** np.arange(30)
    assert M.reversals(x) == 28
    # With alpha h < 1 it decays monotonically.
    assert M.reversals(2.0 * (1 - 0.3) ** np.arange(30)) == 0


def test_reversals_bad_input():
    with pytest.raises(ValueError, match="1-D"):
        M.reversals(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="tol"):
        M.reversals([0.0, 1.0], tol=-1.0)


# ----------------------------------------------------------------------------- iterations_to


def test_iterations_to_known_inputs():
    assert M.iterations_to([4.0, 2.0, 0.5, 0.1], 1.0) == 2
    assert M.iterations_to([0.5, 2.0], 1.0) == 0
    assert M.iterations_to([4.0, 2.0], 1.0) is None
    assert M.iterations_to([1.0, 1.0], 1.0) is None  # strictly below
    # GD on x^2/2 with alpha = 0.5: f_t = 0.5 * 0.25^t; below 1e-3 first at t = 5 (4.9e-4).
    f = 0.5 * 0.25 ** np.arange(10)
    assert M.iterations_to(f, 1e-3) == 5
    with pytest.raises(ValueError, match="1-D"):
        M.iterations_to(np.zeros((2, 2)), 1.0)


# ----------------------------------------------------------------------------- runs


def test_constant_gradient_steps_match_the_geometric_sum(compile_counter):
    alpha, g, n = 0.01, 1.5, 300
    t = np.arange(1, n + 1)
    grad = jnp.full((1,), g, jnp.float32)
    M._constant_gradient_steps(O.sgd(jnp.float32(alpha), momentum=jnp.float32(0.5)), grad, n)
    for phi in (0.0, 0.9, 0.99):
        # A new phi runs through the program already compiled.
        with compile_counter.expect(0):
            tx = O.sgd(jnp.float32(alpha), momentum=jnp.float32(phi))
            steps = -np.asarray(M._constant_gradient_steps(tx, grad, n))[:, 0]
        closed = alpha * g * (1 - phi**t) / (1 - phi)
        np.testing.assert_allclose(steps, closed, rtol=2e-5)


@pytest.mark.parametrize("nesterov", [False, True])
def test_1d_runs_are_algorithms_1_and_2(nesterov, x64):
    h, theta0, alpha, phi, n = 1.3, -1.0, 0.2, 0.9, 40
    tx = O.sgd(alpha, momentum=phi)
    thetas, points = M._momentum_1d(tx, jnp.asarray(theta0), jnp.asarray(h), n, nesterov)
    grad = lambda th, k: {"theta": h * th["theta"]}  # noqa: E731
    algo = reference.nesterov if nesterov else reference.momentum
    ref = np.array([d["theta"] for d in algo({"theta": np.array(theta0)}, grad, alpha, phi, n)])
    np.testing.assert_allclose(np.asarray(thetas), ref, rtol=1e-12, atol=1e-14)
    # Where the gradients were taken: theta_t, or the look-ahead theta_t + phi nu_t.
    nu = np.diff(ref, prepend=ref[0])[:-1]
    expected = ref[:-1] + phi * nu if nesterov else ref[:-1]
    np.testing.assert_allclose(np.asarray(points), expected, rtol=1e-12, atol=1e-14)


def test_run_checks_each_declared_claim_once_and_returns_its_figures(quick_reproduction):
    res = quick_reproduction.results[M.ID]
    assert [(c.number, c.id, c.statement) for c in res.claims] == [tuple(s) for s in M.CLAIMS]
    for c in res.claims:
        assert c.holds, (c.id, c.evidence)
        assert c.seeds is None  # all deterministic
        json.dumps(c.to_dict())
    assert [f.filename for f in res.figures] == ["terminal_velocity.png", "ravine.png",
                                                 "styblinski_tang.png", "nesterov.png"]
    for f in res.figures:
        with Image.open(io.BytesIO(f.data)) as im:
            assert im.format == "PNG" and min(im.size) > 100
        assert f.title and f.caption
    json.dumps(res.settings)


def test_terminal_velocity_numbers_are_the_geometric_sum():
    """The reported steps against the lecture's closed form alpha g (1 - phi^T) / (1 - phi)."""
    m = M.terminal_velocity()
    alpha, g, n = M.TERMINAL_ALPHA, M.TERMINAL_GRADIENT, M.TERMINAL_STEPS
    for phi in M.TERMINAL_PHIS:
        closed = alpha * g * (1 - phi**n) / (1 - phi)
        assert m.numbers["final_step"][str(phi)] == pytest.approx(closed, rel=1e-5)
    assert m.numbers["ratio_phi_0.9_to_gd"] == pytest.approx((1 - 0.9**n) / 0.1, rel=1e-5)


def test_ravine_counts_match_a_numpy_run():
    """Iterations to the threshold and x2 reversals, recomputed with Algorithm 1 in NumPy."""
    rec = landscapes.LANDSCAPES["quadratic"]
    s = rec.suggested
    m = M.ravine()

    def grad(th, k):  # f = (x1^2 + 20 x2^2) / 2
        return {"x": th["x"] * np.array([1.0, 20.0])}

    for name, phi in (("gradient descent", 0.0), ("momentum", s["momentum"])):
        path = np.array([d["x"] for d in reference.momentum(
            {"x": np.asarray(s["x0"])}, grad, s["learning_rate"], phi, M.RAVINE_MEASURE_STEPS)])
        f = 0.5 * (path[:, 0] ** 2 + 20 * path[:, 1] ** 2)
        below = np.flatnonzero(f < M.RAVINE_LOSS_THRESHOLD)
        x2 = np.diff(path[: s["num_steps"] + 1, 1])
        flips = int(np.sum(np.sign(x2[1:]) != np.sign(x2[:-1])))
        assert m.numbers[name]["iterations_to_threshold"] == (int(below[0]) if below.size
                                                               else None)
        assert m.numbers[name]["reversals_x2"] == flips
