"""The metrics of the BatchNorm experiment (claims 14-17), on a quadratic with known answers."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lecopt import data, nn, optimizers, train
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


def test_spread_and_majority():
    assert float(bn.spread(jnp.array([3.0, -1.0, 2.0]))) == 4.0
    assert bn.majority([True, True, False])
    assert not bn.majority([True, False])
    assert not bn.majority([])


def test_eta_range_is_santurkars_relative_to_the_learning_rate():
    etas = bn.LEARNING_RATE * bn.ETA_FACTORS
    # Santurkar et al.: [0.05, 0.4] at a learning rate of 0.1.
    assert etas[0] / bn.LEARNING_RATE == pytest.approx(0.05 / 0.1)
    assert etas[-1] / bn.LEARNING_RATE == pytest.approx(0.4 / 0.1)
    assert bn.LEARNING_RATE == 0.03 and bn.MOMENTUM == 0.9 and bn.WEIGHT_DECAY == 1e-3


@pytest.fixture(scope="module")
def small_data():
    ds = data.load("mnist-5k")
    return types.SimpleNamespace(x_train=ds.x_train[:384], y_train=ds.y_train[:384],
                                 x_test=ds.x_test[:128], y_test=ds.y_test[:128])


def test_smoothness_run_trains_as_fit_does(small_data):
    """The smoothness run's own loop takes fit's steps: same init, data order and losses."""
    model = nn.MLP(features=(16,), batch_norm=True)
    tx = optimizers.sgd(bn.LEARNING_RATE, momentum=bn.MOMENTUM, weight_decay=bn.WEIGHT_DECAY)
    fixed = (jnp.asarray(small_data.x_train[:64]), jnp.asarray(small_data.y_train[:64]))
    etas = bn.LEARNING_RATE * bn.ETA_FACTORS
    out = bn._smoothness_run(model, tx, small_data, seed=3, epochs=2, every=2, etas=etas,
                             fixed=fixed)
    _, history = train.fit(model, tx, small_data, epochs=2, batch_size=bn.BATCH_SIZE, seed=3,
                           progress=False)
    np.testing.assert_allclose(out["train_loss"], history.step_loss, rtol=2e-5)
    steps = 2 * (384 // bn.BATCH_SIZE)
    assert list(out["steps"]) == list(range(0, steps + 1, 2))
    assert out["losses"].shape == (len(out["steps"]), len(etas))
    # The recorded summaries are the tested metric functions' formulas.
    np.testing.assert_allclose(out["variation"], out["losses"].max(1) - out["losses"].min(1),
                               rtol=1e-6)
    np.testing.assert_allclose(out["predictiveness"], out["changes"].max(1))
    assert np.all(out["changes"] >= 0) and np.all(np.isfinite(out["losses"]))


def test_batchnorm_loss_uses_the_batch_statistics(small_data):
    """In training mode the BN model's loss does not depend on the stored running averages."""
    model = nn.MLP(features=(8,), batch_norm=True)
    x, y = jnp.asarray(small_data.x_train[:32]), jnp.asarray(small_data.y_train[:32])
    v = jax.jit(lambda k: model.init(k, x[:1], train=False))(jax.random.PRNGKey(0))
    loss = jax.jit(lambda p, s: bn._loss(model, p, s, x, y))
    loss1, _ = loss(v["params"], v["batch_stats"])
    shifted = jax.tree.map(lambda a: a + 5.0, v["batch_stats"])
    loss2, new_stats = loss(v["params"], shifted)
    assert float(loss1) == pytest.approx(float(loss2), rel=1e-6)
    assert jax.tree.structure(new_stats) == jax.tree.structure(v["batch_stats"])


@pytest.mark.slow
def test_quick_run(tmp_path):
    res = bn.run(Context(out_dir=tmp_path, quick=True, progress=False))
    assert [c.id for c in res.claims] == list(bn.CLAIM_IDS)
    assert [c.number for c in res.claims] == list(bn.CLAIM_NUMBERS)
    for c in res.claims:
        assert c.evidence and c.threshold and c.seeds["run"] == 3
        assert any(ch.isdigit() for ch in c.evidence)
    for name in ("batchnorm_curves", "batchnorm_smoothness"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 10_000
