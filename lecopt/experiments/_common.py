"""Helpers shared by the experiments: the seed rule, the "never" formatter, band plots."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


def majority(flags: Iterable[bool]) -> bool:
    """True when more than half of ``flags`` are true (False for no flags).

    Example:
      >>> majority([True, True, False]), majority([True, False]), majority([])
      (True, False, False)
    """
    flags = [bool(f) for f in flags]
    return sum(flags) > len(flags) / 2


def seed_tally(flags: Sequence[bool]) -> dict[str, int]:
    """``{"run": n, "held": k}``: how many seeds were run and on how many the rule held.

    Example:
      >>> seed_tally([True, False, True])
      {'run': 3, 'held': 2}
    """
    return {"run": len(flags), "held": sum(bool(f) for f in flags)}


def format_count(n: float | None) -> str:
    """An iteration or epoch count for the evidence; None or infinity is ``"never"``.

    Example:
      >>> format_count(12), format_count(3.0), format_count(None), format_count(math.inf)
      ('12', '3', 'never', 'never')
    """
    return "never" if n is None or math.isinf(n) else f"{n:.0f}"


def band(ax: Any, curves: Sequence[Sequence[float]], color: Any, label: str,
         style: str = "-", scale: float = 1.0) -> None:
    """Plots the mean of per-seed curves against epochs 1..n and shades their min-max band.

    Curves of different lengths (a run stopped early) are cut to the shortest.
    """
    n = min(len(c) for c in curves)
    arr = scale * np.stack([np.asarray(c[:n], np.float64) for c in curves])
    epochs = np.arange(1, n + 1)
    ax.plot(epochs, arr.mean(0), style, color=color, lw=1.8, label=label)
    if arr.shape[0] > 1:
        ax.fill_between(epochs, arr.min(0), arr.max(0), color=color, alpha=0.15, lw=0)
