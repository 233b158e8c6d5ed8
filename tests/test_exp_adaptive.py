"""Tests of the adaptive-learning-rate experiment: its metrics on known inputs, its runs against
the lecture's algorithm boxes in NumPy, the saddle and Adam claims with their figures, and (slow)
one quick end-to-end run with the MNIST part."""

from __future__ import annotations

import io
import json
import math

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from lecopt import landscapes
from lecopt import optimizers as O
from lecopt import transforms as T
from lecopt.experiments import Context
from lecopt.experiments import adaptive as A
from tests import reference

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# ----------------------------------------------------------------------------- escape_step


def test_escape_step_known_paths():
    path = [[1.0, 0.0], [0.5, 0.2], [0.2, -1.5], [0.0, 2.0]]
    assert A.escape_step(path, 1.0) == 2  # |x2| counts on either side of the saddle
    assert A.escape_step(path, 1.9) == 3
    assert A.escape_step(path, 2.0) is None  # strictly beyond the radius
    # Along x1 instead; the direction need not be a unit vector.
    assert A.escape_step(path, 0.9, direction=(3.0, 0.0)) == 0
    assert A.escape_step(path, 0.9, direction=(-1.0, 0.0)) == 0
    # Around another centre.
    assert A.escape_step(path, 0.5, center=(0.0, 0.2)) == 2
    # Along a diagonal: (x1 + x2)/sqrt(2) > 1 first at [0.0, 2.0] (1.41).
    assert A.escape_step(path, 1.0, direction=(1.0, 1.0)) == 3


def test_escape_step_of_a_linearised_saddle_closed_form():
    # GD on x1^2 - x2^2 near the saddle: x2_t = x2_0 (1 + 2 alpha)^t exactly, so the first t
    # with x2_t > r is floor(log(r / x2_0) / log(1 + 2 alpha)) + 1.
    alpha, x20, r = 0.05, 1e-3, 0.5
    t = np.arange(200)
    path = np.stack([1.5 * (1 - 2 * alpha) ** t, x20 * (1 + 2 * alpha) ** t], axis=1)
    expected = math.floor(math.log(r / x20) / math.log(1 + 2 * alpha)) + 1
    assert A.escape_step(path, r) == expected


def test_escape_step_bad_input():
    with pytest.raises(ValueError, match="radius"):
        A.escape_step([[0.0, 0.0]], 0.0)
    with pytest.raises(ValueError, match="shape"):
        A.escape_step([0.0, 1.0], 1.0)
    with pytest.raises(ValueError, match="zero"):
        A.escape_step([[0.0, 1.0]], 1.0, direction=(0.0, 0.0))


def test_loglog_slope_of_power_laws():
    t = np.arange(1, 1000)
    assert A.loglog_slope(t, 3.0 / np.sqrt(t)) == pytest.approx(-0.5, abs=1e-12)
    assert A.loglog_slope(t, np.full(t.shape, 2.0)) == pytest.approx(0.0, abs=1e-12)
    assert A.loglog_slope([1, 10, 100], [1.0, 0.1, 0.01]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="same length"):
        A.loglog_slope([1, 2], [1.0])


# ----------------------------------------------------------------------------- runs vs NumPy


def test_effective_rates_are_algorithms_3_and_4(x64):
    g = np.random.default_rng(0).normal(1.0, 0.5, 100)
    alpha, rho = 0.01, 0.9
    rate_ada = A._effective_rate(O.adagrad(alpha, eps=1e-7), jnp.asarray(g))
    r = np.cumsum(g * g)  # Algorithm 3, line 8
    np.testing.assert_allclose(np.asarray(rate_ada), alpha / (1e-7 + np.sqrt(r)), rtol=1e-12)
    r, ref = 0.0, []
    for gi in g:
        r = rho * r + (1 - rho) * gi * gi  # Algorithm 4, line 8
        ref.append(alpha / (1e-6 + np.sqrt(r)))  # line 9
    rate_rms = A._effective_rate(O.rmsprop(alpha, decay=rho, eps=1e-6), jnp.asarray(g))
    np.testing.assert_allclose(np.asarray(rate_rms), ref, rtol=1e-12)


def test_adam_moments_are_algorithm_5(x64):
    g = np.random.default_rng(1).normal(1.0, 1.0, 30)
    rho1, rho2 = 0.9, 0.999
    s, s_hat, r, r_hat = (np.asarray(a) for a in A._adam_moments(
        T.scale_by_adam(rho1, rho2), jnp.asarray(g), jnp.asarray(rho1), jnp.asarray(rho2)))
    sn = rn = 0.0
    for t, gi in enumerate(g, start=1):
        sn = rho1 * sn + (1 - rho1) * gi  # line 11
        rn = rho2 * rn + (1 - rho2) * gi * gi  # line 12
        np.testing.assert_allclose(s[t - 1], sn, rtol=1e-12)
        np.testing.assert_allclose(s_hat[t - 1], sn / (1 - rho1**t), rtol=1e-12)  # line 13
        np.testing.assert_allclose(r[t - 1], rn, rtol=1e-12)
        np.testing.assert_allclose(r_hat[t - 1], rn / (1 - rho2**t), rtol=1e-12)  # line 14


