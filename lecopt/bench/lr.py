"""Benchmark: the compiled LR range test against a Python loop of jitted steps, and the cost
of seeds (``lecopt bench --only lr``).

**Sweep.** Both contestants do the same sweep: logistic regression on 784 inputs, minibatches
of 64, 100 steps of SGD with momentum 0.9 whose rate rises geometrically, the loss smoothed by
the debiased moving average and checked for divergence after every step. The loop is what
fastai, PyTorch Lightning and torch-lr-finder do: one dispatch of a jitted step per minibatch,
and the loss read back to the host each step to smooth it and test for divergence. The
compiled contestant is the program ``lr_range_test`` runs (its record, read back to the host).
The minibatches are on the device before timing starts, for both. Reading the suggestions off
the record (every rule of :data:`lecopt.lr_finder.RULES`, NumPy on the host) is the same work
after either sweep: it is timed on its own, and ``lr_range_test`` end to end (validation,
sweep, rules) is a third row.

**How far from the limit.** Two floors, measured in the same rounds: the compiled sweep on one
minibatch used for every step (it stays in cache, so this is the arithmetic and the
per-step overhead of the scan without the memory traffic), and a single-threaded NumPy copy
of each of the 100 minibatches out of the stacked array (the cost of reading every minibatch
from memory once, which any sweep over fresh data pays). A compiled step that costs about one
minibatch read is at the memory floor; the loop's time over that floor bounds what any
compiled sweep could gain over the loop.

**Seeds.** ``lr_range_test(..., seeds=S)`` runs the seeds as one vmapped program. Timed for 1
and 3 seeds (100 steps) on the synthetic problem of the sweep rows and on mnist-5k at three
model sizes, with the FLOP/s (``6 * batch * parameters`` per step): where one seed's step is
short, its fixed per-step cost is shared and 3 seeds cost little more than one; where it is a
matrix product that already keeps the cores busy, 3 seeds are 3x the arithmetic and cost
about 3x. The machine's peak is measured in the same run (a jitted 1024x1024 float32 matrix
product): a model whose one seed runs at a fraction f of that peak cannot run 3 seeds in
less than ``3 f`` times one seed's time, printed as the lower bound beside each ratio. A
third row per model runs the 3 seeds on one shared minibatch order (not an option of
``lr_range_test``, whose seeds each draw their own order): it splits the seeds' cost into
the extra arithmetic and the cost of each seed reading its own minibatch.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lecopt import data as ldata
from lecopt import lr_finder, optimizers, schedules, train
from lecopt import nn as lnn
from lecopt.bench import timing

NUM_INPUTS = 784
BATCH = 64
NUM_STEPS = 100
MIN_LR, MAX_LR = 1e-5, 1.0
SMOOTHING, DIVERGE = 0.98, 4.0
SEED_MIN_LR, SEED_MAX_LR = 1e-6, 10.0
"""The swept range of the seeds measurement (wide enough for every model of it)."""
COMPILED, LOOP, RULES, END_TO_END = (
    "compiled sweep (lr_range_test's program)", "python loop of jitted steps",
    "the rules on the record (host NumPy)", "lr_range_test end to end")
KERNEL_FLOOR = "floor: compiled sweep on one cached minibatch"
READ_FLOOR = "floor: read each minibatch once (NumPy copy)"
SEED_MODELS = (((), 64), ((64,), 128), ((512, 512), 128))
"""(hidden features, batch size) of the seeds measurement: logistic regression, a small MLP
and the lecture's 784-512-512-10 MLP."""


def _problem(seed: int = 0) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=NUM_INPUTS)
    x = rng.normal(size=(NUM_STEPS, BATCH, NUM_INPUTS)).astype(np.float32) / math.sqrt(NUM_INPUTS)
    y = (x @ w > 0).astype(np.float32)
    params = {"w": jnp.zeros(NUM_INPUTS, jnp.float32), "b": jnp.zeros((), jnp.float32)}
    return params, {"x": jnp.asarray(x), "y": jnp.asarray(y)}


