"""Tests of lecopt.train: fit, evaluate, sweep, checkpoints, kill-and-resume, mesh."""

from __future__ import annotations

import functools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lecopt import data, nn, optimizers, schedules, train

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "_train_worker.py"
MESH_SCRIPT = ROOT / "tests" / "_train_mesh.py"

N_TRAIN, N_TEST, BATCH = 250, 128, 32  # 7 steps per epoch, the last 26 examples dropped
S = N_TRAIN // BATCH
LR, PHI = 0.05, 0.9


@pytest.fixture(scope="module")
def ds():
    return data.load("mnist-5k")


@pytest.fixture(scope="module")
def small(ds):
    return {"x_train": ds.x_train[:N_TRAIN], "y_train": ds.y_train[:N_TRAIN],
            "x_test": ds.x_test[:N_TEST], "y_test": ds.y_test[:N_TEST]}


MODEL = nn.MLP(features=(16,))
BN_MODEL = nn.MLP(features=(16,), batch_norm=True)


def leaves_equal(a, b) -> bool:
    try:
        chex.assert_trees_all_equal(a, b, strict=True)
    except AssertionError:
        return False
    return True


def assert_close(a, b, rtol=2e-5, atol=2e-6):
    chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


def quiet_fit(model, tx, d, **kw):
    kw.setdefault("epochs", 2)
    kw.setdefault("batch_size", BATCH)
    kw.setdefault("progress", False)
    return train.fit(model, tx, d, **kw)


# --------------------------------------------------------------------------------------------
# An independent reference: a plain Python loop of jitted steps over the documented data order,
# with the lecture's momentum written out: nu <- phi nu - alpha g; theta <- theta + nu.


@functools.partial(jax.jit, static_argnums=0)
def _reference_init(model, key, x1):
    variables = model.init(key, x1, train=False)
    return variables["params"], variables.get("batch_stats", {})


