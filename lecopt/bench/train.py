"""Benchmark of :mod:`lecopt.train`: ``fit``'s compiled epoch and ``sweep``'s strategies.

(a) One epoch of the 784-512-512-10 MLP on mnist-5k (SGD with momentum 0.9, batch 128, 31
    steps) with ``fit``, against a hand-written Flax + optax loop doing the same work: the
    same initialisation and shuffling, one dispatch of a jitted step per minibatch (the batch
    gathered on the device inside the step), the per-step loss and error kept, then one
    jitted evaluation of the test set. Both end to end, and the training part alone (fit's
    compiled epoch against the loop of jitted steps, same start state). The achieved GFLOP/s
    of the compiled epoch count ``2 * in * out`` FLOPs per dense layer and sample forward,
    three times that forward and backward.
(b) ``sweep`` of 8 settings (4 learning rates x 2 momenta, 1 epoch each) against 8 sequential
    ``fit`` calls as a user would make them, for the 784-32-32-10 and the 784-512-512-10 MLP,
    with ``strategy="auto"`` and with ``"vmap"`` and ``"loop"`` separately.

All contestants run interleaved (:func:`lecopt.bench.timing.interleaved`), after a warm-up that
compiles everything, with the data already on the device.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from lecopt import data, nn, optimizers, partition, train
from lecopt.bench import timing
from lecopt.train import inputs, programs

BATCH = 128
SETTINGS = [{"learning_rate": lr, "momentum": m} for lr in (0.01, 0.02, 0.05, 0.1)
            for m in (0.5, 0.9)]


def _dense_flops_per_sample(sizes: list[int]) -> int:
    return sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:]))


def _hand_written(model: Any, ds: Any, tx: optax.GradientTransformation, seed: int = 0):
    """A user's Flax + optax epoch: jitted init, a Python loop of jitted steps, jitted eval."""
    init_key, data_key = jax.random.split(jax.random.PRNGKey(seed))
    x, y, xt, yt = ds.x_train, ds.y_train, ds.x_test, ds.y_test
    n = x.shape[0]
    steps = n // BATCH

    @jax.jit
    def init(key):
        params = model.init(key, x[:1], train=False)["params"]
        return params, tx.init(params)

    @jax.jit
    def step(params, opt_state, idx):
        xb, yb = x[idx], y[idx]

        def loss_fn(p):
            logits = model.apply({"params": p}, xb, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        err = jnp.mean(jnp.argmax(logits, -1) != yb)
        return optax.apply_updates(params, updates), opt_state, loss, err

    @jax.jit
    def test(params):
        logits = model.apply({"params": params}, xt, train=False)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, yt).mean()
        return loss, jnp.mean(jnp.argmax(logits, -1) != yt)

    @jax.jit
    def permutation(epoch):
        return jax.random.permutation(jax.random.fold_in(data_key, epoch), n)

    def epoch(params=None, opt_state=None):
        if params is None:
            params, opt_state = init(init_key)
        perm = permutation(0)
        out = []
        for i in range(steps):
            params, opt_state, loss, err = step(params, opt_state,
                                                perm[i * BATCH:(i + 1) * BATCH])
            out.append((loss, err))
        history = [(float(a), float(b)) for a, b in out]
        return params, history, [float(v) for v in test(params)]

    def steps_only(params, opt_state, perm):
        for i in range(steps):
            params, opt_state, _, _ = step(params, opt_state, perm[i * BATCH:(i + 1) * BATCH])
        return jax.block_until_ready(params)

    return epoch, steps_only, permutation


