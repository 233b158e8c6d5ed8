"""``lecopt reproduce``: runs the experiments, prints a verdict per claim, writes the report.

The report is ``report.md`` (claims table, then each figure with its caption), ``report.html``
(the same, self-contained: figures inlined as base64 PNG) and ``claims.json``
(machine-readable, with the settings, seed, data set and versions).
"""

from __future__ import annotations

import argparse
import base64
import html
import importlib
import json
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from lecopt.experiments import Claim, Context, Result
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


def _versions() -> dict[str, str]:
    import jax  # noqa: PLC0415

    import lecopt  # noqa: PLC0415

    out = {"lecopt": lecopt.__version__, "jax": jax.__version__,
           "python": platform.python_version(), "device": str(jax.devices()[0]),
           "platform": platform.platform()}
    for name in ("optax", "flax", "numpy", "matplotlib"):
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception:  # noqa: BLE001
            pass
    return out


class _Missing:
    """Stands in for an experiment module that failed to import: it runs as a crash."""

    def __init__(self, name: str, error: str):
        self.ID = name.rsplit(".", 1)[-1]
        self.TITLE = f"{self.ID} (failed to import)"
        self.CLAIM_IDS = ()
        self._error = error

    def run(self, ctx: Context) -> Result:
        raise ImportError(self._error)


def _import(name: str):
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - reported as a crashed experiment
        return _Missing(name, traceback.format_exc())


def _selected(modules: list[Any], only: list[str] | None) -> list[Any]:
    if not only:
        return modules
    wanted = set(only)
    out = []
    for m in modules:
        ids = {m.ID, *m.CLAIM_IDS, *(str(n) for n in getattr(m, "CLAIM_NUMBERS", ()))}
        if ids & wanted:
            out.append(m)
    return out