def _loss(params: dict, batch: dict) -> jax.Array:
    logits = batch["x"] @ params["w"] + params["b"]
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, batch["y"]))


def _optimizer(lr: Any) -> optax.GradientTransformation:
    return optimizers.sgd(lr, momentum=0.9)


def _python_loop(params: dict, batch_list: list[dict], step_fn: Any, tx: Any) -> list[float]:
    opt_state = tx.init(params)
    avg, best, smoothed = 0.0, math.inf, []
    for k, batch in enumerate(batch_list):
        params, opt_state, loss = step_fn(params, opt_state, batch)
        loss = float(loss)  # the host needs it to smooth and to test for divergence
        avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
        smooth = avg / (1 - SMOOTHING ** (k + 1))
        smoothed.append(smooth)
        best = min(best, smooth)
        if not math.isfinite(smooth) or smooth > DIVERGE * best:
            break
    return smoothed


def _sweep_contestants() -> tuple[dict[str, Any], float, int]:
    params, batches = _problem()
    tx = _optimizer(schedules.exponential_range(MIN_LR, MAX_LR, NUM_STEPS))

    @jax.jit
    def step_fn(params, opt_state, batch):
        loss, grads = jax.value_and_grad(_loss)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    batch_list = [jax.tree.map(lambda a, k=k: a[k], batches) for k in range(NUM_STEPS)]
    jax.block_until_ready(batch_list)
    static = dict(loss_fn=_loss, optimizer=_optimizer, num_steps=NUM_STEPS,
                  mode="exponential", with_state=False)

    def sweep() -> lr_finder._Curves:
        # lr_range_test's own program, its record read back to the host as lr_range_test does.
        curves = lr_finder._sweep(params, None, batches, None, MIN_LR, MAX_LR, SMOOTHING,
                                  DIVERGE, **static)
        return jax.tree.map(np.asarray, curves)

    record = sweep()

    def rules() -> dict[str, float]:
        return lr_finder.suggest(record.learning_rates, record.losses, record.smoothed_losses,
                                 record.stopped_at, record.diverged)

    def end_to_end() -> lr_finder.LRRangeTestResult:
        return timing.block(lr_finder.lr_range_test(
            _loss, params, batches, _optimizer, min_lr=MIN_LR, max_lr=MAX_LR,
            num_steps=NUM_STEPS, smoothing=SMOOTHING, diverge_factor=DIVERGE))

    one_batch = jax.tree.map(lambda a: a[:1], batches)

    def kernel_floor() -> lr_finder._Curves:
        # The same program on one minibatch cycled for every step: it stays in cache.
        return timing.block(lr_finder._sweep(params, None, one_batch, None, MIN_LR, MAX_LR,
                                             SMOOTHING, DIVERGE, **static))

    x_host = np.asarray(batches["x"])
    landing = np.empty_like(x_host[0])

    def read_floor() -> np.ndarray:
        for block in x_host:  # every minibatch read from memory once, one thread
            np.copyto(landing, block)
        return landing

    ref = _python_loop(params, batch_list, step_fn, tx)
    agree = float(np.max(np.abs(record.smoothed_losses[: len(ref)] - np.asarray(ref))))
    contestants = {COMPILED: sweep,
                   LOOP: lambda: _python_loop(params, batch_list, step_fn, tx),
                   RULES: rules,
                   END_TO_END: end_to_end,
                   KERNEL_FLOOR: kernel_floor,
                   READ_FLOOR: read_floor}
    return contestants, agree, len(ref)


def _peak_gflops(rounds: int) -> float:
    """The machine's float32 matrix-product rate (a jitted 1024^3 product), GFLOP/s."""
    n = 1024
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    t = timing.interleaved({"matmul": lambda: timing.block(matmul(a))}, rounds=rounds,
                           repeats=1)
    return 2.0 * n**3 / t["matmul"]["median"] / 1e9


