"""Benchmark: the cost of a joined schedule per step, lecopt's ``join`` against optax's.

Each contestant is one compiled ``lax.fori_loop`` of 10,000 steps that adds up ``f(t)`` at every
step, so the figure is the schedule's own cost per step (plus one dispatch per 10,000 steps).
lecopt's schedules are passed to the compiled loop as arguments (pytrees of their numbers, as an
optimizer carries them); optax's are closures, compiled in as constants. The pieces are cosine
annealings with different peaks and lengths (a hand-built SGDR), the cheapest piece that still
does some arithmetic, so the overhead of finding the piece shows most; a second join mixes three
kinds (linear warm-up, constant, cosine), where lecopt chooses the kind with ``lax.switch``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.tree_util import Partial

from lecopt import schedules
from lecopt.bench import timing

NUM_STEPS = 10_000
NUM_PIECES = 8
PIECE_STEPS = 1_000


def _loop(schedule: Any, num_steps: int = NUM_STEPS) -> Callable[[], Any]:
    """A zero-argument callable running the compiled sum of ``schedule(t)`` over the steps."""

    @jax.jit
    def total(f):
        return jax.lax.fori_loop(0, num_steps, lambda t, acc: acc + f(t), jnp.float32(0))

    f = schedule if isinstance(schedule, Partial) else Partial(schedule)
    return lambda: timing.block(total(f))


def _pieces() -> tuple[list[Any], list[Any], list[int]]:
    peaks = [0.1 * 0.8**k for k in range(NUM_PIECES)]
    lengths = [PIECE_STEPS + 100 * k for k in range(NUM_PIECES)]
    ours = [schedules.cosine_annealing(p, 0.0, n) for p, n in zip(peaks, lengths)]
    theirs = [optax.cosine_decay_schedule(p, n) for p, n in zip(peaks, lengths)]
    boundaries = np.cumsum(lengths)[:-1].tolist()
    return ours, theirs, boundaries


def _mixed(boundaries: list[int]) -> tuple[Any, Any]:
    ours, theirs = [], []
    for k in range(NUM_PIECES):
        peak = 0.1 * 0.8**k
        if k % 3 == 0:
            ours.append(schedules.linear_decay(0.0, peak, PIECE_STEPS))
            theirs.append(optax.linear_schedule(0.0, peak, PIECE_STEPS))
        elif k % 3 == 1:
            ours.append(schedules.constant(peak))
            theirs.append(optax.constant_schedule(peak))
        else:
            ours.append(schedules.cosine_annealing(peak, 0.0, PIECE_STEPS))
            theirs.append(optax.cosine_decay_schedule(peak, PIECE_STEPS))
    return schedules.join(ours, boundaries), optax.join_schedules(theirs, boundaries)


def run(quick: bool = False) -> dict[str, Any]:
    """Times every contestant side by side; returns ``{"title", "rows", "ratios", "notes"}``.

    Args:
      quick: fewer timing rounds (a smoke run).

    Returns:
      ``rows``: per contestant ``name``, ``median_s`` and ``min_s`` per loop of 10,000 steps
      and ``per_step_ns``; ``ratios``: each join's median over its single piece's, for lecopt
      and for optax; ``notes``.
    """
    ours, theirs, boundaries = _pieces()
    mixed_ours, mixed_theirs = _mixed(boundaries)
    scheds = {
        "lecopt cosine_annealing (1 piece)": ours[0],
        f"lecopt join of {NUM_PIECES} cosines": schedules.join(ours, boundaries),
        f"lecopt join of {NUM_PIECES}, 3 kinds": mixed_ours,
        "optax cosine_decay_schedule (1 piece)": theirs[0],
        f"optax join_schedules of {NUM_PIECES} cosines": optax.join_schedules(theirs, boundaries),
        f"optax join_schedules of {NUM_PIECES}, 3 kinds": mixed_theirs,
    }
    contestants = {name: _loop(f) for name, f in scheds.items()}
    # The same loops of one step: the fixed cost of a call (dispatch, argument transfer).
    contestants.update({f"{name}, 1 step": _loop(f, 1) for name, f in scheds.items()})
    # Both joins sum to the same number (the same schedule): the loops compute what they claim.
    sums = {name: float(fn()) for name, fn in contestants.items()}
    rounds, repeats = (3, 1) if quick else (21, 3)
    times = timing.interleaved(contestants, rounds=rounds, repeats=repeats)
    med = {name: t["median"] for name, t in times.items()}
    # Per step: the loop's time, and its time less that of one step (the step's own cost).
    per_step = {n: med[n] / NUM_STEPS for n in scheds}
    marginal = {n: (med[n] - med[f"{n}, 1 step"]) / (NUM_STEPS - 1) for n in scheds}
    rows = [
        {"name": name, "median_s": times[name]["median"], "min_s": times[name]["min"],
         "per_step_ns": 1e9 * per_step[name], "marginal_per_step_ns": 1e9 * marginal[name],
         "call_overhead_us": 1e6 * med[f"{name}, 1 step"], "sum": sums[name]}
        for name in scheds
    ]
    names = list(scheds)
    ratios = {}
    for label, c in (("", per_step), ("marginal ", marginal)):
        ratios.update({
            f"{label}lecopt join {NUM_PIECES} / 1 piece": c[names[1]] / c[names[0]],
            f"{label}optax join {NUM_PIECES} / 1 piece": c[names[4]] / c[names[3]],
            f"{label}lecopt join {NUM_PIECES} of 3 kinds / 1 piece": c[names[2]] / c[names[0]],
            f"{label}optax join {NUM_PIECES} of 3 kinds / 1 piece": c[names[5]] / c[names[3]],
        })
    agree = abs(sums[names[1]] - sums[names[4]]) / abs(sums[names[4]])
    return {
        "title": (f"Joined schedules: {NUM_PIECES} pieces against one, a compiled loop of "
                  f"{NUM_STEPS} steps summing f(t)"),
        "rows": rows,
        "ratios": ratios,
        "notes": [
            f"device: {jax.devices()[0].device_kind}; compile time excluded (warm-up calls); "
            f"{rounds} interleaved rounds x {repeats} repeats, order rotated, medians",
            "lecopt schedules are arguments of the compiled loop (their numbers are data); "
            "optax's are closures compiled in as constants",
            "marginal: (loop of 10,000 steps - loop of 1 step) / 9,999, the cost of a step "
            "without the call's fixed cost",
            f"sum of f(t) over the steps, lecopt vs optax join of {NUM_PIECES} cosines: relative "
            f"difference {agree:.1e}",
            "target: lecopt's join of 8 pieces <= 1.2x one piece per step",
        ],
    }

