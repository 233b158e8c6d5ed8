"""``lecopt bench``: lecopt side by side with optax, Flax (and PyTorch when importable).

Each section is a module with a ``run(quick=False) -> dict`` that returns ``{"title", "rows",
"ratios", "notes"}``; :data:`SECTIONS` lists them, :func:`run` runs and prints them.

* :mod:`~lecopt.bench.updates`: one optimizer step against optax (and torch), with the memory
  traffic read off the compiled program and the machine's measured bandwidth.
* :mod:`~lecopt.bench.lr`: the compiled LR range test against a Python loop of jitted steps.
* :mod:`~lecopt.bench.nn`: lecopt's BatchNorm and MLP against Flax's.
* :mod:`~lecopt.bench.train`: ``fit``'s compiled epoch and ``sweep``'s strategies.
* :mod:`~lecopt.bench.schedules`: a joined schedule's cost per step against optax's
  ``join_schedules``.
* :mod:`~lecopt.bench.lr_suggest` (``lr-suggest``): every range-test rule's suggestion judged
  by grid search on a suite of tasks (a table and the regret figure). It trains hundreds of
  runs (minutes on 2 CPU cores, about a minute with ``--quick``), so it runs only when named
  (:data:`DEFAULT_SECTIONS` leaves it out). ``lr-dependence``, also only when named: what
  lecopt's suggestion depends on (the swept range, the seed) and what the best rate depends
  on (the budget).

A section may also return ``"table"`` (text printed instead of the rows) and ``"figures"``
(file name -> PNG bytes, written under ``out_dir``).

All contestants run through :func:`lecopt.bench.timing.interleaved`: interleaved rounds in
rotated order, medians.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

from lecopt.bench import lr, lr_suggest, nn, nnx, schedules, train, updates
from lecopt.bench.updates import BENCH_SHAPES, OPTIMIZER_CASES, compiled_traffic

__all__ = ["SECTIONS", "DEFAULT_SECTIONS", "run", "format_section", "compiled_traffic",
           "run_updates", "BENCH_SHAPES", "OPTIMIZER_CASES"]

run_updates = updates.run

SECTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "updates": updates.run,
    "lr": lr.run,
    "nn": nn.run,
    "train": train.run,
    "schedules": schedules.run,
    "nnx": nnx.section,
    "lr-suggest": lr_suggest.section,
    "lr-dependence": lr_suggest.dependence_section,
}
"""Section name (as given to ``lecopt bench --only``) -> its ``run(quick=...)``."""

DEFAULT_SECTIONS: tuple[str, ...] = tuple(name for name in SECTIONS
                                          if name not in ("lr-suggest", "lr-dependence"))
"""What ``lecopt bench`` runs without ``--only``: every section but the minutes-long
``lr-suggest`` suite and ``lr-dependence``."""


def format_section(result: dict[str, Any]) -> str:
    """A plain-text table of one section's rows, its ratios and its notes."""
    lines = [f"== {result['title']} =="]
    rows = result.get("rows", [])
    if "table" in result:
        lines.append(result["table"])
    elif rows and "optimizer" in rows[0]:
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
        json_path: str | None = None, out_dir: str = "bench-out") -> dict[str, Any]:
    """Runs the chosen sections (:data:`DEFAULT_SECTIONS` by default), prints each table,
    writes each section's figures under ``out_dir`` (printing where), optionally the JSON.

    Raises:
      ValueError: an unknown section name (before anything runs).
    """
    names = list(sections or DEFAULT_SECTIONS)
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        raise ValueError(f"sections: unknown {unknown}; choose from {', '.join(SECTIONS)}")
    out: dict[str, Any] = {"jax": jax.__version__, "device": str(jax.devices()[0]),
                           "quick": quick, "sections": {}}
    for name in names:
        result = SECTIONS[name](quick=quick)
        figures = result.pop("figures", {})
        if figures:
            folder = Path(out_dir)
            folder.mkdir(parents=True, exist_ok=True)
            for file_name, png in figures.items():
                (folder / file_name).write_bytes(png)
                result.setdefault("notes", []).append(f"figure: wrote {folder / file_name}")
        out["sections"][name] = result
        print(format_section(result))
        print()
    if json_path:
        with open(json_path, "w") as f:
            json.dump(out, f, indent=2, default=float)
    return out