def _timed_seeds(loss_fn: Any, init: Any, batches: Any, model_state: Any = None
                 ) -> dict[str, Any]:
    """``lr_range_test``'s sweep program for 1 and for 3 seeds (the rules left out)."""
    static = dict(loss_fn=loss_fn, optimizer=_optimizer, num_steps=NUM_STEPS,
                  mode="exponential", with_state=model_state is not None)
    num_batches = jax.tree.leaves(batches)[0].shape[0]

    def of(num_seeds: int):
        stacked, orders = lr_finder._seed_inputs(init, num_batches, list(range(num_seeds)))
        return lambda: timing.block(lr_finder._sweep_seeds(
            stacked, model_state, batches, orders, SEED_MIN_LR, SEED_MAX_LR, SMOOTHING, DIVERGE,
            **static))

    stacked, orders = lr_finder._seed_inputs(init, num_batches, [0, 1, 2])
    shared = lambda: timing.block(_sweep_seeds_shared_order(
        stacked, model_state, batches, orders[0], **static))
    return {"1 seed": of(1), "3 seeds": of(3), "3 seeds sharing one minibatch order": shared}


@partial(jax.jit, static_argnames=lr_finder._STATIC)
def _sweep_seeds_shared_order(params, model_state, batches, order, **static) -> Any:
    # A reference point, not an option of lr_range_test: every seed reads the same minibatch
    # each step, so only the params are batched and the model's products are one wider matrix
    # product instead of one per seed. It shows how much of the seeds' cost is their own data.
    one = lambda p: lr_finder._sweep_impl(p, model_state, batches, order, SEED_MIN_LR,
                                          SEED_MAX_LR, SMOOTHING, DIVERGE, **static)
    return jax.vmap(one)(params)


def _seed_models(ds: ldata.Dataset, quick: bool) -> dict[str, tuple[Any, ...]]:
    """``{label: (loss_fn, init, batches, model_state, FLOPs per step)}``: the synthetic
    problem of the sweep rows, then mnist-5k with the models of :data:`SEED_MODELS` and
    ``fit``'s loss (:func:`lecopt.train.loss_function`)."""
    params, batches = _problem()
    out = {f"synthetic logistic regression {NUM_INPUTS}-1 b{BATCH}": (
        _loss, lambda key: params, batches, None, 6.0 * BATCH * (NUM_INPUTS + 1))}
    x = np.asarray(ds.x_train, np.float32).reshape(len(ds.x_train), -1)
    y = np.asarray(ds.y_train, np.int32)
    for features, batch_size in SEED_MODELS[:2] if quick else SEED_MODELS:
        model = lnn.MLP(features=features)
        order = train.batch_order(0, 0, len(x), batch_size)

        def init(key, model=model, x1=x[:1]):
            return model.init(key, x1, train=False)["params"]

        widths = "-".join(map(str, (NUM_INPUTS, *features, 10)))
        out[f"mnist-5k MLP {widths} b{batch_size}"] = (
            train.loss_function(model), init, (jnp.asarray(x[order]), jnp.asarray(y[order])),
            {}, train.flops_per_step(model, x, batch_size))
    return out


