"""``lecopt reproduce``: runs the experiments, prints a verdict per claim, writes the report.

Everything goes under the output folder: ``figures/`` (the experiments' figures),
``report.md`` and ``report.html`` (one document, see :mod:`lecopt.experiments.report`) and
``claims.json`` (machine-readable, with the settings, seed, data set and versions). Only
:func:`publish` (``--figures-dir``, the maintainer's ``make figures``) writes outside it: the
README's figures and claims table.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import platform
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lecopt.experiments import Claim, Context, Result, report
from lecopt.train import to_jsonable

# In the lecture's order.
EXPERIMENTS = [
    "lecopt.experiments.momentum",
    "lecopt.experiments.mnist_momentum",
    "lecopt.experiments.learning_rates",
    "lecopt.experiments.adaptive",
    "lecopt.experiments.batchnorm",
]

# Figures shown at the top of the README (copied to --figures-dir).
README_FIGURES = ["ravine", "styblinski_tang", "mnist_momentum", "lr_range_test", "schedules",
                  "batchnorm_curves"]
README_MARKERS = ("<!-- claims:start -->", "<!-- claims:end -->")


class UsageError(ValueError):
    """A bad option of ``lecopt reproduce``; the message starts with the option's name."""


@dataclasses.dataclass
class Outcome:
    """One experiment's run: its result, or the traceback of its crash."""

    module: Any
    result: Result | None
    error: str | None
    seconds: float


# ----------------------------------------------------------------------------- selection


class _Missing:
    """Stands in for an experiment module that failed to import: it runs as a crash."""

    def __init__(self, name: str, error: str):
        self.ID = name.rsplit(".", 1)[-1]
        self.TITLE = f"{self.ID} (failed to import)"
        self.CLAIMS = ()
        self._error = error

    def run(self, ctx: Context) -> Result:
        raise ImportError(self._error)


def _import(name: str):
    try:
        return importlib.import_module(name)
    except Exception:  # reported as a crashed experiment
        return _Missing(name, traceback.format_exc())


def _names(module: Any) -> set[str]:
    """What ``--only`` may name to select ``module``: its id, its claims' ids and numbers."""
    return {module.ID, *(c.id for c in module.CLAIMS), *(str(c.number) for c in module.CLAIMS)}


def select(only: Sequence[str] | None) -> list[Any]:
    """The experiment modules to run: all, or those named by ``only`` (ids or claim numbers).

    Raises:
      UsageError: when a name in ``only`` matches no experiment and no claim.
    """
    modules = [_import(m) for m in EXPERIMENTS]
    if not only:
        return modules
    unknown = [o for o in only if not any(o in _names(m) for m in modules)]
    if unknown:
        claim_ids = ", ".join(c.id for m in modules for c in m.CLAIMS)
        raise UsageError(
            f"--only: unknown id(s) {', '.join(unknown)}; use experiment ids "
            f"({', '.join(m.ID for m in modules)}), claim ids ({claim_ids}) or claim numbers "
            "1-17")
    return [m for m in modules if _names(m) & set(only)]


# ----------------------------------------------------------------------------- running


def run_all(ctx: Context, modules: Sequence[Any]) -> list[Outcome]:
    """Runs ``modules`` in order, printing each claim's verdict; a crash does not stop the rest."""
    from tqdm.auto import tqdm

    outcomes = []
    bar = tqdm(modules, desc="experiments", disable=not ctx.progress)
    for m in bar:
        bar.set_postfix_str(m.ID)
        t0 = time.perf_counter()
        try:
            res, err = m.run(ctx), None
        except Exception:  # one crash must not hide the other experiments
            res, err = None, traceback.format_exc()
        outcomes.append(Outcome(m, res, err, time.perf_counter() - t0))
        if res is not None:
            for c in sorted(res.claims, key=lambda c: c.number):
                bar.write(f"[{c.verdict:^14}] {c.number:2d}. {c.id}: {c.evidence}")
        else:
            bar.write(f"[{'CRASHED':^14}] experiment {m.ID}:\n{err}")
    return outcomes


def _versions() -> dict[str, str]:
    import jax

    import lecopt

    out = {"lecopt": lecopt.__version__, "jax": jax.__version__,
           "python": platform.python_version(), "device": str(jax.devices()[0]),
           "platform": platform.platform()}
    for name in ("optax", "flax", "numpy", "matplotlib"):
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception:  # a version we cannot read is left out
            pass
    return out


# ----------------------------------------------------------------------------- writing