@functools.partial(jax.jit, static_argnums=0)
def _reference_step(model, params, stats, velocity, xb, yb, alpha, phi):
    def loss_fn(p):
        if stats:
            logits, upd = model.apply({"params": p, "batch_stats": stats}, xb, train=True,
                                      mutable=["batch_stats"])
            new_stats = upd["batch_stats"]
        else:
            logits, new_stats = model.apply({"params": p}, xb, train=True), stats
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, yb[:, None], axis=1).mean(), new_stats

    (loss, new_stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    velocity = jax.tree.map(lambda v, gi: phi * v - alpha * gi, velocity, g)
    params = jax.tree.map(lambda p, v: p + v, params, velocity)
    return params, new_stats, velocity, loss


def reference_training(model, d, lr, momentum, epochs, batch, seed, num_steps=None):
    """Params, batch_stats and per-step losses of SGD with momentum, written out."""
    init_key, data_key = jax.random.split(jax.random.PRNGKey(seed))
    x, y = jnp.asarray(d["x_train"]), jnp.asarray(d["y_train"])
    params, stats = _reference_init(model, init_key, x[:1])
    velocity = jax.tree.map(jnp.zeros_like, params)
    n = x.shape[0]
    losses = []
    for e in range(epochs):
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(data_key, e), n))
        for i in range(n // batch):
            if num_steps is not None and len(losses) == num_steps:
                return params, stats, losses
            idx = perm[i * batch:(i + 1) * batch]
            params, stats, velocity, loss = _reference_step(
                model, params, stats, velocity, x[idx], y[idx], lr, momentum)
            losses.append(float(loss))
    return params, stats, losses


@pytest.mark.parametrize("model", [MODEL, BN_MODEL], ids=["mlp", "mlp-batchnorm"])
def test_fit_matches_a_plain_jax_loop(model, small):
    state, hist = quiet_fit(model, optimizers.sgd(LR, momentum=PHI), small, seed=4)
    params, stats, losses = reference_training(model, small, LR, PHI, 2, BATCH, seed=4)
    assert_close(state.params, params)
    assert_close(state.batch_stats, stats)
    np.testing.assert_allclose(hist.step_loss, losses, rtol=2e-5)
    assert int(state.step) == 2 * S and len(hist.step_loss) == 2 * S


def test_fit_on_mnist_5k_learns_and_is_deterministic(ds):
    tx = optimizers.sgd(LR, momentum=PHI)
    s1, h1 = train.fit(MODEL, tx, ds, epochs=2, progress=False)
    s2, h2 = train.fit(MODEL, tx, ds, epochs=2, progress=False)
    # Chance is 0.9 for ten balanced classes.
    assert h1.test_error[-1] < 0.25, h1.test_error
    assert h1.test_loss[-1] < h1.test_loss[0] < np.log(10)
    assert leaves_equal(s1, s2)
    assert h1.step_loss == h2.step_loss and h1.test_error == h2.test_error
    s3, _ = train.fit(MODEL, tx, ds, epochs=1, seed=1, progress=False)
    assert not leaves_equal(s1.params, s3.params)


@pytest.mark.parametrize("model", [MODEL, BN_MODEL], ids=["mlp", "mlp-batchnorm"])
def test_init_state_is_the_reference_initialisation(model, small):
    tx = optimizers.sgd(LR, momentum=PHI)
    state = train.init_state(model, tx, small["x_train"], seed=4)
    init_key, _ = jax.random.split(jax.random.PRNGKey(4))
    params, stats = _reference_init(model, init_key, jnp.asarray(small["x_train"][:1]))
    chex.assert_trees_all_equal(state.params, params)
    chex.assert_trees_all_equal(state.batch_stats, stats)
    chex.assert_trees_all_equal(state.opt_state, tx.init(params))
    assert int(state.step) == 0


def test_callback_sees_the_states_fit_passes_through(small):
    tx = optimizers.sgd(LR, momentum=PHI)
    seen = {}
    steps = (0, 3, S, S + 2, 2 * S)
    state, h = quiet_fit(BN_MODEL, tx, small, epochs=2, callback_steps=steps,
                         callback=lambda step, st: seen.setdefault(step, st))
    assert list(seen) == list(steps)
    # Cutting the epoch at the callback steps changes nothing: same history, same final state.
    plain_state, plain_h = quiet_fit(BN_MODEL, tx, small, epochs=2)
    assert leaves_equal(state, plain_state) and h.step_loss == plain_h.step_loss
    assert leaves_equal(seen[0], train.init_state(BN_MODEL, tx, small["x_train"], seed=0))
    assert leaves_equal(seen[2 * S], state)
    one_epoch, _ = quiet_fit(BN_MODEL, tx, small, epochs=1)
    assert leaves_equal(seen[S], one_epoch)
    # The state after 3 steps: the plain-JAX reference after 3 steps.
    params, stats, _ = reference_training(BN_MODEL, small, LR, PHI, 1, BATCH, seed=0,
                                          num_steps=3)
    assert int(seen[3].step) == 3
    assert_close(seen[3].params, params)
    assert_close(seen[3].batch_stats, stats)


def test_loss_function_is_the_loss_of_the_first_step(small):
    tx = optimizers.sgd(LR, momentum=PHI)
    state = train.init_state(BN_MODEL, tx, small["x_train"], seed=2)
    order = train.batch_order(2, 0, N_TRAIN, BATCH)
    batch = (jnp.asarray(small["x_train"])[order[0]], jnp.asarray(small["y_train"])[order[0]])
    loss, new_stats = train.loss_function(BN_MODEL)(state.params, state.batch_stats, batch)
    _, h = quiet_fit(BN_MODEL, tx, small, epochs=1, seed=2)
    np.testing.assert_allclose(float(loss), h.step_loss[0], rtol=1e-6)
    # Training mode: the running averages moved towards the batch's statistics.
    assert not leaves_equal(new_stats, state.batch_stats)
    assert train.loss_function(nn.MLP(features=(16,), batch_norm=True)) is \
        train.loss_function(BN_MODEL)


def test_callback_arguments_are_checked(small):
    tx = optimizers.sgd(LR)
    with pytest.raises(ValueError, match="needs a callback"):
        quiet_fit(MODEL, tx, small, callback_steps=(1,))
    with pytest.raises(ValueError, match=f"beyond the {2 * S} steps"):
        quiet_fit(MODEL, tx, small, callback=print, callback_steps=(2 * S + 1,))
    with pytest.raises(ValueError, match=r"callback_steps\[0\]=-1"):
        quiet_fit(MODEL, tx, small, callback=print, callback_steps=(-1,))
    with pytest.raises(TypeError, match="callback must be callable"):
        quiet_fit(MODEL, tx, small, callback=3, callback_steps=(1,))


def test_history_shapes_and_json(small):
    state, h = quiet_fit(BN_MODEL, optimizers.sgd(LR, momentum=PHI), small, epochs=3)
    assert h.steps_per_epoch == S and h.batch_size == BATCH and h.epochs == 3
    assert len(h.step_loss) == len(h.step_error) == 3 * S
    for name in ("train_loss", "train_error", "test_loss", "test_error", "wall_time", "skipped"):
        assert len(getattr(h, name)) == 3, name
    assert h.skipped == [0, 0, 0] and h.stopped is None
    assert np.all(np.diff(h.wall_time) >= 0)
    # Epoch means of the per-step values; test values agree with evaluate().
    np.testing.assert_allclose(h.train_loss, np.reshape(h.step_loss, (3, S)).mean(1), rtol=1e-6)
    np.testing.assert_allclose(h.train_error, np.reshape(h.step_error, (3, S)).mean(1),
                               rtol=1e-6)
    ev = train.evaluate(BN_MODEL, state.variables, small["x_test"], small["y_test"])
    assert ev.loss == pytest.approx(h.test_loss[-1], rel=1e-6)
    assert ev.error == pytest.approx(h.test_error[-1], abs=1e-7)
    d = json.loads(json.dumps(h.to_dict()))
    assert train.History.from_dict(d) == h


def test_history_records_the_scheduled_learning_rate(small):
    """Per epoch, alpha_t of the next update: the schedule at the update count reached (a
    closed form here), a constant rate constant, NaN where optax hides it; sweep records the
    same; new numbers of one structure compile nothing new."""
    def decay(a0):
        return optimizers.sgd(schedules.linear_decay(a0, 0.0, 3 * S), momentum=PHI)

    _, h = quiet_fit(MODEL, decay(0.1), small, epochs=3)
    np.testing.assert_allclose(h.learning_rate, [0.1 * (1 - (e + 1) * S / (3 * S))
                                                 for e in range(3)], rtol=1e-6, atol=1e-8)
    assert h.learning_rate[-1] == 0.0
    assert train.History.from_dict(json.loads(json.dumps(h.to_dict()))) == h
    _, const = quiet_fit(MODEL, optimizers.sgd(LR, momentum=PHI), small, epochs=2)
    assert const.learning_rate == [pytest.approx(LR, rel=1e-7)] * 2
    _, hidden = quiet_fit(MODEL, optax.adam(1e-3), small, epochs=1)
    assert np.isnan(hidden.learning_rate).all()
    from lecopt import partition
    from lecopt.train import inputs, programs

    key = inputs.prepare(MODEL, small, BATCH, 1024, None).program_key(
        "stop", partition.split(decay(0.1))[1])
    before = programs.train_programs(key).learning_rate._cache_size()
    _, h2 = quiet_fit(MODEL, decay(0.3), small, epochs=1)
    assert programs.train_programs(key).learning_rate._cache_size() == before == 1
    assert h2.learning_rate == [pytest.approx(0.3 * 2 / 3, rel=1e-6)]
    for strategy in ("vmap", "loop"):
        runs = train.sweep(MODEL, decay, {"a0": [0.1, 0.3]}, small, epochs=2, seeds=[0],
                           batch_size=BATCH, strategy=strategy, progress=False)
        for run in runs:
            np.testing.assert_allclose(run.history.learning_rate,
                                       [run.setting["a0"] * (1 - (e + 1) / 3) for e in range(2)],
                                       rtol=1e-6)


def test_evaluate_against_numpy(small):
    state, h = quiet_fit(BN_MODEL, optimizers.sgd(LR, momentum=PHI), small, epochs=1)
    x, y = small["x_test"], small["y_test"]
    logits = np.asarray(BN_MODEL.apply(state.variables, x, train=False), np.float64)
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    loss = -logp[np.arange(len(y)), y].mean()
    err = np.mean(logits.argmax(1) != y)
    # batch 48 does not divide 128: the padded rows must not count.
    ev = train.evaluate(BN_MODEL, state.variables, x, y, batch_size=48)
    assert isinstance(ev, train.Evaluation)
    assert ev.loss == pytest.approx(loss, rel=1e-5)
    assert ev.error == pytest.approx(err, abs=1e-7)
    assert (ev.loss, ev.error) == pytest.approx((h.test_loss[0], h.test_error[0]), rel=1e-6)


def test_data_order_is_documented():
    order = train.batch_order(7, 1, N_TRAIN, BATCH)
    perm = np.asarray(jax.random.permutation(
        jax.random.fold_in(jax.random.split(jax.random.PRNGKey(7))[1], 1), N_TRAIN))
    np.testing.assert_array_equal(order, perm[:S * BATCH].reshape(S, BATCH))
    assert len(np.unique(order)) == S * BATCH  # the last incomplete minibatch is dropped


def test_model_without_train_argument(small):
    import flax.linen as fnn

    class Plain(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            return fnn.Dense(10)(x.reshape(x.shape[0], -1))

    state, h = quiet_fit(Plain(), optimizers.sgd(0.1, momentum=PHI), small, epochs=2)
    assert state.batch_stats == {} and set(state.variables) == {"params"}
    assert h.test_error[-1] < 0.5


# --------------------------------------------------------------------------------------------
# Hyperparameters are traced: no recompilation.


def test_new_hyperparameters_do_not_recompile(small, compile_counter):
    quiet_fit(MODEL, optimizers.sgd(LR, momentum=PHI), small, epochs=1)
    with compile_counter.expect(0):
        _, h1 = quiet_fit(MODEL, optimizers.sgd(0.02, momentum=0.5), small, epochs=2, seed=5)
        _, h2 = quiet_fit(MODEL, optimizers.sgd(0.2, momentum=0.99), small, epochs=1)
    assert h1.step_loss[:S] != h2.step_loss[:S]
    quiet_fit(MODEL, optimizers.sgd(schedules.linear_decay(0.1, 0.01, 16), momentum=PHI),
              small, epochs=1)
    with compile_counter.expect(0):
        _, h3 = quiet_fit(MODEL, optimizers.sgd(schedules.linear_decay(0.3, 0.001, 9),
                                                momentum=0.8), small, epochs=1)
    # The schedule's numbers really are used: compare with the plain loop at rate 0.3
    # for the first step (the schedule starts at 0.3).
    _, _, losses = reference_training(MODEL, small, 0.3, 0.8, 1, BATCH, seed=0, num_steps=2)
    assert h3.step_loss[:2] == pytest.approx(losses, rel=1e-5)


def test_unhashable_model_and_optax_closures(small, compile_counter):
    # A module with a list field cannot be hashed; an equal one built again reuses programs.
    quiet_fit(nn.MLP(features=[16]), optimizers.sgd(LR, momentum=PHI), small, epochs=1)
    with compile_counter.expect(0):
        quiet_fit(nn.MLP(features=[16]), optimizers.sgd(0.1, momentum=0.5), small, epochs=1)
    # A plain optax optimizer (closures, numbers baked in) trains too: optax's momentum equals
    # the lecture's for a constant rate, to rounding.
    state, h = quiet_fit(MODEL, optax.sgd(LR, momentum=PHI), small)
    ref, href = quiet_fit(MODEL, optimizers.sgd(LR, momentum=PHI), small)
    assert_close(state.params, ref.params, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(h.step_loss, href.step_loss, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Non-finite values.


def _with_nan(small, index):
    x = np.array(small["x_train"])
    x[index, 3, 3] = np.nan
    return {**small, "x_train": x}


def _step_of(index, seed, epoch):
    order = train.batch_order(seed, epoch, N_TRAIN, BATCH)
    return int(np.argwhere(order == index)[0, 0])


def test_nonfinite_stop_names_the_step_and_keeps_the_last_good_state(small):
    bad = _with_nan(small, 17)
    step = _step_of(17, 0, 0)
    with pytest.raises(train.NonFiniteError) as info:
        quiet_fit(MODEL, optimizers.sgd(LR, momentum=PHI), bad, epochs=2)
    err = info.value
    assert (err.epoch, err.step, err.global_step) == (0, step, step)
    assert f"epoch 0, step {step}" in str(err)
    assert int(err.state.step) == step
    assert err.history.stopped == {"epoch": 0, "step": step, "global_step": step}
    assert len(err.history.step_loss) == step + 1 and np.isnan(err.history.step_loss[-1])
    # The last good state is the state after `step` clean steps.
    params, _, losses = reference_training(MODEL, small, LR, PHI, 1, BATCH, seed=0,
                                           num_steps=step)
    assert_close(err.state.params, params)
    np.testing.assert_allclose(err.history.step_loss[:-1], losses, rtol=2e-5)


def test_nonfinite_skip_counts_and_goes_on(small):
    bad = _with_nan(small, 17)
    state, h = quiet_fit(MODEL, optimizers.sgd(LR, momentum=PHI), bad, epochs=2,
                         on_nonfinite="skip")
    assert h.skipped == [1, 1]
    assert int(state.step) == 2 * S - 2
    nan_steps = [i for i, v in enumerate(h.step_loss) if not np.isfinite(v)]
    assert nan_steps == [_step_of(17, 0, 0), S + _step_of(17, 0, 1)]
    chex.assert_tree_all_finite(state)
    assert np.all(np.isfinite(h.train_loss)) and h.train_loss[1] < h.train_loss[0]
    assert h.test_loss[1] < h.test_loss[0] and h.test_error[-1] < 0.8


def _copies_per_step(hlo: str) -> list[tuple[str, int]]:
    """(shape, elements) of every copy in the compiled loop's body and in the branches of
    the conditionals it runs, from the optimized HLO text."""
    computations, name = {}, None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%(\S+) ", line)
        if head and line.rstrip().endswith("{"):
            name = head.group(1)
            computations[name] = []
        elif name is not None:
            computations[name].append(line)
    looped = set(re.findall(r"body=%([\w.\-]+)", hlo))
    for body in list(looped):
        for line in computations[body]:
            for branches in re.findall(r"branch_computations=\{([^}]*)\}", line):
                looped |= {b.strip().lstrip("%") for b in branches.split(",")}
            looped |= set(re.findall(r"(?:true|false)_computation=%([\w.\-]+)", line))
    copies = []
    for c in looped:
        for line in computations[c]:
            copy = re.search(r"= \w+\[([\d,]*)\]\S* copy\(", line)
            if copy:
                copies.append((copy.group(1), int(np.prod([int(d) for d in
                                                           copy.group(1).split(",") if d]))))
    return copies


def test_the_compiled_step_updates_the_state_in_place(small):
    # The update is computed inside the cond's taken branch, so it writes into the loop's
    # buffers: no parameter or optimizer-state array is copied per step. (A cond choosing
    # between a new state computed before it and the old one copied all of the new state at
    # every step: 5.4 MB for the 784-512-512-10 MLP, 5-25% of its epoch.) Only the running
    # averages, computed by the forward pass, are copied (64 values each).
    from lecopt import partition
    from lecopt.train import programs
    from lecopt.train.inputs import prepare

    setup = prepare(nn.MLP(features=(64, 64), batch_norm=True), small, BATCH, 1024, None)
    hyperparameters, structure = partition.split(optimizers.sgd(LR, momentum=PHI))
    compiled = programs.train_programs(setup.program_key("skip", structure))
    state = compiled.init(programs.seed_keys(0)[0], setup.example, hyperparameters)
    buf = jnp.zeros([S], jnp.float32)
    order = jnp.asarray(train.batch_order(0, 0, N_TRAIN, BATCH))
    hlo = compiled.train_steps.lower(state, hyperparameters, setup.x, setup.y, order, 0, S,
                                     jnp.asarray(-1), buf, buf).compile().as_text()
    copies = _copies_per_step(hlo)
    assert copies, "no copy found at all: the HLO parsing is broken"  # the scalars at least
    assert max(n for _, n in copies) <= 64, copies


def test_bad_arguments_are_named(small):
    tx = optimizers.sgd(0.1, momentum=PHI)
    with pytest.raises(ValueError, match="on_nonfinite"):
        quiet_fit(MODEL, tx, small, on_nonfinite="ignore")
    with pytest.raises(ValueError, match="batch_size"):
        quiet_fit(MODEL, tx, small, batch_size=10_000)
    with pytest.raises(ValueError, match="epochs"):
        quiet_fit(MODEL, tx, small, epochs=0)
    with pytest.raises(TypeError, match="optimizer"):
        quiet_fit(MODEL, "sgd", small)
    with pytest.raises(TypeError, match="data"):
        quiet_fit(MODEL, tx, 3)
    with pytest.raises(ValueError, match="y_train"):
        quiet_fit(MODEL, tx, {**small, "y_train": small["y_train"][:10]})
    with pytest.raises(ValueError, match="strategy"):
        train.sweep(MODEL, optimizers.sgd, {"learning_rate": [0.1]}, small, epochs=1,
                    strategy="fast")


def test_progress_bar(small, capsys):
    quiet_fit(MODEL, optimizers.sgd(LR, momentum=PHI), small, epochs=2, progress=True)
    err = capsys.readouterr().err
    assert "fit" in err and "2/2" in err and "loss=" in err
    quiet_fit(MODEL, optimizers.sgd(LR, momentum=PHI), small, epochs=2, progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


# --------------------------------------------------------------------------------------------
# sweep.


def test_sweep_equals_separate_fits(small, compile_counter):
    # momentum 0.0 (a Python zero drops the velocity in a separate fit), a diverging rate
    # (1e30 overflows at the second step: with "stop" that run freezes, the others go on),
    # and two seeds.
    grid = {"momentum": [0.0, PHI], "learning_rate": [LR, 1e30]}

    def make(learning_rate, momentum):
        return optimizers.sgd(learning_rate, momentum=momentum)

    kw = {"epochs": 2, "batch_size": BATCH, "progress": False, "seeds": (0, 2)}
    loop = train.sweep(BN_MODEL, make, grid, small, strategy="loop", **kw)
    vmap = train.sweep(BN_MODEL, make, grid, small, strategy="vmap", **kw)
    settings = [{"momentum": m, "learning_rate": lr} for m in grid["momentum"]
                for lr in grid["learning_rate"]]
    expected = [(s, seed) for s in settings for seed in (0, 2)]
    assert [(r.setting, r.seed) for r in loop] == expected == [(r.setting, r.seed) for r in vmap]
    for r_loop, r_vmap in zip(loop, vmap):
        tx = make(**r_loop.setting)
        if r_loop.setting["learning_rate"] == LR:
            state, h = quiet_fit(BN_MODEL, tx, small, seed=r_loop.seed)
            assert r_loop.history.stopped is None and r_vmap.history.stopped is None
            assert len(r_vmap.history.test_loss) == 2
        else:
            with pytest.raises(train.NonFiniteError) as info:
                quiet_fit(BN_MODEL, tx, small, seed=r_loop.seed)
            state, h = info.value.state, info.value.history
            assert h.stopped == {"epoch": 0, "step": 1, "global_step": 1}
            assert r_loop.history.stopped == h.stopped == r_vmap.history.stopped
            assert r_vmap.history.test_loss == [] and int(r_vmap.state.step) == 1
        # "loop" runs fit's own program: bit for bit.
        np.testing.assert_array_equal(r_loop.history.step_loss, h.step_loss)  # NaN == NaN
        assert r_loop.history.test_loss == h.test_loss
        assert leaves_equal(r_loop.state, state)
        # "vmap": to float32 rounding.
        np.testing.assert_allclose(r_vmap.history.step_loss, h.step_loss, rtol=1e-5)
        np.testing.assert_allclose(r_vmap.history.test_loss, h.test_loss, rtol=1e-5)
        np.testing.assert_allclose(r_vmap.history.test_error, h.test_error, atol=1e-6)
        if r_loop.history.stopped is None:  # (a step of 1e30 g amplifies rounding to noise)
            assert_close(r_vmap.state.params, state.params, rtol=1e-4)
            assert_close(r_vmap.state.batch_stats, state.batch_stats, rtol=1e-4)
    json.dumps([r.to_dict() for r in vmap])
    # The whole sweep again with other values: nothing is compiled.
    with compile_counter.expect(0):
        again = train.sweep(BN_MODEL, make, {"momentum": [0.3, 0.7], "learning_rate": [0.01, 0.1]},
                            small, strategy="vmap", **{**kw, "epochs": 1})
    assert len({r.history.step_loss[-1] for r in again}) == 8


def test_auto_strategy_rule():
    x = jnp.zeros((1, 28, 28))
    small_flops = train.flops_per_step(nn.MLP((32, 32)), x, 128)
    big_flops = train.flops_per_step(nn.MLP((512, 512)), x, 128)
    # 6 * batch * (784*32 + 32 + 32*32 + 32 + 32*10 + 10) parameters
    assert small_flops == 6 * 128 * (784 * 32 + 32 + 32 * 32 + 32 + 320 + 10)
    assert small_flops < train.VMAP_FLOPS_THRESHOLD_CPU < big_flops
    assert train.choose_strategy(nn.MLP((32, 32)), x, 128, backend="cpu") == "vmap"
    assert train.choose_strategy(nn.MLP((512, 512)), x, 128, backend="cpu") == "loop"
    assert train.choose_strategy(nn.MLP((512, 512)), x, 128, backend="gpu") == "vmap"


# --------------------------------------------------------------------------------------------
# Checkpoints.


def test_checkpoint_resume_in_process(small, tmp_path):
    tx = optimizers.sgd(schedules.linear_decay(0.1, 0.01, 24), momentum=PHI)
    ref, href = quiet_fit(MODEL, tx, small, epochs=3)
    d = tmp_path / "ckpt"
    _, h2 = quiet_fit(MODEL, tx, small, epochs=2, checkpoint_dir=d, checkpoint_every=3,
                      max_to_keep=2)
    steps = sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())
    assert steps == [12, 14]  # every 3 steps and at the end (2 * 7); the last 2 kept
    state, h3 = quiet_fit(MODEL, tx, small, epochs=3, checkpoint_dir=d, checkpoint_every=3)
    assert leaves_equal(state, ref)
    assert h3.step_loss == href.step_loss and h3.test_loss == href.test_loss
    assert h3.train_loss == href.train_loss and h3.skipped == href.skipped
    assert h3.wall_time[:2] == h2.wall_time
    # Finished: another call only restores.
    again, h4 = quiet_fit(MODEL, tx, small, epochs=3, checkpoint_dir=d)
    assert leaves_equal(again, ref) and h4.step_loss == href.step_loss
    with pytest.raises(ValueError, match="beyond epochs=2"):
        quiet_fit(MODEL, tx, small, epochs=2, checkpoint_dir=d)


def test_checkpoint_of_another_run_is_refused(small, tmp_path):
    d = tmp_path / "ckpt"
    quiet_fit(MODEL, optimizers.sgd(LR, momentum=PHI), small, epochs=1, checkpoint_dir=d)
    with pytest.raises(train.CheckpointMismatchError, match="optimizer_hyperparameters"):
        quiet_fit(MODEL, optimizers.sgd(0.1, momentum=PHI), small, epochs=2, checkpoint_dir=d)
    with pytest.raises(train.CheckpointMismatchError, match="optimizer_structure"):
        quiet_fit(MODEL, optimizers.adam(0.05), small, epochs=2, checkpoint_dir=d)
    with pytest.raises(train.CheckpointMismatchError, match="model"):
        quiet_fit(nn.MLP(features=(8,)), optimizers.sgd(LR, momentum=PHI), small, epochs=2,
                  checkpoint_dir=d)
    with pytest.raises(train.CheckpointMismatchError, match="seed"):
        quiet_fit(MODEL, optimizers.sgd(LR, momentum=PHI), small, epochs=2, seed=9,
                  checkpoint_dir=d)


# --------------------------------------------------------------------------------------------
# Kill and resume, in subprocesses.


def _env(cache: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "LECOPT_TEST_JAX_CACHE": str(cache), "PYTHONUNBUFFERED": "1",
           "JAX_PLATFORMS": "cpu", **extra}
    env.pop("XLA_FLAGS", None)
    return env


def _start(ckpt: Path | str, out: Path, env: dict, kind: str = "linen") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(ckpt), str(out), kind], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(ROOT))


def _wait_for(proc: subprocess.Popen, prefix: str, timeout: float = 120.0) -> str | None:
    """The first stdout line starting with ``prefix``; None if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return line.strip()
        if line == "" and proc.poll() is not None:
            return None
    raise AssertionError(f"worker did not print {prefix!r} in {timeout} s")


def _finish(proc: subprocess.Popen, timeout: float = 300.0) -> None:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]


def _reference_run(tmp_path: Path, cache: Path, kind: str) -> dict[str, np.ndarray]:
    # Also a subprocess: it fills the compilation cache that the restarts then load.
    out = tmp_path / "reference.npz"
    proc = _start("-", out, _env(cache), kind)
    _finish(proc)
    return dict(np.load(out))


def _check_final(out: Path, reference: dict[str, np.ndarray]) -> None:
    final = dict(np.load(out))
    assert sorted(final) == sorted(reference)
    for k in reference:
        assert final[k].dtype == reference[k].dtype
        assert np.array_equal(final[k], reference[k]), f"leaf {k} differs after resume"


def _kill_and_resume(tmp_path: Path, kills: int, kind: str = "linen") -> dict:
    """SIGKILLs the worker (``kind``: its linen or NNX model) ``kills`` times, resuming each
    time; checks every finished run."""
    cache = tmp_path / "jax-cache"
    cache.mkdir()
    reference = _reference_run(tmp_path, cache, kind)
    ckpt, out = tmp_path / "ckpt", tmp_path / "final.npz"
    rng = random.Random(12345)
    report = {"kills": 1, "mid_write": 1, "runs": 1, "finished": 0}
    # Deterministic first kill: while the 3rd checkpoint is fully written into orbax's
    # temporary directory but not yet renamed.
    proc = _start(ckpt, out, _env(cache, LECOPT_TEST_HANG_AT_FINALIZE="3"), kind)
    line = _wait_for(proc, "FINALIZING")
    assert line is not None, proc.stderr.read()[-3000:]
    tmp_dir = Path(line.split(" ", 1)[1])
    assert tmp_dir.exists() and ".orbax-checkpoint-tmp" in tmp_dir.name
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    assert finished == [4, 8]  # the interrupted one (12) never replaced them
    # Then random kills. Odd ones at a random moment after START (start-up, restore, first
    # steps), even ones at a random moment after the run's first new checkpoint (training and
    # writing checkpoints). A run that finishes before its kill is checked and started afresh.
    window = 1.5  # seconds a run trains after its first checkpoint, re-estimated below
    while True:
        proc = _start(ckpt, out, _env(cache), kind)
        report["runs"] += 1
        if report["kills"] >= kills:
            _finish(proc)
            break
        odd = report["kills"] % 2 == 1
        seen = _wait_for(proc, "START" if odd else "CKPT")
        t0 = time.monotonic()
        if seen is not None:
            time.sleep(rng.uniform(0.0, 1.0 if odd else window))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            report["kills"] += 1
            # An orbax temporary directory left behind: the kill interrupted a write.
            report["mid_write"] += any("orbax-checkpoint-tmp" in p.name for p in ckpt.iterdir())
            continue
        _finish(proc)
        if not odd:
            window = max(0.3, 0.8 * (time.monotonic() - t0))
        _check_final(out, reference)
        report["finished"] += 1
        shutil.rmtree(ckpt)
        out.unlink()
    _check_final(out, reference)
    assert not any("tmp" in p.name for p in ckpt.iterdir()), "orbax tmp dirs left behind"
    return report


def test_kill_and_resume_bit_for_bit(tmp_path):
    report = _kill_and_resume(tmp_path, kills=3)
    print("kill-and-resume:", report)
    assert report["kills"] >= 2, report


@pytest.mark.slow
def test_kill_and_resume_bit_for_bit_20_times(tmp_path):
    report = _kill_and_resume(tmp_path, kills=20)
    print("kill-and-resume:", report)
    assert report["kills"] == 20, report


def test_kill_and_resume_nnx_bit_for_bit(tmp_path):
    # A lecopt.nnx.MLP with BatchNorm: SIGKILLed once, in the middle of its 3rd checkpoint's
    # write (two committed), and resumed: the trained module's Params and BatchStats, the
    # optimizer state and every step's loss equal the uninterrupted run's, bit for bit.
    report = _kill_and_resume(tmp_path, kills=1, kind="nnx")
    print("kill-and-resume (nnx):", report)
    assert report == {"kills": 1, "mid_write": 1, "runs": 2, "finished": 0}, report


@pytest.mark.slow
def test_kill_and_resume_nnx_bit_for_bit_10_times(tmp_path):
    report = _kill_and_resume(tmp_path, kills=10, kind="nnx")
    print("kill-and-resume (nnx):", report)
    assert report["kills"] == 10, report


# --------------------------------------------------------------------------------------------
# Several devices.


def test_mesh_of_four_cpu_devices_equals_one_device(tmp_path):
    out = tmp_path / "mesh.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    subprocess.run([sys.executable, str(MESH_SCRIPT), str(out)], env=env, check=True,
                   cwd=str(ROOT), timeout=600, capture_output=True)
    r = json.loads(out.read_text())
    assert r["devices"] == 4 and r["param_devices"] == 4 and r["param_replicated"]
    assert r["hlo_has_all_reduce"] is True
    # Equal to float32 rounding (sums over the batch are reduced in another order).
    assert r["diffs"]["params"] < 1e-4, r
    assert r["diffs"]["batch_stats"] < 1e-4, r
    assert r["diffs"]["step_loss"] < 1e-5, r
    assert r["test_error_one"] == pytest.approx(r["test_error_four"], abs=1e-2)


# --------------------------------------------------------------------------------------------
# Figures.


def test_plot_history(small):
    import matplotlib.pyplot as plt  # conftest sets the Agg backend

    _, h = quiet_fit(MODEL, optimizers.sgd(LR, momentum=PHI), small, epochs=2)
    fig = train.plot_history(h)
    ax_loss, ax_err, ax_rate = fig.axes
    assert "loss" in ax_loss.get_ylabel() and "%" in ax_err.get_ylabel()
    assert "learning rate" in ax_rate.get_ylabel() and ax_rate.get_ylim()[0] == 0
    np.testing.assert_allclose(ax_rate.lines[0].get_ydata(), h.learning_rate)
    assert ax_loss.get_xlabel() == "epoch" and ax_loss.get_title()
    assert ax_loss.get_legend() is not None and ax_err.get_legend() is not None
    assert fig.get_suptitle()
    plt.close(fig)
    fig, ax = plt.subplots()
    assert train.plot_history(h.to_dict(), ax=ax) is fig
    plt.close(fig)
