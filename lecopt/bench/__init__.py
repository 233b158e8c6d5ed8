"""``lecopt bench``: lecopt side by side with optax, Flax (and PyTorch when importable).

Each section is a module with a ``run(quick=False) -> dict`` that returns ``{"title", "rows",
"ratios", "notes"}``; :data:`SECTIONS` lists them, :func:`run` runs and prints them.

* :mod:`~lecopt.bench.updates`: one optimizer step against optax (and torch), with the memory
  traffic read off the compiled program and the machine's measured bandwidth.
* :mod:`~lecopt.bench.lr`: the compiled LR range test against a Python loop of jitted steps.
* :mod:`~lecopt.bench.nn`: lecopt's BatchNorm and MLP against Flax's.
* :mod:`~lecopt.bench.train`: ``fit``'s compiled epoch and ``sweep``'s strategies.

All contestants run through :func:`lecopt.bench.timing.interleaved`: interleaved rounds in
rotated order, medians.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import jax

from lecopt.bench import lr, nn, train, updates
from lecopt.bench.updates import BENCH_SHAPES, OPTIMIZER_CASES, compiled_traffic

__all__ = ["SECTIONS", "run", "format_section", "compiled_traffic", "run_updates",
           "BENCH_SHAPES", "OPTIMIZER_CASES"]

run_updates = updates.run

SECTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "updates": updates.run,
    "lr": lr.run,
    "nn": nn.run,
    "train": train.run,
}
"""Section name (as given to ``lecopt bench --only``) -> its ``run(quick=...)``."""


def format_section(result: dict[str, Any]) -> str:
    """A plain-text table of one section's rows, its ratios and its notes."""
    lines = [f"== {result['title']} =="]
    rows = result.get("rows", [])
    if rows and "optimizer" in rows[0]:
        lines.append(f"{'optimizer':<10} {'contestant':<12} {'median ms':>10} {'Mparam/s':>9} "
                     f"{'loops':>5} {'compiled MB':>11} {'GB/s':>6} {'of bw':>6} "
                     f"{'compiled of bw':>14}")
        for r in rows:
            comp = f"{r['compiled_bytes'] / 1e6:11.0f}" if r["compiled_bytes"] else f"{'-':>11}"
            loops = f"{r['compiled_loops']:5d}" if r["compiled_loops"] is not None else "    -"
            fcomp = (f"{r['fraction_of_bandwidth_compiled']:14.2f}"
                     if r["fraction_of_bandwidth_compiled"] is not None else f"{'-':>14}")
            lines.append(
                f"{r['optimizer']:<10} {r['contestant']:<12} {r['median_s'] * 1e3:10.2f} "
                f"{r['params_per_s'] / 1e6:9.0f} {loops} {comp} {r['achieved_GBps']:6.1f} "
                f"{r['fraction_of_bandwidth_minimal']:6.2f} {fcomp}"
            )
    else:
        for r in rows:
            extra = "  ".join(f"{k}={_fmt(v)}" for k, v in r.items()
                              if k not in ("name", "median_s") and not isinstance(v, list | dict))
            lines.append(f"  {r['name']:<48} {r['median_s'] * 1e3:10.2f} ms  {extra}")
    for k, v in result.get("ratios", {}).items():
        lines.append(f"  ratio {k}: {v:.3f}")
    for note in result.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def run(sections: Sequence[str] | None = None, quick: bool = False,
        json_path: str | None = None) -> dict[str, Any]:
    """Runs the chosen sections (all by default), prints each table, optionally writes JSON.

    Raises:
      ValueError: an unknown section name (before anything runs).
    """
    names = list(sections or SECTIONS)
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        raise ValueError(f"sections: unknown {unknown}; choose from {', '.join(SECTIONS)}")
    out: dict[str, Any] = {"jax": jax.__version__, "device": str(jax.devices()[0]),
                           "quick": quick, "sections": {}}
    for name in names:
        result = SECTIONS[name](quick=quick)
        out["sections"][name] = result
        print(format_section(result))
        print()
    if json_path:
        with open(json_path, "w") as f:
            json.dump(out, f, indent=2, default=float)
    return out
