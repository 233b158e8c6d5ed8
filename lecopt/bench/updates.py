"""``lecopt bench`` section "updates": one optimizer step, lecopt against optax (and PyTorch
when importable).

The benchmark times one optimizer step (update + apply, jitted, buffers donated) on 14M
float32 parameters in 8 leaves. On a CPU such a step is bound by memory traffic, so the bench
also measures the machine's bandwidth in the same run (a donated in-place ``x + a * y``: 3
streams) and reports, per optimizer, the minimal traffic of its update, the traffic of the
program XLA actually compiled (read off the optimized HLO), and the achieved GB/s.
Contestants run in interleaved rounds with rotated order (:mod:`lecopt.bench.timing`).
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lecopt import registry
from lecopt.bench.timing import interleaved

__all__ = ["BENCH_SHAPES", "OPTIMIZER_CASES", "run", "compiled_traffic"]

BENCH_SHAPES = [(4000, 2000), (2000,), (2000, 2000), (2000,), (2000, 1000), (1000,),
                (1000, 10), (10,)]

# Minimal traffic per parameter in 4-byte streams: params, grads and state read; params and
# state written. Momentum/Nesterov/Adagrad/RMSProp: p, g, state in; p, state out = 5.
# Adam: p, g, s, r in; p, s, r out = 7.
OPTIMIZER_CASES: dict[str, dict[str, Any]] = {
    "momentum": {
        "streams": 5,
        "lecopt": lambda: registry.make_optimizer("momentum", 1e-3, momentum=0.9),
        "optax": lambda: optax.sgd(1e-3, momentum=0.9),
        "optax_label": "optax.sgd(lr, momentum=0.9)",
        "torch": ("SGD", {"lr": 1e-3, "momentum": 0.9}),
    },
    "nesterov": {
        "streams": 5,
        "lecopt": lambda: registry.make_optimizer("nesterov", 1e-3, momentum=0.9),
        "optax": lambda: optax.sgd(1e-3, momentum=0.9, nesterov=True),
        "optax_label": "optax.sgd(lr, momentum=0.9, nesterov=True)",
        "torch": ("SGD", {"lr": 1e-3, "momentum": 0.9, "nesterov": True}),
    },
    "adagrad": {
        "streams": 5,
        "lecopt": lambda: registry.make_optimizer("adagrad", 1e-2, eps=1e-7),
        # optax's adagrad puts eps inside the root and starts r at 0.1: the closest setting.
        "optax": lambda: optax.adagrad(1e-2, initial_accumulator_value=0.0, eps=1e-7),
        "optax_label": "optax.adagrad(lr, initial_accumulator_value=0, eps=1e-7) [closest: eps "
        "inside the root]",
        "torch": ("Adagrad", {"lr": 1e-2, "eps": 1e-7}),
    },
    "rmsprop": {
        "streams": 5,
        "lecopt": lambda: registry.make_optimizer("rmsprop", 1e-3, decay=0.9, eps=1e-6),
        "optax": lambda: optax.rmsprop(1e-3, decay=0.9, eps=1e-6, eps_in_sqrt=False),
        "optax_label": "optax.rmsprop(lr, 0.9, 1e-6, eps_in_sqrt=False)",
        "torch": ("RMSprop", {"lr": 1e-3, "alpha": 0.9, "eps": 1e-6}),
    },
    "adam": {
        "streams": 7,
        "lecopt": lambda: registry.make_optimizer("adam", 1e-3, eps=1e-8),
        "optax": lambda: optax.adam(1e-3, eps=0.0, eps_root=1e-8),
        "optax_label": "optax.adam(lr, eps=0, eps_root=1e-8)",
        "torch": ("Adam", {"lr": 1e-3, "eps": 1e-8}),
    },
}


# --------------------------------------------------------------------------------------------
# Reading the optimized HLO.

_SHAPE = re.compile(r"(pred|s8|u8|s16|u16|s32|u32|s64|u64|f16|bf16|f32|f64)\[([0-9,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
          "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}


def _shape_bytes(text: str) -> int:
    total = 0
    for dtype, dims in _SHAPE.findall(text):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * _BYTES[dtype]
    return total


def compiled_traffic(hlo_text: str, min_bytes: int = 1 << 16) -> dict[str, Any]:
    """Memory traffic of the top-level loops of an optimized HLO module.

    Every fusion (and copy) in the entry computation is one pass over memory that reads each
    operand and writes its result. Operands and results smaller than ``min_bytes`` (scalars,
    counters) are ignored. Returns ``{"bytes": total, "loops": number of such passes}``.
    """
    entry = hlo_text[hlo_text.index("ENTRY"):]
    body = entry[: entry.index("\n}")]
    sizes: dict[str, int] = {}
    total, loops = 0, 0
    for line in body.splitlines()[1:]:
        m = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)", line)
        if not m:
            continue
        name, rest = m.groups()
        # The result shape is everything before the op name.
        op = re.search(r"\s([a-z\-]+)\(", rest)
        if op is None:
            continue
        out_bytes = _shape_bytes(rest[: op.start()])
        sizes[name] = out_bytes
        if op.group(1) in ("fusion", "copy"):
            args = rest[op.end(): rest.index(")", op.end())]
            ins = [sizes.get(a.strip().lstrip("%").split(" ")[-1].lstrip("%"), 0)
                   for a in args.split(",")]
            moved = sum(b for b in ins if b >= min_bytes) + (out_bytes if out_bytes >= min_bytes
                                                            else 0)
            if moved:
                total += moved
                loops += 1
    return {"bytes": total, "loops": loops}


# --------------------------------------------------------------------------------------------
# The update benchmark.


def _make_step(tx: optax.GradientTransformation) -> Callable:
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


def _bandwidth_probe(n: int) -> Callable[[], None]:
    kx, ky = jax.random.split(jax.random.key(1))
    holder = {"x": jax.random.normal(kx, (n,), jnp.float32)}
    y = jax.random.normal(ky, (n,), jnp.float32)
    axpy = jax.jit(lambda x, y, a: x + a * y, donate_argnums=(0,))

    def call():
        holder["x"] = axpy(holder["x"], y, 1e-6)
        holder["x"].block_until_ready()

    return call


def _jax_contestant(tx, shapes, seed: int):
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    params = [jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, shapes)]
    grads = [1e-2 * jax.random.normal(k, s, jnp.float32) for k, s in zip(keys[::-1], shapes)]
    state = tx.init(params)
    step = _make_step(tx)
    hlo = step.lower(params, state, grads).compile().as_text()
    holder = {"p": params, "s": state}

    def call():
        holder["p"], holder["s"] = step(holder["p"], holder["s"], grads)
        jax.block_until_ready(holder["p"])

    return call, hlo


def _torch_contestant(spec, shapes):
    import torch  # optional, never a dependency

    name, kwargs = spec
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen, requires_grad=False) for s in shapes]
    for p in params:
        p.grad = 1e-2 * torch.randn(p.shape, generator=gen)
    cls = getattr(torch.optim, name)
    label = "torch"
    for variant in ("fused", "foreach"):
        try:
            opt = cls(params, **kwargs, **{variant: True})
            opt.step()
            label = f"torch ({variant})"
            break
        except (RuntimeError, TypeError, ValueError):
            continue
    else:
        opt = cls(params, **kwargs)
        opt.step()

    def call():
        opt.step()

    return call, label


def _torch_available() -> bool:
    # Idle OpenMP threads that spin slow down whichever contestant runs next.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        importlib.import_module("torch")
    except Exception:  # any import failure means "not available"
        return False
    return True


def run(quick: bool = False, rounds: int | None = None, repeats: int | None = None,
                shapes: list[tuple[int, ...]] | None = None,
                cases: list[str] | None = None) -> dict[str, Any]:
    """Times one update step of each optimizer for lecopt, optax (and torch if importable)."""
    shapes = shapes or BENCH_SHAPES
    rounds = rounds or (5 if quick else 15)
    repeats = repeats or (1 if quick else 3)
    n = int(sum(np.prod(s) for s in shapes))
    use_torch = _torch_available()

    probe = _bandwidth_probe(n)
    bw = interleaved({"axpy": probe}, rounds=rounds, repeats=repeats)["axpy"]["median"]
    bandwidth = 3 * 4 * n / bw

    rows, ratios, notes = [], {}, []
    for case in cases or list(OPTIMIZER_CASES):
        spec = OPTIMIZER_CASES[case]
        contestants: dict[str, Callable] = {}
        hlos: dict[str, str] = {}
        contestants["lecopt"], hlos["lecopt"] = _jax_contestant(spec["lecopt"](), shapes, 0)
        contestants["optax"], hlos["optax"] = _jax_contestant(spec["optax"](), shapes, 0)
        torch_label = None
        if use_torch:
            contestants["torch"], torch_label = _torch_contestant(spec["torch"], shapes)
        res = interleaved(contestants, rounds=rounds, repeats=repeats)
        minimal = spec["streams"] * 4 * n
        for who, r in res.items():
            traffic = compiled_traffic(hlos[who]) if who in hlos else None
            rows.append({
                "optimizer": case,
                "name": {"optax": spec["optax_label"], "torch": torch_label}.get(who, "lecopt"),
                "contestant": who,
                "median_s": r["median"],
                "min_s": r["min"],
                "repeat_medians_s": r["repeat_medians"],
                "params_per_s": n / r["median"],
                "minimal_bytes": minimal,
                "compiled_bytes": traffic["bytes"] if traffic else None,
                "compiled_loops": traffic["loops"] if traffic else None,
                "achieved_GBps": minimal / r["median"] / 1e9,
                "fraction_of_bandwidth_minimal": minimal / r["median"] / bandwidth,
                "fraction_of_bandwidth_compiled": (traffic["bytes"] / r["median"] / bandwidth
                                                   if traffic else None),
            })
        ratios[f"{case}: lecopt/optax"] = res["lecopt"]["median"] / res["optax"]["median"]
        if "torch" in res:
            ratios[f"{case}: lecopt/torch"] = res["lecopt"]["median"] / res["torch"]["median"]
    notes.append(
        f"{n / 1e6:.1f}M float32 parameters in {len(shapes)} leaves; bandwidth measured in this "
        f"run by a donated in-place x + a*y (3 streams): {bandwidth / 1e9:.1f} GB/s "
        f"(median {bw * 1e3:.2f} ms)."
    )
    notes.append("achieved GB/s = minimal traffic / median time; 'of bw' columns divide the "
                 "minimal and the compiled traffic by the measured bandwidth.")
    if not use_torch:
        notes.append("PyTorch not importable: no torch contestant (it is never a dependency).")
    return {
        "title": "Optimizer update step (update + apply, jitted, donated buffers)",
        "rows": rows,
        "ratios": ratios,
        "notes": notes,
        "bandwidth_GBps": bandwidth / 1e9,
        "num_params": n,
        "rounds": rounds,
        "repeats": repeats,
        "device": str(jax.devices()[0]),
    }
