"""Fair side-by-side timing on a shared, noisy machine.

Contestants run in interleaved rounds (each round times every contestant once, in an order
rotated from round to round), after a warm-up; a figure is the median over rounds, and with
``repeats > 1`` the median of the per-repeat medians, so one noisy round decides nothing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax

__all__ = ["interleaved", "block"]


def block(x: Any) -> Any:
    """Waits until every array in ``x`` is computed (JAX dispatch is asynchronous)."""
    return jax.block_until_ready(x)


def interleaved(
    contestants: Mapping[str, Callable[[], Any]],
    *,
    rounds: int = 15,
    repeats: int = 3,
    warmup: int = 2,
    inner: int = 1,
) -> dict[str, dict[str, float]]:
    """Times each zero-argument callable; returns ``{name: {"median": s, "min": s, ...}}``.

    Each callable must do its whole work (and block on its result) when called. ``inner``
    calls are made back to back per timing and the time is divided by ``inner``.

    Returns per contestant: ``median`` (median of the per-repeat medians, seconds per call),
    ``min`` (fastest single timing), ``repeat_medians`` and ``samples`` (all timings).
    """
    names = list(contestants)
    for _ in range(warmup):
        for n in names:
            contestants[n]()
    samples: dict[str, list[list[float]]] = {n: [] for n in names}
    k = 0
    for _ in range(repeats):
        for n in names:
            samples[n].append([])
        for _ in range(rounds):
            order = names[k % len(names):] + names[: k % len(names)]
            k += 1
            for n in order:
                fn = contestants[n]
                t0 = time.perf_counter()
                for _ in range(inner):
                    fn()
                samples[n][-1].append((time.perf_counter() - t0) / inner)
    out: dict[str, dict[str, Any]] = {}
    for n in names:
        meds = [statistics.median(r) for r in samples[n]]
        flat = [t for r in samples[n] for t in r]
        out[n] = {
            "median": statistics.median(meds),
            "min": min(flat),
            "repeat_medians": meds,
            "samples": flat,
        }
    return out