def run_all(ctx: Context, only: list[str] | None = None,
            echo=print) -> tuple[list[tuple[Any, Result | None, str | None, float]], list[str]]:
    """Runs the selected experiments; returns (module, result, error, seconds) per experiment."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    modules = [_import(m) for m in EXPERIMENTS]
    known = {i for m in modules for i in (m.ID, *m.CLAIM_IDS,
                                          *(str(n) for n in getattr(m, "CLAIM_NUMBERS", ())))}
    unknown = [o for o in (only or []) if o not in known]
    chosen = _selected(modules, only)
    results = []
    bar = tqdm(chosen, desc="experiments", disable=not ctx.progress)
    for m in bar:
        bar.set_postfix_str(m.ID)
        t0 = time.perf_counter()
        try:
            res = m.run(ctx)
            err = None
        except Exception:  # noqa: BLE001 - one crash must not hide the other experiments
            res, err = None, traceback.format_exc()
        dt = time.perf_counter() - t0
        results.append((m, res, err, dt))
        if res is not None:
            for c in sorted(res.claims, key=lambda c: c.number):
                bar.write(f"[{c.verdict:^14}] {c.number:2d}. {c.id}: {c.evidence}")
        else:
            bar.write(f"[{'CRASHED':^14}] experiment {m.ID}:\n{err}")
    return results, unknown


def _claims(results) -> list[Claim]:
    return sorted((c for _, r, _, _ in results if r for c in r.claims), key=lambda c: c.number)


def write_report(out: Path, ctx: Context, results, elapsed: float) -> dict[str, Any]:
    """Writes report.md, report.html and claims.json; returns the claims.json content."""
    claims = _claims(results)
    held = sum(c.holds for c in claims)
    crashed = [m.ID for m, r, _, _ in results if r is None]
    meta = {
        "data": ctx.data_name, "seed": ctx.seed, "quick": ctx.quick,
        "elapsed_s": round(elapsed, 1), "versions": _versions(),
        "command": " ".join(["lecopt", *sys.argv[1:]]) if sys.argv else "lecopt reproduce",
    }
    doc = {
        **meta,
        "summary": {"claims": len(claims), "reproduced": held,
                    "not_reproduced": len(claims) - held, "crashed_experiments": crashed},
        "claims": [c.to_dict() for c in claims],
        "experiments": [
            {"id": m.ID, "title": m.TITLE, "seconds": round(dt, 2), "error": err,
             "settings": r.settings if r else None,
             "figures": [f.__dict__ for f in r.figures] if r else []}
            for m, r, err, dt in results
        ],
    }
    (out / "claims.json").write_text(json.dumps(doc, indent=1, default=to_jsonable))

    md = ["# lecopt reproduce: the advanced-optimization lecture, re-run\n",
          f"Data set **{ctx.data_name}**, seed {ctx.seed}, "
          f"{'quick' if ctx.quick else 'full'} settings, {elapsed:.0f} s; "
          f"lecopt {meta['versions']['lecopt']}, jax {meta['versions']['jax']} on "
          f"{meta['versions']['device']}.\n",
          f"**{held} of {len(claims)} claims reproduced.**"
          + (f" Crashed experiments: {', '.join(crashed)}." if crashed else "") + "\n",
          "Every number below comes from this run. Thresholds were fixed before the run.\n",
          "## Claims\n",
          "| # | claim | verdict | evidence | threshold | seeds |",
          "|---|---|---|---|---|---|"]
    for c in claims:
        seeds = f"{c.seeds['held']}/{c.seeds['run']}" if c.seeds else "-"
        md.append(f"| {c.number} | {_md(c.statement)} | **{c.verdict}** | {_md(c.evidence)} | "
                  f"{_md(c.threshold)} | {seeds} |")
    md.append("")
    for m, r, err, dt in results:
        md.append(f"## {m.TITLE}\n")
        md.append(f"_{dt:.1f} s._\n")
        if r is None:
            md.append(f"**Crashed:**\n\n```\n{err}\n```\n")
            continue
        if r.settings:
            md.append("Settings: " + ", ".join(f"`{k}={_short(v)}`" for k, v in
                                              r.settings.items()) + "\n")
        for f in r.figures:
            alt = _md(f.title or f.caption).replace("[", "(").replace("]", ")")
            md.append(f"![{alt}]({f.path})\n")
            md.append(f"*{f.caption}*\n")
    (out / "report.md").write_text("\n".join(md))
    (out / "report.html").write_text(_html(out, ctx, claims, results, held, crashed, meta))
    return doc


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _short(v: Any) -> str:
    s = str(v)
    return s if len(s) < 80 else s[:77] + "..."


def _html(out: Path, ctx, claims, results, held, crashed, meta) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>lecopt reproduce</title><style>",
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}",
        "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;"
        "padding:4px 6px;vertical-align:top}.ok{color:#176117;font-weight:bold}"
        ".no{color:#a11;font-weight:bold}img{max-width:100%}figure{margin:1.5em 0}",
        "</style></head><body>",
        "<h1>lecopt reproduce: the advanced-optimization lecture, re-run</h1>",
        f"<p>Data set <b>{e(ctx.data_name)}</b>, seed {ctx.seed}, "
        f"{'quick' if ctx.quick else 'full'} settings; lecopt {e(meta['versions']['lecopt'])}, "
        f"jax {e(meta['versions']['jax'])} on {e(meta['versions']['device'])}.</p>",
        f"<p><b>{held} of {len(claims)} claims reproduced.</b>"
        + (f" Crashed experiments: {e(', '.join(crashed))}." if crashed else "") + "</p>",
        "<h2>Claims</h2><table><tr><th>#</th><th>claim</th><th>verdict</th><th>evidence</th>"
        "<th>threshold</th><th>seeds</th></tr>",
    ]
    for c in claims:
        cls = "ok" if c.holds else "no"
        seeds = f"{c.seeds['held']}/{c.seeds['run']}" if c.seeds else "-"
        parts.append(f"<tr><td>{c.number}</td><td>{e(c.statement)}</td><td class='{cls}'>"
                     f"{e(c.verdict)}</td><td>{e(c.evidence)}</td><td>{e(c.threshold)}</td>"
                     f"<td>{seeds}</td></tr>")
    parts.append("</table>")
    for m, r, err, dt in results:
        parts.append(f"<h2>{e(m.TITLE)}</h2><p><i>{dt:.1f} s</i></p>")
        if r is None:
            parts.append(f"<p class='no'>Crashed:</p><pre>{e(err or '')}</pre>")
            continue
        for f in r.figures:
            data = base64.b64encode((out / f.path).read_bytes()).decode()
            parts.append(f"<figure><img alt='{e(f.title or f.caption)}' "
                         f"src='data:image/png;base64,{data}'><figcaption>{e(f.caption)}"
                         "</figcaption></figure>")
            if Path(f.path).with_suffix(".gif").name != Path(f.path).name:
                gif = (out / f.path).with_suffix(".gif")
                if gif.exists():
                    g = base64.b64encode(gif.read_bytes()).decode()
                    parts.append(f"<figure><img alt='animation' src='data:image/gif;base64,{g}'>"
                                 "<figcaption>Animation of the same paths.</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def claims_table(doc: dict[str, Any]) -> str:
    """The claims as a Markdown table (for the README)."""
    rows = ["| # | claim | verdict | evidence |", "|---|---|---|---|"]
    for c in doc["claims"]:
        rows.append(f"| {c['number']} | {_md(c['statement'])} | {c['verdict']} | "
                    f"{_md(c['evidence'])} |")
    return "\n".join(rows)


def publish(out: Path, dest: Path, doc: dict[str, Any]) -> None:
    """Copies the README's figures to ``dest`` and refreshes the README's claims table.

    The table goes between the markers ``<!-- claims:start -->`` and ``<!-- claims:end -->``
    of ``README.md`` in the current folder, when both exist; nothing is typed in by hand.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for name in README_FIGURES:
        src = out / "figures" / f"{name}.png"
        if src.exists():
            shutil.copy(src, dest / src.name)
    s = doc["summary"]
    table = (f"{s['reproduced']} of {s['claims']} claims reproduced ({doc['data']}, seed "
             f"{doc['seed']}, {'quick' if doc['quick'] else 'full'} run, "
             f"{doc['elapsed_s']:.0f} s, {doc['versions']['device']}).\n\n" + claims_table(doc))
    (dest / "claims.md").write_text(table + "\n")
    readme = Path("README.md")
    start, end = "<!-- claims:start -->", "<!-- claims:end -->"
    if readme.exists():
        text = readme.read_text()
        if start in text and end in text:
            head, rest = text.split(start, 1)
            _, tail = rest.split(end, 1)
            readme.write_text(f"{head}{start}\n{table}\n{end}{tail}")


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Entry point of ``lecopt reproduce``; exits non-zero only when an experiment crashed."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out_dir=out, quick=args.quick, data_name=args.data, data_dir=args.data_dir,
                  seed=args.seed, progress=not args.no_progress)
    if args.data != "mnist-5k":
        try:
            ctx.data()
        except (FileNotFoundError, ValueError) as e:
            parser.error(f"--data {args.data}: " + " ".join(str(e).split()))
    t0 = time.perf_counter()
    results, unknown = run_all(ctx, args.only)
    if unknown:
        parser.error(f"--only: unknown id(s) {', '.join(unknown)}; use experiment ids "
                     f"(momentum, mnist_momentum, learning_rates, adaptive, batchnorm), claim "
                     "ids or claim numbers 1-17")
    elapsed = time.perf_counter() - t0
    doc = write_report(out, ctx, results, elapsed)
    s = doc["summary"]
    print(f"\n{s['reproduced']} of {s['claims']} claims reproduced, {s['not_reproduced']} not"
          + (f"; crashed: {', '.join(s['crashed_experiments'])}" if s["crashed_experiments"]
             else "") + f" ({elapsed:.0f} s).")
    print(f"report: {out / 'report.md'}, {out / 'report.html'}, {out / 'claims.json'}")
    if args.figures_dir:
        publish(out, Path(args.figures_dir), doc)
    return 1 if s["crashed_experiments"] else 0