def _fit_epoch_section(ds: Any, rounds: int, repeats: int) -> tuple[list, dict, list]:
    model = nn.MLP(features=(512, 512))
    tx = optimizers.sgd(0.05, momentum=0.9)
    hand_epoch, hand_steps, permutation = _hand_written(model, ds, tx)

    # fit's compiled epoch on its own, from the state fit starts with.
    setup = inputs.prepare(model, ds, BATCH, 1024, None)
    leaves, structure = partition.split(tx)
    compiled = programs.train_programs(setup.program_key("stop", structure))
    state0 = train.init_state(model, tx, setup.x, seed=0)
    order = programs.epoch_order(programs.seed_keys(0)[1], 0, setup.n, setup.steps, BATCH)
    buf = jnp.zeros([setup.steps], jnp.float32)
    no_bad = jnp.asarray(-1, jnp.int32)
    perm = permutation(0)

    def fit_one():
        state, _ = train.fit(model, tx, ds, epochs=1, batch_size=BATCH, progress=False)
        return jax.block_until_ready(state)

    contestants = {
        "fit, 1 epoch end to end": fit_one,
        "hand-written Flax+optax loop, 1 epoch end to end": hand_epoch,
        "fit's compiled epoch (31 steps)": lambda: jax.block_until_ready(compiled.train_steps(
            state0, leaves, setup.x, setup.y, order, 0, setup.steps, no_bad, buf, buf)),
        "loop of 31 jitted steps": lambda: hand_steps(state0.params, state0.opt_state, perm),
    }
    res = timing.interleaved(contestants, rounds=rounds, repeats=repeats)
    names = list(contestants)
    flops = 3 * _dense_flops_per_sample([784, 512, 512, 10]) * BATCH * setup.steps
    gflops = flops / res[names[2]]["median"] / 1e9
    rows = [{"name": f"(a) {k}", "median_s": v["median"], "min_s": v["min"]}
            for k, v in res.items()]
    rows[2]["gflop_per_s"] = gflops
    ratios = {
        "fit_epoch_over_hand_loop (must be <= 1.0)":
            res[names[0]]["median"] / res[names[1]]["median"],
        "compiled_epoch_over_jitted_steps": res[names[2]]["median"] / res[names[3]]["median"],
        "compiled_epoch_gflop_per_s": gflops,
    }
    notes = [f"(a) 784-512-512-10 MLP, mnist-5k ({setup.n} training examples, {setup.steps} "
             f"steps of {BATCH}), SGD momentum 0.9; the compiled epoch does "
             f"{flops / 1e9:.1f} GFLOP at {gflops:.0f} GFLOP/s"]
    return rows, ratios, notes


def _sweep_section(ds: Any, features: tuple[int, ...], label: str, rounds: int,
                   repeats: int) -> tuple[list, dict, list]:
    model = nn.MLP(features=features)

    def make(learning_rate, momentum):
        return optimizers.sgd(learning_rate, momentum=momentum)

    def sequential():
        out = []
        for s in SETTINGS:
            state, history = train.fit(model, make(**s), ds, epochs=1, batch_size=BATCH,
                                       progress=False)
            out.append(state)
        return jax.block_until_ready(out)

    def run_sweep(strategy):
        return lambda: jax.block_until_ready([r.state for r in train.sweep(
            model, make, SETTINGS, ds, epochs=1, batch_size=BATCH, strategy=strategy,
            progress=False)])

    auto = train.choose_strategy(model, ds.x_train[:1], BATCH)
    contestants = {
        "8 sequential fit calls": sequential,
        f'sweep strategy="auto" (-> {auto})': run_sweep("auto"),
        'sweep strategy="vmap"': run_sweep("vmap"),
        'sweep strategy="loop"': run_sweep("loop"),
    }
    res = timing.interleaved(contestants, rounds=rounds, repeats=repeats)
    names = list(contestants)
    seq = res[names[0]]["median"]
    rows = [{"name": f"(b) {label}: {k}", "median_s": v["median"], "min_s": v["min"],
             "speedup_vs_sequential": seq / v["median"]} for k, v in res.items()]
    ratios = {
        f"sweep_auto_over_sequential_{label}": res[names[1]]["median"] / seq,
        f"sweep_vmap_over_sequential_{label}": res[names[2]]["median"] / seq,
        f"sweep_loop_over_sequential_{label}": res[names[3]]["median"] / seq,
        f"sweep_auto_over_best_strategy_{label}": res[names[1]]["median"] / min(
            res[names[2]]["median"], res[names[3]]["median"]),
    }
    flops = train.flops_per_step(model, ds.x_train[:1], BATCH)
    notes = [f"(b) {label}: {flops / 1e6:.0f} MFLOP per step and setting; auto chose {auto}"]
    return rows, ratios, notes


def run(quick: bool = False) -> dict[str, Any]:
    """Runs the benchmark; ``quick`` uses fewer timing rounds.

    Returns:
      ``{"title", "rows": [{"name", "median_s", ...}], "ratios": {label: value}, "notes"}``.
    """
    rounds, repeats = (3, 1) if quick else (7, 3)
    ds = data.load("mnist-5k").to_device()
    rows, ratios, notes = _fit_epoch_section(ds, rounds, repeats)
    for features, label in (((32, 32), "784-32-32-10"), ((512, 512), "784-512-512-10")):
        r, q, n = _sweep_section(ds, features, label, max(2, rounds - 2) if label.endswith(
            "512-10") else rounds, repeats)
        rows += r
        ratios.update(q)
        notes += n
    ratios["sweep_speedup_784-32-32-10 (must be >= 1.5)"] = \
        1.0 / ratios["sweep_auto_over_sequential_784-32-32-10"]
    ratios["sweep_auto_over_sequential_784-512-512-10 (must be <= 1.0)"] = \
        ratios.pop("sweep_auto_over_sequential_784-512-512-10")
    notes.append(f"device: {jax.devices()[0].device_kind}, {jax.device_count()} device(s); "
                 "medians of interleaved rounds on a shared machine")
    return {"title": "train: fit's compiled epoch and sweep", "rows": rows, "ratios": ratios,
            "notes": notes}


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=1))