def run(quick: bool = False) -> dict:
    """Times the sweep both ways and the seeds; returns ``{"title", "rows", "ratios", "notes"}``.

    Args:
      quick: fewer timing rounds, and the seeds measured on the two small models only.

    Returns:
      ``rows``: per contestant ``name``, ``median_s``, ``min_s`` and ``per_step_us`` (the
      read floor with ``GB_per_s``, the seeds rows with ``GFLOP_per_s``); ``ratios``:
      ``"python loop / compiled sweep"``, ``"python loop / lr_range_test end to end"``, the
      compiled sweep and the loop against the floors, and per model ``"3 seeds / 1 seed"``
      beside its lower bound at the measured peak FLOP/s; ``notes``.
    """
    rounds, repeats = (5, 1) if quick else (15, 3)
    contestants, agree, steps_run = _sweep_contestants()
    times = timing.interleaved(contestants, rounds=rounds, repeats=repeats)
    med = {name: t["median"] for name, t in times.items()}
    compiled, loop, end_to_end, kernel, read = (
        med[name] for name in (COMPILED, LOOP, END_TO_END, KERNEL_FLOOR, READ_FLOOR))
    read_bytes = NUM_STEPS * BATCH * NUM_INPUTS * np.dtype(np.float32).itemsize
    rows = [{"name": name, "median_s": t["median"], "min_s": t["min"],
             "per_step_us": 1e6 * t["median"] / NUM_STEPS,
             **({"GB_per_s": read_bytes / read / 1e9} if name == READ_FLOOR else {})}
            for name, t in times.items()]
    ratios = {"python loop / compiled sweep": loop / compiled,
              "python loop / lr_range_test end to end": loop / end_to_end,
              "compiled sweep / read floor": compiled / read,
              "compiled sweep / cached-minibatch floor": compiled / kernel,
              "python loop / read floor (most any compiled sweep could gain)": loop / read}
    peak = _peak_gflops(rounds)
    for label, (loss_fn, init, data, model_state, step_flops) in _seed_models(
            ldata.load("mnist-5k"), quick).items():
        t = timing.interleaved(_timed_seeds(loss_fn, init, data, model_state), rounds=rounds,
                               repeats=repeats)
        flops = step_flops * NUM_STEPS
        for name, s in (("1 seed", 1), ("3 seeds", 3),
                        ("3 seeds sharing one minibatch order", 3)):
            rows.append({"name": f"range test, {label}, {name}",
                         "median_s": t[name]["median"], "min_s": t[name]["min"],
                         "per_step_us": 1e6 * t[name]["median"] / NUM_STEPS,
                         "GFLOP_per_s": s * flops / t[name]["median"] / 1e9})
        ratios[f"{label}: 3 seeds / 1 seed"] = t["3 seeds"]["median"] / t["1 seed"]["median"]
        ratios[f"{label}: 3 seeds sharing one order / 1 seed"] = (
            t["3 seeds sharing one minibatch order"]["median"] / t["1 seed"]["median"])
        ratios[f"{label}: 3 seeds / 1 seed, lower bound at peak FLOP/s"] = (
            3.0 * flops / t["1 seed"]["median"] / 1e9 / peak)
    return {
        "title": (f"LR range test, {NUM_STEPS} steps: the compiled sweep against a Python loop "
                  f"(logistic regression on {NUM_INPUTS} inputs, batch {BATCH}, sgd momentum "
                  "0.9), and 3 seeds against 1 (mnist-5k)"),
        "rows": rows,
        "ratios": ratios,
        "notes": [
            f"device: {jax.devices()[0].device_kind}; compile time excluded (warm-up calls); "
            f"{rounds} interleaved rounds x {repeats} repeats, order rotated, medians",
            "compiled sweep: lr_range_test's jitted program, its record read back to the "
            "host; loop: one jitted step per minibatch, the loss read to the host each step "
            "for smoothing and the divergence test, as fastai / torch-lr-finder do; the rules "
            "(the same host work after either sweep) are timed on their own",
            f"both sweeps ran all {steps_run} steps; max |smoothed loss difference| = "
            f"{agree:.2e}",
            "floors: the compiled sweep on one minibatch reused every step (cache-resident: "
            "arithmetic and scan overhead only), and a one-thread NumPy copy of each of the "
            f"{NUM_STEPS} minibatches ({read_bytes / 1e6:.0f} MB, "
            f"{read_bytes / read / 1e9:.1f} GB/s): a step near the read floor is memory-bound, "
            "and loop / read floor bounds the gain of any compiled sweep over fresh minibatches",
            "seeds: one vmapped program per count; FLOP/s = seeds x 6 x batch x parameters "
            f"per step; peak {peak:.0f} GFLOP/s (jitted 1024^3 float32 matmul, this run); "
            "the lower bound is 3 x one seed's FLOP/s / peak",
            "targets: the compiled sweep >= 5x faster than the loop; 3 seeds <= 1.5x one seed",
        ],
    }