def test_effective_rates_follow_the_closed_forms():
    rates = A._effective_rates(seed=0)
    assert rates["holds"]
    assert rates["slope_adagrad"] == pytest.approx(-0.5, abs=A.SLOPE_TOL)
    assert abs(rates["slope_rmsprop"]) < A.SLOPE_TOL
    # Adagrad: r_t ~ t E[g^2], so alpha / sqrt(r_T) ~ alpha / sqrt(T E[g^2]).
    c = A.RATE
    e_g2 = c["mu"] ** 2 + c["sigma"] ** 2
    assert rates["adagrad"][-1] == pytest.approx(c["alpha"] / math.sqrt(c["num_steps"] * e_g2),
                                                 rel=0.05)


# ----------------------------------------------------------------------------- claims 12, 13


def test_adam_bias_claim_holds_and_draws():
    m = A.adam_bias_correction(seed=0)
    assert m.holds, m.evidence
    # The lecture's first step: s^[1] = (1 - rho1) g, so its mean is (1 - rho1) E[g].
    assert m.data["s"][0] == pytest.approx((1 - A.ADAM["rho1"]) * A.ADAM["mu"], rel=0.05)
    chex.assert_shape([m.data[k] for k in ("s", "s_hat", "r", "r_hat")], (A.ADAM["num_steps"],))
    json.dumps(A.ADAM_BIAS_CORRECTION.judged(m).to_dict())
    fig = A.plot_adam_bias(m.data)
    assert fig.data[:8] == PNG_MAGIC and fig.name == "adam_bias" and fig.title and fig.caption


def _numpy_escape_steps() -> dict[str, int | None]:
    """The first |x2| > sqrt(2/3) of each method, from the algorithm boxes in float64 NumPy."""
    rec = landscapes.LANDSCAPES["saddle"]
    s = rec.suggested
    lr, phi, n = s["learning_rate"], s["momentum"], A.SADDLE_STEPS

    def grad(th, k):  # f = x1^2 - x2^2 + x2^4 / 4
        x1, x2 = th["x"]
        return {"x": np.array([2 * x1, -2 * x2 + x2**3])}

    x0 = {"x": np.asarray(s["x0"], np.float64)}
    runs = {
        "SGD": reference.momentum(x0, grad, lr, 0.0, n),
        "momentum": reference.momentum(x0, grad, lr, phi, n),
        "Nesterov": reference.nesterov(x0, grad, lr, phi, n),
        "Adagrad": reference.adagrad(x0, grad, lr, 1e-7, n),
        "RMSProp": reference.rmsprop(x0, grad, lr, 0.9, 1e-6, n),
        "Adam": reference.adam(x0, grad, lr, 0.9, 0.999, 1e-8, n),
    }
    paths = {name: np.array([p["x"] for p in path]) for name, path in runs.items()}
    # sgd(nesterov=True) holds Algorithm 2's look-ahead point theta_t + phi nu_t.
    theta = paths["Nesterov"]
    paths["Nesterov"] = theta + phi * np.diff(theta, axis=0, prepend=theta[:1])
    out = {}
    for name, path in paths.items():
        x2 = np.abs(path[:, 1])
        hit = np.flatnonzero(x2 > math.sqrt(2 / 3))
        out[name] = int(hit[0]) if hit.size else None
    return out


def test_saddle_escape_steps_and_ranking_match_numpy():
    m = A.saddle_escape()
    assert m.holds, m.evidence
    expected = _numpy_escape_steps()
    assert m.numbers["escape_steps"] == expected
    ranking = sorted(expected, key=lambda k: math.inf if expected[k] is None else expected[k])
    assert m.numbers["ranking"] == ranking
    # Every method leaves before SGD (the rule), and the lecture's order is reported as found.
    assert ranking[-1] == "SGD"
    assert m.numbers["lecture_order_matched"] == (ranking[:2] == ["RMSProp", "Adagrad"])
    assert f"measured: {ranking[0]} first, then {ranking[1]}" in m.evidence


def test_saddle_figures_are_a_png_and_a_gif_of_the_same_name():
    m = A.saddle_escape()
    still, animation = A.plot_saddle(m.data)
    assert (still.filename, animation.filename) == ("saddle.png", "saddle.gif")
    assert still.data[:8] == PNG_MAGIC
    with Image.open(io.BytesIO(animation.data)) as im:
        assert im.format == "GIF"
        assert 2 <= im.n_frames <= A.GIF_FRAMES
    assert len(animation.data) < 1_000_000


@pytest.mark.slow
def test_quick_run():
    res = A.run(Context(quick=True, progress=False))
    assert [(c.number, c.id, c.statement) for c in res.claims] == [tuple(s) for s in A.CLAIMS]
    by_id = {c.id: c for c in res.claims}
    assert by_id["adam-bias-correction"].holds and by_id["saddle-escape"].holds
    c11 = by_id["adagrad-vs-rmsprop"]
    assert c11.seeds["run"] == A.MNIST_QUICK["seeds"]
    # RMSProp below Adagrad on the seeds the tally says, from the recorded final losses.
    final = c11.numbers["mnist_final_train_loss"]
    lower = sum(r < a for r, a in zip(final["RMSProp"], final["Adagrad"]))
    assert c11.seeds["held"] == lower
    for c in res.claims:
        json.dumps(c.to_dict())
    assert [f.filename for f in res.figures] == ["adaptive_rates.png", "adaptive_mnist.png",
                                                 "adam_bias.png", "saddle.png", "saddle.gif"]
    json.dumps(res.settings)
