"""``lecopt bench`` section "nnx": lecopt.nnx.BatchNorm against flax.nnx.BatchNorm.

BatchNorm forward+backward (``nnx.jit`` of ``nnx.value_and_grad`` of ``sum(out * cotangent)``
with respect to the input and the Params, running averages updated) at a dense (256, 1024) and
an NHWC (64, 16, 16, 64) input, against ``nnx.BatchNorm``'s default (fast variance,
``E[z^2] - E[z]^2``). Both sides run the same NNX program; only the layer class differs. The
headline ratio is the geometric mean of lecopt's time over Flax's on the two shapes.

Second section (:func:`run_fit`, ``lecopt bench --only nnx``): one
``lecopt.train.fit`` epoch of an NNX MLP (784-512-512-10 with :class:`lecopt.nnx.BatchNorm`,
batch 128, mnist-5k's 4000 training examples: 31 steps, no test set) against the same epoch
written as NNX's tutorials do: an ``nnx.jit`` training step (``nnx.Optimizer(model,
lecopt.sgd(...), wrt=nnx.Param)``, ``nnx.value_and_grad``) called in a Python loop. Same work
on both sides: each step gathers its minibatch from the device-resident data by the epoch's
shuffled indices and takes one SGD-with-momentum step; fit's epoch also checks finiteness and
records each step's loss and error (the loop returns its losses), and neither side evaluates a
test set; each blocks on its losses and its trained module's state. FLOP/s from ``6 * batch *
parameters`` per step (:func:`lecopt.train.flops_per_step`). A third contestant, timed in the
same rounds, is the limit of this CPU: the epoch's matrix products alone (per step the
forward's three, the three weight gradients and the two input gradients backpropagation needs,
and a plain weight update), quoted as the fraction of fit's epoch they take.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lecopt import nnx as lnnx
from lecopt.bench.timing import interleaved

__all__ = ["run", "run_batch_norm", "run_fit", "fit_contestants", "matmul_epoch"]

FIT_WIDTHS, FIT_BATCH = (512, 512), 128
BN_SHAPES = [(256, 1024), (64, 16, 16, 64)]
CONTESTANTS = {"lecopt.nnx.BatchNorm": lnnx.BatchNorm,
               "flax.nnx.BatchNorm (default, fast variance)": nnx.BatchNorm}


def _fwd_bwd(cls: type, shape: tuple[int, ...]) -> Callable[[], Any]:
    k1, k2 = jax.random.split(jax.random.key(0))
    x = jax.random.normal(k1, shape, jnp.float32) + 3.0
    ct = jax.random.normal(k2, shape, jnp.float32)
    layer = cls(shape[-1], momentum=0.9, rngs=nnx.Rngs(0))

    @nnx.jit
    def step(layer, x):
        return nnx.value_and_grad(lambda m, x: jnp.sum(m(x) * ct), argnums=(0, 1))(layer, x)

    jax.block_until_ready(step(layer, x))
    return lambda: jax.block_until_ready(step(layer, x))


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Both sections: :func:`run_batch_norm`, then :func:`run_fit`."""
    return run_batch_norm(quick) + run_fit(quick)


def run_batch_norm(quick: bool = False) -> list[dict[str, Any]]:
    """Times the contestants; returns one row per (shape, contestant) and one ratio row."""
    rounds, repeats = (5, 1) if quick else (15, 3)
    rows: list[dict[str, Any]] = []
    ratios = []
    for shape in BN_SHAPES:
        res = interleaved({name: _fwd_bwd(cls, shape) for name, cls in CONTESTANTS.items()},
                          rounds=rounds, repeats=repeats)
        for name, r in res.items():
            rows.append({"name": f"NNX BatchNorm fwd+bwd {shape}: {name}",
                         "median_s": r["median"], "min_s": r["min"]})
        lec, flax_ = (res[n]["median"] for n in CONTESTANTS)
        ratios.append(lec / flax_)
        rows.append({"name": f"ratio {shape} lecopt / flax default", "ratio": lec / flax_})
    rows.append({"name": "NNX BatchNorm fwd+bwd lecopt / flax default (geometric mean)",
                 "ratio": math.exp(sum(map(math.log, ratios)) / len(ratios)),
                 "target": "<= 1.0", "device": str(jax.devices()[0]),
                 "rounds": rounds, "repeats": repeats})
    return rows