def write_report(out: Path, meta: dict[str, Any], outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Writes ``figures/``, ``report.md``, ``report.html`` and ``claims.json`` under ``out``.

    Returns the content of ``claims.json``.
    """
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for o in outcomes:
        placed = []
        for f in (o.result.figures if o.result else []):
            (figures_dir / f.filename).write_bytes(f.data)
            placed.append(report.PlacedFigure(f"figures/{f.filename}", f))
        runs.append(report.ExperimentRun(o.module.ID, o.module.TITLE, o.seconds,
                                         o.result.settings if o.result else None, placed,
                                         o.error))
    claims: list[Claim] = sorted((c for o in outcomes if o.result for c in o.result.claims),
                                 key=lambda c: c.number)
    held = sum(c.holds for c in claims)
    doc = {
        **meta,
        "summary": {"claims": len(claims), "reproduced": held,
                    "not_reproduced": len(claims) - held,
                    "crashed_experiments": [r.id for r in runs if r.error is not None]},
        "claims": [c.to_dict() for c in claims],
        "experiments": [
            {"id": r.id, "title": r.title, "seconds": round(r.seconds, 2), "error": r.error,
             "settings": r.settings,
             "figures": [{"path": p.path, "caption": p.figure.caption, "title": p.figure.title,
                          "format": p.figure.format} for p in r.figures]}
            for r in runs
        ],
    }
    (out / "claims.json").write_text(json.dumps(doc, indent=1, default=to_jsonable))
    document = report.build(meta, claims, runs)
    (out / "report.md").write_text(report.to_markdown(document))
    (out / "report.html").write_text(report.to_html(document))
    return doc


def publish(out: Path, dest: Path, doc: dict[str, Any], readme: Path = Path("README.md")
            ) -> None:
    """Copies the README's figures from ``out`` to ``dest`` and refreshes the claims table.

    The table (with the run's summary line) goes to ``dest / "claims.md"`` and between the
    :data:`README_MARKERS` of ``readme`` when both markers are there; nothing is typed in by
    hand.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for name in README_FIGURES:
        src = out / "figures" / f"{name}.png"
        if src.exists():
            (dest / src.name).write_bytes(src.read_bytes())
    s = doc["summary"]
    table = (f"{s['reproduced']} of {s['claims']} claims reproduced ({doc['data']}, seed "
             f"{doc['seed']}, {'quick' if doc['quick'] else 'full'} run, "
             f"{doc['elapsed_s']:.0f} s, {doc['versions']['device']}).\n\n"
             + report.markdown_table(report.claims_table(doc["claims"], report.README_COLUMNS)))
    (dest / "claims.md").write_text(table + "\n")
    start, end = README_MARKERS
    if readme.exists():
        text = readme.read_text()
        if start in text and end in text:
            head, rest = text.split(start, 1)
            _, tail = rest.split(end, 1)
            readme.write_text(f"{head}{start}\n{table}\n{end}{tail}")


def _command(out: str, quick: bool, only: Sequence[str] | None, data: str,
             data_dir: str | None, seed: int, figures_dir: str | None) -> str:
    """The ``lecopt reproduce`` command line that gives these arguments."""
    parts = ["lecopt", "reproduce", *(["--quick"] if quick else []), "--out", str(out),
             *(["--only", ",".join(only)] if only else []), "--data", data,
             *(["--data-dir", str(data_dir)] if data_dir else []), "--seed", str(seed),
             *(["--figures-dir", str(figures_dir)] if figures_dir else [])]
    return " ".join(parts)


def main(out: str | Path = "results", *, quick: bool = False, only: Sequence[str] | None = None,
         data: str = "mnist-5k", data_dir: str | None = None, seed: int = 0,
         figures_dir: str | Path | None = None, progress: bool = True,
         keep: list[Outcome] | None = None) -> int:
    """Runs ``lecopt reproduce``; returns 1 when an experiment crashed, else 0.

    Args:
      out: the output folder (everything is written under it).
      quick: the small settings.
      only: experiment ids, claim ids or claim numbers (as text) to run; None runs all.
      data: ``"mnist-5k"``, ``"mnist"`` or ``"fashion-mnist"``.
      data_dir: the folder of the IDX files of the latter two.
      seed: the base seed.
      figures_dir: also refresh the README's figures and claims table (``make figures``).
      progress: show progress bars.
      keep: if a list, every experiment's :class:`Outcome` (its ``Result`` as an object) is
        appended, for a caller in the same process (a notebook, the tests).

    Raises:
      UsageError: before anything runs, for an unknown ``only`` name or data that cannot be
        loaded.
    """
    modules = select(only)
    ctx = Context(quick=quick, data_name=data, data_dir=data_dir, seed=seed, progress=progress)
    if data != "mnist-5k":
        try:
            ctx.data()
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(f"--data {data}: " + " ".join(str(e).split())) from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    outcomes = run_all(ctx, modules)
    if keep is not None:
        keep.extend(outcomes)
    elapsed = time.perf_counter() - t0
    meta = {"data": data, "seed": seed, "quick": quick, "elapsed_s": round(elapsed, 1),
            "versions": _versions(),
            "command": _command(out, quick, only, data, data_dir, seed, figures_dir)}
    doc = write_report(out, meta, outcomes)
    s = doc["summary"]
    print(f"\n{s['reproduced']} of {s['claims']} claims reproduced, {s['not_reproduced']} not"
          + (f"; crashed: {', '.join(s['crashed_experiments'])}" if s["crashed_experiments"]
             else "") + f" ({elapsed:.0f} s).")
    print(f"report: {out / 'report.md'}, {out / 'report.html'}, {out / 'claims.json'}")
    if figures_dir:
        publish(out, Path(figures_dir), doc)
    return 1 if s["crashed_experiments"] else 0
