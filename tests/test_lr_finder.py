"""lecopt.lr_range_test on real problems, checked against NumPy and plain Python loops."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
import pytest

from lecopt import optimizers
from lecopt.lr_finder import RULES, LRRangeTestResult, lr_range_test

matplotlib.use("Agg")

D, M, NB = 8, 32, 25  # features, minibatch size, number of minibatches


def _separable_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=D)
    x = rng.normal(size=(3 * NB * M, D)).astype(np.float32)
    x = x[np.abs(x @ w) > 0.3][: NB * M]  # a gap between the classes: separable
    y = (x @ w > 0).astype(np.float32)
    return {"x": jnp.asarray(x.reshape(NB, M, D)), "y": jnp.asarray(y.reshape(NB, M))}


BATCHES = _separable_data()


def logistic_loss(params, batch):
    logits = batch["x"] @ params["w"] + params["b"]
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, batch["y"]))


def sgd_momentum(lr):
    return optimizers.sgd(lr, momentum=0.9)


def _zeros():
    return {"w": jnp.zeros(D, jnp.float32), "b": jnp.zeros((), jnp.float32)}


def _recompute_smoothed(losses, beta):
    avg, out = 0.0, []
    for k, loss in enumerate(np.asarray(losses, np.float64)):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (k + 1)))
    return np.array(out)


@pytest.fixture(scope="module")
def diverging():
    """One sweep that goes far enough to blow up (reused by several checks)."""
    return lr_range_test(
        logistic_loss, _zeros(), BATCHES, sgd_momentum, min_lr=1e-4, max_lr=1e4, num_steps=100
    )


def test_grid_is_exactly_exponential_from_min_lr(diverging):
    lrs = np.asarray(diverging.learning_rates)
    k = np.arange(100)
    assert lrs.dtype == np.float32 and lrs.shape == (100,)
    assert lrs[0] == np.float32(1e-4) and lrs[-1] == np.float32(1e4)
    np.testing.assert_allclose(lrs, 1e-4 * (1e8) ** (k / 99), rtol=3e-6)
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], (1e8) ** (1 / 99), rtol=1e-5)


def test_grid_x64_and_linear_mode(x64):
    params = {"w": jnp.zeros(D), "b": jnp.zeros(())}
    batches = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), BATCHES)
    res = lr_range_test(logistic_loss, params, batches, optax.sgd, min_lr=1e-6, max_lr=0.5,
                        num_steps=30)
    lrs = np.asarray(res.learning_rates)
    assert lrs.dtype == np.float64 and lrs[0] == 1e-6 and lrs[-1] == 0.5
    np.testing.assert_allclose(lrs, 1e-6 * (0.5 / 1e-6) ** (np.arange(30) / 29), rtol=1e-13)
    lin = lr_range_test(logistic_loss, params, batches, optax.sgd, min_lr=0.01, max_lr=0.5,
                        num_steps=30, mode="linear")
    lrs = np.asarray(lin.learning_rates)
    assert lrs[0] == 0.01 and lrs[-1] == 0.5
    np.testing.assert_allclose(lrs, 0.01 + 0.49 * np.arange(30) / 29, rtol=1e-13)
    assert int(lin.stopped_at) == 29 and not bool(lin.diverged)


def test_stops_on_divergence_and_smoothed_is_debiased_ema(diverging):
    res = diverging
    stop = int(res.stopped_at)
    assert bool(res.diverged) and stop < 100 - 1
    raw = np.asarray(res.losses)
    sm = np.asarray(res.smoothed_losses)
    assert np.all(np.isnan(raw[stop + 1:])) and np.all(np.isnan(sm[stop + 1:]))
    assert np.all(np.isfinite(raw[:stop]))
    # Smoothing: the bias-corrected EMA (fastai) recomputed here in float64.
    np.testing.assert_allclose(sm[: stop + 1], _recompute_smoothed(raw[: stop + 1], 0.98),
                               rtol=2e-5)
    # The stop is the FIRST step whose smoothed loss exceeds 4x the best so far (or is not finite).
    best = np.minimum.accumulate(sm[: stop + 1])
    over = ~np.isfinite(sm[: stop + 1]) | (sm[: stop + 1] > 4 * best)
    assert over[stop] and not np.any(over[:stop])
    # The loss at step 0 is that of the initial params: log 2 for zero weights.
    assert raw[0] == pytest.approx(np.log(2), rel=1e-6)


def test_non_finite_loss_counts_as_divergence():
    def nan_when_far(params, batch):
        loss = logistic_loss(params, batch)
        return jnp.where(jnp.max(jnp.abs(params["w"])) > 2.0, jnp.nan, loss)

    res = lr_range_test(nan_when_far, _zeros(), BATCHES, sgd_momentum, min_lr=1e-3, max_lr=1e2,
                        num_steps=60, diverge_factor=1e6)
    raw = np.asarray(res.losses)
    first_nan = int(np.flatnonzero(np.isnan(raw))[0])
    assert bool(res.diverged) and int(res.stopped_at) == first_nan < 59
    assert np.all(np.isnan(raw[first_nan:]))


def test_matches_a_python_loop_of_steps():
    # Independent re-implementation: optax's sgd with the rates given one by one.
    res = lr_range_test(logistic_loss, _zeros(), BATCHES, sgd_momentum, min_lr=1e-3,
                        max_lr=3.0, num_steps=40)
    lrs = 1e-3 * (3.0 / 1e-3) ** (np.arange(40) / 39)
    params, velocity, losses = _zeros(), None, []
    grad = jax.jit(jax.value_and_grad(logistic_loss))
    nb = BATCHES["x"].shape[0]
    for k in range(40):
        batch = jax.tree.map(lambda a, k=k: a[k % nb], BATCHES)
        loss, g = grad(params, batch)
        losses.append(float(loss))
        step = jax.tree.map(lambda gi, k=k: -lrs[k] * gi, g)  # nu <- 0.9 nu - alpha_k g
        velocity = step if velocity is None else jax.tree.map(
            lambda v, s: 0.9 * v + s, velocity, step)
        params = jax.tree.map(lambda p, v: p + v, params, velocity)
    np.testing.assert_allclose(np.asarray(res.losses), losses, rtol=2e-4, atol=1e-6)


def test_inputs_are_not_modified(diverging):
    params = {"w": jnp.full((D,), 0.1, jnp.float32), "b": jnp.zeros((), jnp.float32)}
    copy_p = jax.tree.map(np.array, params)
    copy_b = jax.tree.map(np.array, BATCHES)
    lr_range_test(logistic_loss, params, BATCHES, sgd_momentum, min_lr=1e-4, max_lr=1e4)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(copy_p)):
        np.testing.assert_array_equal(np.asarray(a), b)  # still alive (not donated) and equal
    for a, b in zip(jax.tree.leaves(BATCHES), jax.tree.leaves(copy_b)):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_suggestion_trains_better_than_a_hundredth_of_it(diverging):
    res = diverging
    sug = float(res.suggestion)
    assert 1e-4 < sug < 1e4
    assert set(res.suggestions) == set(RULES)
    assert float(res.suggestions["lecopt"]) == sug
    lrs = np.asarray(res.learning_rates)
    for v in res.suggestions.values():
        assert np.isfinite(float(v)) and 1e-5 <= float(v) <= lrs[int(res.stopped_at)]

    full = jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), BATCHES)

    @jax.jit
    def train(lr):
        tx = optimizers.sgd(lr, momentum=0.9)
        nb = BATCHES["x"].shape[0]

        def step(carry, k):
            p, s = carry
            batch = jax.tree.map(lambda a: a[k % nb], BATCHES)
            u, s = tx.update(jax.grad(logistic_loss)(p, batch), s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(step, (_zeros(), tx.init(_zeros())), jnp.arange(200))
        return logistic_loss(p, full)

    good, slow = float(train(sug)), float(train(sug / 100))
    assert good < slow and good < 0.5 * slow, (good, slow)


def test_vmap_over_seeds_equals_separate_calls():
    def init(key):
        return {"w": 0.3 * jax.random.normal(key, (D,)), "b": jnp.zeros(())}

    def run(key):
        return lr_range_test(logistic_loss, init(key), BATCHES, sgd_momentum, min_lr=1e-4,
                             max_lr=1e4, num_steps=100)

    keys = jax.random.split(jax.random.key(3), 3)
    together = jax.vmap(run)(keys)
    assert together.losses.shape == (3, 100)
    for i in range(3):
        alone = run(keys[i])
        assert int(together.stopped_at[i]) == int(alone.stopped_at)
        assert bool(together.diverged[i]) == bool(alone.diverged)
        # Batched and single matmuls round differently; at rates near the blow-up (here up
        # to 1e4) that difference grows, so the close comparison stops at rate 10.
        calm = np.asarray(alone.learning_rates) <= 10
        for a, b in zip(jax.tree.leaves(jax.tree.map(lambda x, i=i: x[i], together)),
                        jax.tree.leaves(alone)):
            a, b = np.asarray(a), np.asarray(b)
            if a.shape == calm.shape:
                np.testing.assert_allclose(a[calm], b[calm], rtol=1e-4, atol=1e-6)
                np.testing.assert_allclose(a, b, rtol=3e-2, atol=1e-6)
            else:
                np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)
    ax = together.plot()  # one raw curve per sweep, the median and the band
    assert len([ln for ln in ax.lines if ln.get_color() == "0.6"]) == 3
    assert any("band of 3" in t.get_text() for t in ax.get_legend().get_texts())


def test_second_call_reuses_the_compiled_sweep(compile_counter):
    traces = {"n": 0}

    def counting_loss(params, batch):
        traces["n"] += 1  # runs only while JAX traces
        return logistic_loss(params, batch)

    opt = optax.sgd
    lr_range_test(counting_loss, _zeros(), BATCHES, opt, num_steps=20)
    first = traces["n"]
    assert first >= 1
    with compile_counter.expect(0):
        # Same objects and shapes; different rates, smoothing and factor: no retrace.
        lr_range_test(counting_loss, _zeros(), BATCHES, opt, num_steps=20, min_lr=1e-5,
                      max_lr=0.3, smoothing=0.9, diverge_factor=10.0)
        lr_range_test(counting_loss, {"w": jnp.ones(D), "b": jnp.ones(())}, BATCHES, opt,
                      num_steps=20)
    assert traces["n"] == first
    # A different optimizer object is a different program.
    lr_range_test(counting_loss, _zeros(), BATCHES, lambda lr: optax.sgd(lr), num_steps=20)
    assert traces["n"] > first


class _BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(16)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x)
        return nn.Dense(1)(x)[..., 0]


def test_mlp_with_batchnorm_state():
    model = _BNNet()
    variables = model.init(jax.random.key(0), BATCHES["x"][0], train=False)
    params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
    state_copy = jax.tree.map(np.array, state)

    def loss_fn(params, model_state, batch):
        logits, new_state = model.apply({"params": params, **model_state}, batch["x"],
                                        train=True, mutable=["batch_stats"])
        loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, batch["y"]))
        return loss, new_state

    res = lr_range_test(loss_fn, params, BATCHES, optax.adam, min_lr=1e-4, max_lr=10.0,
                        num_steps=40, model_state=state)
    assert isinstance(res, LRRangeTestResult)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(state_copy)):
        np.testing.assert_array_equal(np.asarray(a), b)

    # The same sweep as a plain Python loop, threading batch_stats by hand.
    lrs = np.asarray(res.learning_rates)
    tx = optax.scale_by_adam()  # Adam's direction; the k-th step scaled by -alpha_k here
    opt_state = tx.init(params)
    p, ms, losses = params, state, []

    @jax.jit
    def step(p, ms, opt_state, lr, batch):
        (loss, new_ms), g = jax.value_and_grad(loss_fn, has_aux=True)(p, ms, batch)
        u, opt_state = tx.update(g, opt_state, p)
        return jax.tree.map(lambda a, d: a - lr * d, p, u), new_ms, opt_state, loss

    nb = BATCHES["x"].shape[0]
    stop = int(res.stopped_at)
    for k in range(stop + 1):
        batch = jax.tree.map(lambda a, k=k: a[k % nb], BATCHES)
        p, ms, opt_state, loss = step(p, ms, opt_state, lrs[k], batch)
        losses.append(float(loss))
    np.testing.assert_allclose(np.asarray(res.losses)[: stop + 1], losses, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(res.smoothed_losses)[: stop + 1],
        _recompute_smoothed(losses, 0.98),
        rtol=1e-4,
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_lr": 1.0, "max_lr": 1.0}, "min_lr"),
        ({"min_lr": 2.0, "max_lr": 1.0}, "min_lr"),
        ({"min_lr": 0.0}, "min_lr"),
        ({"max_lr": float("inf")}, "max_lr"),
        ({"num_steps": 1}, "num_steps"),
        ({"mode": "cosine"}, "mode"),
        ({"smoothing": 1.0}, "smoothing"),
        ({"diverge_factor": 1.0}, "diverge_factor"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lr_range_test(logistic_loss, _zeros(), BATCHES, optax.sgd, **kwargs)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="scalar"):
        lr_range_test(lambda p, b: b["x"] @ p["w"], _zeros(), BATCHES, optax.sgd, num_steps=5)
    bad = {"x": BATCHES["x"], "y": BATCHES["y"][:-1]}
    with pytest.raises(ValueError, match="leading axis"):
        lr_range_test(logistic_loss, _zeros(), bad, optax.sgd, num_steps=5)
    with pytest.raises(TypeError, match="optimizer"):
        lr_range_test(logistic_loss, _zeros(), BATCHES, lambda lr: lr, num_steps=5)
    with pytest.raises(TypeError, match="num_steps"):
        lr_range_test(logistic_loss, _zeros(), BATCHES, optax.sgd, num_steps=5.0)
    with pytest.raises(TypeError, match="model_state"):
        lr_range_test(lambda p, s, b: logistic_loss(p, b), _zeros(), BATCHES, optax.sgd,
                      num_steps=5, model_state={"batch_stats": {}})


def test_plot(diverging):
    import matplotlib.pyplot as plt

    ax = diverging.plot()
    assert ax.get_xscale() == "log" and ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("smoothed" in s for s in labels) and any("lecopt" in s for s in labels)
    plt.close("all")


def _scripted_loss(params, batch):
    # The loss is read from the batch: the test scripts the curve the sweep sees.
    return batch + 0.0 * jnp.sum(params)


def test_suggestion_ignores_a_recovery_after_a_blow_up():
    # A slow descent to 0.2 (steps 20-60), a spike to 0.75 that stays below diverge_factor x
    # best, then a steeper drop to 0.4: the steep drop is recovery, not the rate to use.
    t = np.arange(100)
    curve = np.where(t < 20, 1.0, np.where(t <= 60, 1.0 - 0.8 * (t - 20) / 40, 0.2))
    curve = np.where((t > 60) & (t <= 65), 0.2 + 0.11 * (t - 60), curve)
    curve = np.where((t > 65) & (t <= 72), 0.75 - 0.05 * (t - 65), curve)
    curve = np.where(t > 72, 0.4, curve).astype(np.float32)
    res = lr_range_test(_scripted_loss, jnp.zeros(2), jnp.asarray(curve),
                        lambda lr: optimizers.sgd(lr), num_steps=100, smoothing=0.5)
    assert int(res.stopped_at) == 99  # never diverged
    lrs = np.asarray(res.learning_rates)
    lowest = int(np.nanargmin(np.asarray(res.smoothed_losses)))
    assert 55 <= lowest <= 66
    assert float(res.suggestion) <= lrs[lowest]
    assert float(res.suggestion) >= lrs[20]