def fit_contestants(widths: tuple[int, ...] = FIT_WIDTHS
                    ) -> tuple[dict[str, Callable[[], Any]], float]:
    """The two epochs as zero-argument callables (each returns its step losses), and the
    FLOPs of one epoch."""
    from lecopt import data, optimizers, train
    from lecopt.train import programs

    ds = data.load("mnist-5k")
    x = jax.device_put(jnp.asarray(ds.x_train).reshape(len(ds.x_train), -1))
    y = jax.device_put(jnp.asarray(ds.y_train, jnp.int32))
    n, steps = int(x.shape[0]), int(x.shape[0]) // FIT_BATCH

    def mlp():
        return lnnx.MLP(784, widths, 10, batch_norm=True, rngs=nnx.Rngs(0))

    def opt():
        return optimizers.sgd(0.05, momentum=0.9)

    model_fit = mlp()

    def fit_epoch():
        trained, history = train.fit(model_fit, opt(), (x, y), epochs=1,
                                     batch_size=FIT_BATCH, progress=False)
        jax.block_until_ready(nnx.state(trained))
        return history.step_loss

    model_loop = mlp()
    optimizer = nnx.Optimizer(model_loop, opt(), wrt=nnx.Param)
    _, data_key = programs.seed_keys(0)
    order = programs.epoch_order(data_key, 0, n, steps, FIT_BATCH)

    @nnx.jit
    def step(model, optimizer, idx):
        xb, yb = jnp.take(x, idx, axis=0), jnp.take(y, idx, axis=0)

        def loss_fn(m):
            logits = m(xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    model_loop.train()

    def loop_epoch():
        losses = [step(model_loop, optimizer, order[i]) for i in range(steps)]
        jax.block_until_ready((losses, nnx.state(model_loop)))
        return losses

    flops = steps * train.flops_per_step(mlp(), x[:1], FIT_BATCH)
    return {"lecopt.train.fit epoch (NNX MLP)": fit_epoch,
            "nnx.jit step in a Python loop": loop_epoch}, flops


def matmul_epoch(widths: tuple[int, ...] = FIT_WIDTHS, steps: int = 4000 // FIT_BATCH
                 ) -> tuple[Callable[[], Any], float]:
    """The matrix products of ``steps`` training steps of the MLP, and nothing else: per step
    the forward's products, every weight gradient and the input gradients of all layers but
    the first, then ``w -= 1e-9 * gradient`` (a dependency from step to step, so that XLA
    cannot hoist the products out of the loop). Returns the callable and its FLOPs."""
    sizes = [784, *widths, 10]
    ws = [jnp.full((a, b), 1e-2, jnp.float32) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    xb = jax.random.normal(jax.random.key(0), (FIT_BATCH, sizes[0]), jnp.float32)

    @jax.jit
    def products(ws):
        def step(_, ws):
            hs = [xb]
            for w in ws:
                hs.append(hs[-1] @ w)
            delta, grads = hs[-1], []
            for k in reversed(range(len(ws))):
                grads.append(hs[k].T @ delta)
                if k:
                    delta = delta @ ws[k].T
            return [w - 1e-9 * g for w, g in zip(ws, reversed(grads), strict=True)]

        return jax.lax.fori_loop(0, steps, step, ws)

    jax.block_until_ready(products(ws))
    pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
    flops = steps * 2 * FIT_BATCH * (3 * sum(a * b for a, b in pairs) - pairs[0][0] * pairs[0][1])
    return lambda: jax.block_until_ready(products(ws)), float(flops)


def run_fit(quick: bool = False) -> list[dict[str, Any]]:
    """Times one fit epoch against one nnx.jit-loop epoch and the epoch's bare matrix
    products; rows with times, per-step times, FLOP/s and the ratios."""
    rounds, repeats = (3, 1) if quick else (7, 3)
    contestants, flops = fit_contestants()
    bare, bare_flops = matmul_epoch()
    limit = "matrix products alone (the limit)"
    res = interleaved({**contestants, limit: bare}, rounds=rounds, repeats=repeats)
    steps = 4000 // FIT_BATCH
    rows = [{"name": f"NNX MLP 784-512-512-10 BN epoch: {name}", "median_s": r["median"],
             "min_s": r["min"], "ms_per_step": 1e3 * r["median"] / steps,
             "gflop_per_s": (bare_flops if name == limit else flops) / r["median"] / 1e9}
            for name, r in res.items()]
    fit_s, loop_s = (res[n]["median"] for n in contestants)
    rows.append({"name": "NNX fit epoch / nnx.jit loop epoch", "ratio": fit_s / loop_s,
                 "target": "<= 0.85", "device": str(jax.devices()[0]),
                 "rounds": rounds, "repeats": repeats})
    rows.append({"name": "matrix products alone / NNX fit epoch (1.0: nothing but the products)",
                 "ratio": res[limit]["median"] / fit_s})
    return rows


def section(quick: bool = False) -> dict[str, Any]:
    """``lecopt bench --only nnx``: both measurements as one bench section."""
    rows = run(quick)
    return {"title": "Flax NNX: BatchNorm fwd+bwd and the fit epoch",
            "rows": [r for r in rows if "median_s" in r],
            "ratios": {r["name"]: r["ratio"] for r in rows if "ratio" in r},
            "notes": ["targets: BatchNorm geometric mean <= 1.0, fit epoch / nnx.jit loop <= 0.85",
                      "matrix products alone / fit epoch: the share of fit's epoch that the "
                      "products it must compute take on this machine (1.0 is the limit)"]}


if __name__ == "__main__":
    import sys

    quick = "--quick" in sys.argv
    for row in (run_fit(quick) if "--fit" in sys.argv else run(quick)):  # --fit: section 2
        print(row)
