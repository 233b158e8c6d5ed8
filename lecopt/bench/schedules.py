"""Benchmark: the cost of a joined schedule per step, lecopt's ``join`` against optax's.

Each contestant is one compiled ``lax.fori_loop`` of 10,000 steps that adds up ``f(t)`` at every
step, so the figure is the schedule's own cost per step (plus one dispatch per 10,000 steps).
lecopt's schedules are passed to the compiled loop as arguments (pytrees of their numbers, as an
optimizer carries them); optax's are closures, compiled in as constants. The pieces are cosine
annealings with different peaks and lengths (a hand-built SGDR), the cheapest piece that still
does some arithmetic, so the overhead of finding the piece shows most; a second join mixes three
kinds (linear warm-up, constant, cosine), where lecopt chooses the kind with ``lax.switch``.

Two more lecopt loops split the join's step into its parts (they are diagnostics, not schedules
anyone calls): the stacked cosines evaluated at a fixed row (what reading the numbers from the
stacked arrays costs) and at a row that depends on the step but needs no search,
``(t >> 10) & 7`` (what a step-dependent read costs); the join adds the compare tree that finds
the row. The notes also count the kernels of each compiled loop body, from its optimized HLO.
"""

from __future__ import annotations

import re
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


def kernels_per_step(schedule: Any, num_steps: int = NUM_STEPS) -> list[str]:
    """The operations of the compiled loop's body (one entry per kernel run at every step).

    Read from the optimized HLO of :func:`_loop`'s program: the ``while`` body's instructions
    less the bookkeeping that moves no data (parameters, tuples, constants, copies, bitcasts).
    A schedule whose whole step fuses into one kernel gives ``["fusion", "fusion"]`` (its step
    and the loop counter's increment).
    """

    def total(f):
        return jax.lax.fori_loop(0, num_steps, lambda t, acc: acc + f(t), jnp.float32(0))

    f = schedule if isinstance(schedule, Partial) else Partial(schedule)
    text = jax.jit(total).lower(f).compile().as_text()
    body = re.search(r"while\(.*?body=%([\w.\-]+)", text).group(1)
    block = re.search(r"^%" + re.escape(body) + r" .*?^}", text, re.S | re.M).group(0)
    bookkeeping = {"parameter", "get-tuple-element", "tuple", "constant", "copy", "bitcast"}
    return [op for op in re.findall(r"= \S+ ([a-z][\w\-]*)\(", block) if op not in bookkeeping]


def _at_fixed_row(kind, step):
    # The piece of row 0 read from the stacked numbers: the read's cost without a search.
    return schedules._member(kind, 0, jnp.asarray(step))


def _at_unsearched_row(kind, starts, step):
    # A row that changes with the step but costs two integer operations to find (no search);
    # NUM_PIECES is a power of two, so the row is in range and the read needs no clamp.
    t = jnp.asarray(step)
    row = (t >> 10) & (NUM_PIECES - 1)
    local = t - jax.lax.dynamic_index_in_dim(jnp.asarray(starts), row, keepdims=False)
    return schedules._member(kind, row, local)


def _parts(joined: Partial) -> dict[str, Any]:
    """The diagnostic loops of the module docstring, built from the join's own stacked numbers."""
    kinds, starts = joined.args[0], joined.args[1]
    kind = kinds[0]  # all pieces are cosines: one kind, whose leaves have one row per piece
    return {
        "parts: stacked cosines, fixed row": Partial(_at_fixed_row, kind),
        "parts: stacked cosines, row (t >> 10) & 7": Partial(_at_unsearched_row, kind, starts),
    }


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
      ``rows``: per contestant ``name``, ``median_s`` and ``min_s`` per loop of 10,000 steps,
      ``per_step_ns`` and ``marginal_per_step_ns``; ``ratios``: each join's median over its
      single piece's, for lecopt and for optax, and the parts of lecopt's join over the single
      piece; ``notes``, with the kernels per step of the compiled loops.
    """
    ours, theirs, boundaries = _pieces()
    mixed_ours, mixed_theirs = _mixed(boundaries)
    one, joined = "lecopt cosine_annealing (1 piece)", f"lecopt join of {NUM_PIECES} cosines"
    mixed = f"lecopt join of {NUM_PIECES}, 3 kinds"
    one_optax = "optax cosine_decay_schedule (1 piece)"
    joined_optax = f"optax join_schedules of {NUM_PIECES} cosines"
    mixed_optax = f"optax join_schedules of {NUM_PIECES}, 3 kinds"
    ours_joined = schedules.join(ours, boundaries)
    parts = _parts(ours_joined)
    fixed_row, unsearched_row = parts
    scheds = {
        one: ours[0],
        joined: ours_joined,
        mixed: mixed_ours,
        one_optax: theirs[0],
        joined_optax: optax.join_schedules(theirs, boundaries),
        mixed_optax: mixed_theirs,
        **parts,
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
    ratios = {}
    for label, c in (("", per_step), ("marginal ", marginal)):
        ratios.update({
            f"{label}lecopt join {NUM_PIECES} / 1 piece": c[joined] / c[one],
            f"{label}optax join {NUM_PIECES} / 1 piece": c[joined_optax] / c[one_optax],
            f"{label}lecopt join {NUM_PIECES} of 3 kinds / 1 piece": c[mixed] / c[one],
            f"{label}optax join {NUM_PIECES} of 3 kinds / 1 piece": c[mixed_optax] / c[one_optax],
        })
    ratios.update({
        "marginal parts: fixed row / 1 piece": marginal[fixed_row] / marginal[one],
        "marginal parts: row (t >> 10) & 7 / 1 piece": marginal[unsearched_row] / marginal[one],
    })
    agree = abs(sums[joined] - sums[joined_optax]) / abs(sums[joined_optax])
    kernels = {name: kernels_per_step(scheds[name]) for name in (one, joined, joined_optax)}
    target = ratios[f"lecopt join {NUM_PIECES} / 1 piece"]
    ns = {n: f"{1e9 * marginal[n]:.1f} ns" for n in scheds}
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
            "kernels per step (the compiled loop body, less bookkeeping): "
            + "; ".join(f"{n}: {len(k)} ({', '.join(k)})" for n, k in kernels.items()),
            f"parts of lecopt's join step (marginal): the piece alone {ns[one]}; its numbers "
            f"read from the stacked rows at a fixed row {ns[fixed_row]}; at a row that changes "
            f"with the step, found without a search {ns[unsearched_row]}; at the row the compare "
            f"tree finds (the join) {ns[joined]}. The piece's arithmetic waits for its numbers: "
            "finding and reading them lengthens the step's chain of dependent operations, "
            "which costs time even where the extra work is a few fused scalar operations",
            f"target: lecopt's join of {NUM_PIECES} pieces <= 1.2x one piece per step: "
            f"{target:.2f}x, {'met' if target <= 1.2 else 'not met'}",
        ],
    }
