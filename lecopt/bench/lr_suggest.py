"""Benchmark: how good is each range-test suggestion? Judged by grid search on mnist-5k
(``lecopt bench --only lr-suggest``).

For every task (model, optimizer, batch size, budget in epochs) of :data:`TASKS`:

1. range tests over 3 seeds (one vmapped program, :func:`lecopt.lr_finder.lr_range_test`) at
   each resolution of ``num_steps`` (100, 400, 1000 steps) over the same range of rates;
2. a grid search (:func:`lecopt.train.grid_search`) of constant rates a quarter-decade
   apart (at least 13, extended until the best is inside) for the task's budget, from the
   same initialisation and minibatch order as every other run of the task;
3. for every rule and resolution: its suggestion (median over the seeds), the final training
   loss (whole set, prediction mode) it trains to at that EXACT rate, and its regret = that
   loss / the grid-best loss (inf when it diverged).

``run`` returns the table rows, ``summary`` the hit rate (regret <= 1.25) and median regret per
rule and the resolution dependence, ``plot`` the figure. Nothing here is tuned per task: every
task is swept over the same range with the same rules.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lecopt import data as ldata
from lecopt import lr_finder, registry, train
from lecopt import nn as lnn

MIN_LR, MAX_LR = 1e-6, 10.0
HIT = 1.25
SEEDS = 3


@dataclasses.dataclass(frozen=True)
class Task:
    """One benchmark task: ``name``, hidden ``features`` (``()``: logistic regression),
    ``batch_norm``, optimizer ``opt`` (a key of :data:`OPTIMIZERS`), ``batch_size``,
    ``epochs`` (the budget) and the first grid rate ``grid_lo`` (log10)."""

    name: str
    features: tuple[int, ...]
    batch_norm: bool
    opt: str
    batch_size: int
    epochs: int
    grid_lo: float


def _factory(name: str) -> Callable[[Any], optax.GradientTransformation]:
    # The suite's names over the package's one table: "sgd" is plain gradient descent, and
    # the momentum methods run at phi = 0.9.
    phi = 0.9 if name in ("momentum", "nesterov") else None
    return functools.partial(registry.make_optimizer, "gd" if name == "sgd" else name,
                             momentum=phi)


OPTIMIZERS: dict[str, Callable[[Any], optax.GradientTransformation]] = {
    name: _factory(name) for name in ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam")
}

TASKS: tuple[Task, ...] = (
    Task("logreg sgd b32 1ep", (), False, "sgd", 32, 1, -2.5),
    Task("logreg adagrad b64 3ep", (), False, "adagrad", 64, 3, -3.0),
    Task("mlp64 momentum b128 5ep", (64,), False, "momentum", 128, 5, -3.0),
    Task("mlp64 nesterov b64 2ep", (64,), False, "nesterov", 64, 2, -3.0),
    Task("mlp64+bn momentum b128 3ep", (64,), True, "momentum", 128, 3, -2.5),
    Task("mlp128 rmsprop b64 2ep", (128,), False, "rmsprop", 64, 2, -4.5),
    Task("mlp128-64 adam b256 10ep", (128, 64), False, "adam", 256, 10, -4.5),
    Task("mlp64-64+bn adam b32 1ep", (64, 64), True, "adam", 32, 1, -4.5),
    Task("mlp512-512 momentum b128 1ep", (512, 512), False, "momentum", 128, 1, -3.0),
)
"""The suite: SGD without momentum, with momentum 0.9, Nesterov, Adagrad, RMSProp and Adam;
logistic regression up to the lecture's 784-512-512-10 MLP; with and without BatchNorm;
batch sizes 32 to 256; budgets of 1 to 10 epochs."""

HELD_OUT_TASKS: tuple[Task, ...] = (
    Task("mlp256 sgd b64 2ep", (256,), False, "sgd", 64, 2, -2.5),
    Task("logreg momentum b256 5ep", (), False, "momentum", 256, 5, -3.0),
    Task("mlp128 adagrad b32 1ep", (128,), False, "adagrad", 32, 1, -3.0),
    Task("mlp32-32+bn rmsprop b128 3ep", (32, 32), True, "rmsprop", 128, 3, -4.5),
    Task("mlp64 adam b128 4ep", (64,), False, "adam", 128, 4, -4.5),
)
"""Tasks added after :data:`lecopt.lr_finder.LECOPT_FACTOR` was chosen on :data:`TASKS`, and
never used to choose anything: the rules' figures on them are out of sample."""

QUICK_TASKS: tuple[Task, ...] = (
    Task("logreg sgd b32 1ep", (), False, "sgd", 32, 1, -2.5),
    Task("mlp32 momentum b64 2ep", (32,), False, "momentum", 64, 2, -3.0),
    Task("logreg adam b64 2ep", (), False, "adam", 64, 2, -4.0),
)


def _flat(ds: ldata.Dataset) -> tuple[np.ndarray, ...]:
    flat = lambda x: np.asarray(x, np.float32).reshape(len(x), -1)
    return (flat(ds.x_train), np.asarray(ds.y_train, np.int32), flat(ds.x_test),
            np.asarray(ds.y_test, np.int32))


def _range_tests(task: Task, model: Any, x: np.ndarray, y: np.ndarray,
                 num_steps: Sequence[int], seeds: int, min_lr: float = MIN_LR,
                 max_lr: float = MAX_LR) -> dict[int, lr_finder.LRRangeTestResult]:
    """Range tests of ``task`` at each resolution, ``seeds`` seeds each (one program each)."""
    order = train.batch_order(0, 0, len(x), task.batch_size)  # fit(seed=0)'s first epoch
    batches = (jnp.asarray(x[order]), jnp.asarray(y[order]))
    x1 = jnp.asarray(x[:1])
    # fit's own loss (train.loss_function): the sweep trains what the grid search trains.
    loss_fn = train.loss_function(model)
    params = lambda key: model.init(key, x1, train=False)["params"]
    state = model.init(jax.random.key(0), x1, train=False).get("batch_stats", {})
    out = {}
    for n in num_steps:
        out[n] = lr_finder.lr_range_test(loss_fn, params, batches, OPTIMIZERS[task.opt],
                                         min_lr=min_lr, max_lr=max_lr, num_steps=int(n),
                                         model_state=state, seeds=seeds)
    return out


def _grid_and_rates(task: Task, model: Any, data: tuple, grid_size: int,
                    extra: Sequence[float]) -> tuple[train.GridSearchResult, dict]:
    """Grid search a quarter-decade apart from ``10**grid_lo`` (``grid_size`` rates), plus
    the ``extra`` rates trained the same way in the same sweep (one compiled program); the
    grid is extended by 4 rates (at most 3 times) while its best sits at an end. Returns the
    grid (its best over the grid rates only) and ``{extra rate: final loss}``."""
    grid_rates = list(10.0 ** (task.grid_lo + 0.25 * np.arange(grid_size)))
    extra = [float(r) for r in extra]
    factory = OPTIMIZERS[task.opt]
    kw = dict(epochs=task.epochs, batch_size=task.batch_size, seed=0, strategy="vmap")
    final, test_error = train.train_at_rates(model, factory, data, grid_rates + extra, **kw)
    g = len(grid_rates)
    rates, g_final, g_err = np.asarray(grid_rates), final[:g], test_error[:g]
    at_extra = dict(zip(extra, final[g:]))
    for _ in range(3):
        best = int(np.argmin(g_final))
        if 0 < best < len(rates) - 1:
            break
        lo, hi = np.log10(rates[0]), np.log10(rates[-1])
        more = lo - 0.25 * np.arange(4, 0, -1) if best == 0 else hi + 0.25 * np.arange(1, 5)
        f2, e2 = train.train_at_rates(model, factory, data, 10.0**more, **kw)
        rates = np.concatenate([rates, 10.0**more])
        idx = np.argsort(rates)
        rates, g_final = rates[idx], np.concatenate([g_final, f2])[idx]
        g_err = np.concatenate([g_err, e2])[idx]
    b = int(np.argmin(g_final))
    grid = train.GridSearchResult(rates, g_final, g_err, float(rates[b]), float(g_final[b]),
                                      task.epochs, task.batch_size, 0, model, factory, data,
                                      "vmap")
    return grid, at_extra


def run_task(task: Task, num_steps: Sequence[int] = (100, 400, 1000), seeds: int = SEEDS,
             grid_size: int = 15, ds: ldata.Dataset | None = None) -> dict[str, Any]:
    """Everything measured for one task: range tests, grid, and each rule's exact-rate loss."""
    ds = ds if ds is not None else ldata.load("mnist-5k")
    x, y, xt, yt = _flat(ds)
    data = (x, y, xt, yt)
    model = lnn.MLP(features=task.features, batch_norm=task.batch_norm)
    t0 = time.perf_counter()
    tests = _range_tests(task, model, x, y, num_steps, seeds)
    t1 = time.perf_counter()
    rates = sorted({r for res in tests.values() for r in res.suggestions.values()
                    if math.isfinite(r) and r > 0})
    grid, loss_at = _grid_and_rates(task, model, data, grid_size, rates)
    t2 = time.perf_counter()
    rows = []
    for n, res in tests.items():
        for rule, rate in res.suggestions.items():
            loss = loss_at.get(rate, math.nan)
            rows.append({
                "task": task.name, "num_steps": n, "rule": rule, "rate": rate,
                "spread": res.spread[rule], "final_loss": float(loss),
                "regret": float(loss / grid.best_loss) if math.isfinite(rate) else math.nan,
                "grid_best_rate": grid.best_rate, "grid_best_loss": grid.best_loss,
            })
    return {"task": task, "rows": rows, "grid": grid, "tests": tests,
            "seconds": {"range tests": t1 - t0, "grid and exact rates": t2 - t1}}


def run(quick: bool = False, num_steps: Sequence[int] = (100, 400, 1000),
        tasks: Sequence[Task] | None = None, seeds: int = SEEDS,
        progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The whole suite; returns one row per (task, resolution, rule).

    Args:
      quick: :data:`QUICK_TASKS` at 100 and 400 steps with a 13-rate grid (for ``make test``).
      num_steps: the resolutions (ignored when ``quick``).
      tasks: the tasks (default :data:`TASKS`, or :data:`QUICK_TASKS` when ``quick``).
      seeds: range-test seeds per resolution.
      progress: called with a line per finished task (e.g. ``print``).

    Returns:
      Rows ``{"task", "num_steps", "rule", "rate", "spread", "final_loss", "regret",
      "grid_best_rate", "grid_best_loss"}``.
    """
    if quick:
        tasks, num_steps, grid_size = tasks or QUICK_TASKS, (100, 400), 13
    else:
        tasks, grid_size = tasks or TASKS, 15
    ds = ldata.load("mnist-5k")
    rows = []
    for task in tasks:
        rec = run_task(task, num_steps, seeds, grid_size, ds)
        rows += rec["rows"]
        if progress is not None:
            secs = ", ".join(f"{k} {v:.1f} s" for k, v in rec["seconds"].items())
            progress(f"{task.name}: grid best {rec['grid'].best_rate:.3g} "
                     f"(loss {rec['grid'].best_loss:.4f}); {secs}")
    return rows


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per rule: ``hit_rate`` (share of (task, resolution) with regret <= 1.25),
    ``worst_regret``, ``median_regret``, ``diverged`` (count), and ``resolution_move``: the
    median over tasks of max/min of the suggestion across the resolutions."""
    out = {}
    for rule in dict.fromkeys(r["rule"] for r in rows):
        mine = [r for r in rows if r["rule"] == rule]
        reg = np.asarray([r["regret"] if math.isfinite(r["rate"]) else math.inf for r in mine])
        moves = []
        for task in dict.fromkeys(r["task"] for r in mine):
            rates = np.asarray([r["rate"] for r in mine if r["task"] == task])
            moves.append(rates.max() / rates.min() if np.all(np.isfinite(rates)) else math.inf)
        out[rule] = {"hit_rate": float(np.mean(reg <= HIT)),
                     "within_2x": float(np.mean(reg <= 2.0)),
                     "median_regret": float(np.median(reg)),
                     "worst_regret": float(np.max(reg)),
                     "diverged": int(np.sum(~np.isfinite(reg))),
                     "resolution_move": float(np.median(moves))}
    return out


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as text: per task and resolution, each rule's rate and regret."""
    rules = list(dict.fromkeys(r["rule"] for r in rows))
    lines = ["task | steps | grid best (loss) | " + " | ".join(rules)]
    keys = list(dict.fromkeys((r["task"], r["num_steps"]) for r in rows))
    for task, n in keys:
        sel = {r["rule"]: r for r in rows if r["task"] == task and r["num_steps"] == n}
        first = next(iter(sel.values()))
        cells = [f"{sel[k]['rate']:.2g}: {sel[k]['regret']:.2f}x" for k in rules]
        lines.append(f"{task} | {n} | {first['grid_best_rate']:.3g} "
                     f"({first['grid_best_loss']:.4f}) | " + " | ".join(cells))
    s = summary(rows)
    lines.append("")
    lines.append("rule | hit rate (regret <= 1.25) | within 2x | median regret | worst | "
                 "diverged | resolution move (median max/min)")
    for rule, v in s.items():
        lines.append(f"{rule} | {v['hit_rate']:.0%} | {v['within_2x']:.0%} | "
                     f"{v['median_regret']:.3f} | {v['worst_regret']:.3g} | {v['diverged']} | "
                     f"{v['resolution_move']:.2f}x")
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], held_out: Sequence[dict[str, Any]] = ()) -> Any:
    """Regret of every rule (rows) on every task and resolution (columns) as a heat map, the
    value written in each cell (``inf``: diverged), each rule's hit rate and median regret in
    its label; ``held_out`` rows (other tasks, the same rules) to the right of a line, with
    their own hit rate in the label.

    Returns:
      The matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    suite, held_out = list(rows), list(held_out)
    rows = suite + held_out
    rules = list(dict.fromkeys(r["rule"] for r in rows))
    keys = list(dict.fromkeys((r["task"], r["num_steps"]) for r in rows))
    cell = {(r["rule"], r["task"], r["num_steps"]): r for r in rows}
    regret = np.full((len(rules), len(keys)), np.inf)
    for i, rule in enumerate(rules):
        for j, (task, n) in enumerate(keys):
            r = cell[(rule, task, n)]
            if math.isfinite(r["rate"]) and math.isfinite(r["regret"]):
                regret[i, j] = r["regret"]
    cap = 20.0
    fig, ax = plt.subplots(figsize=(max(10.0, 0.42 * len(keys) + 3), 0.5 * len(rules) + 4.2))
    image = ax.imshow(np.clip(regret, 0.5, cap), cmap="RdYlGn_r", aspect="auto",
                      norm=LogNorm(vmin=0.5, vmax=cap))
    for i in range(len(rules)):
        for j in range(len(keys)):
            v = regret[i, j]
            ax.text(j, i, "inf" if not math.isfinite(v) else f"{v:.1f}" if v < 10 else
                    f"{v:.0f}", ha="center", va="center", fontsize=6.5,
                    fontweight="bold" if v <= HIT else "normal")
    s, h = summary(suite), summary(held_out) if held_out else {}
    ax.set_yticks(range(len(rules)))
    ax.set_yticklabels([f"{rule}: hit {s[rule]['hit_rate']:.0%}, median "
                        f"{s[rule]['median_regret']:.2f}x"
                        + (f" | held out {h[rule]['hit_rate']:.0%}, "
                           f"{h[rule]['median_regret']:.2f}x" if h else "")
                        for rule in rules], fontsize="small")
    if held_out:
        edge = len(dict.fromkeys((r["task"], r["num_steps"]) for r in suite)) - 0.5
        ax.axvline(edge, color="k", lw=2.5)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([f"{t}, {n} steps" for t, n in keys], rotation=90, fontsize="x-small")
    ax.set_xlabel("task (mnist-5k) and range-test resolution")
    bar = fig.colorbar(image, ax=ax, pad=0.01)
    bar.set_label(f"regret: final loss / grid-best loss (log, capped at {cap:g})")
    bar.ax.axhline(HIT, color="k", lw=1.5)
    ax.set_title(f"Range-test suggestions judged by grid search: regret per rule and task "
                 f"(bold: hit, regret <= {HIT})"
                 + ("; right of the black line: held-out tasks" if held_out else ""))
    fig.tight_layout()
    return fig


DEPENDENCE_TASKS: tuple[Task, ...] = (TASKS[0], TASKS[2], TASKS[6])
"""The tasks whose suggestion is measured against the rate range and the budget: logistic
regression with plain SGD, the small MLP with momentum, and the 10-epoch Adam task (the
suite's worst case)."""

RANGES: tuple[tuple[float, float], ...] = ((1e-7, 10.0), (1e-6, 10.0), (1e-5, 10.0),
                                            (1e-6, 3.0), (1e-6, 30.0))
BUDGETS: tuple[int, ...] = (1, 3, 10)


def dependence(tasks: Sequence[Task] = DEPENDENCE_TASKS, num_steps: int = 400,
               seeds: int = SEEDS, ranges: Sequence[tuple[float, float]] = RANGES,
               budgets: Sequence[int] = BUDGETS, grid_size: int = 13,
               ds: ldata.Dataset | None = None) -> list[dict[str, Any]]:
    """What lecopt's suggestion depends on, besides the resolution: the swept range of rates
    (at ``num_steps``), the seed (its spread, and the noise floor of the resolution move:
    three disjoint groups of ``seeds`` seeds at one resolution), and what the best constant
    rate depends on: the budget (a grid search at every budget of ``budgets``).

    Returns:
      Rows ``{"task", "kind": "range" | "seed noise" | "budget", ...}``: per range
      ``min_lr``, ``max_lr``, ``rate`` (the median over seeds), ``spread`` (max/min over
      seeds); ``"seed noise"`` (one row): ``group_rates`` (the median suggestion of seeds
      ``0..s-1``, ``s..2s-1``, ``2s..3s-1``) and ``move`` (their max/min); per budget
      ``epochs``, ``grid_best_rate``, ``grid_best_loss`` and ``suggestion_regret``, the
      regret of the suggestion of the default range (the first of ``ranges``) at that budget.
    """
    ds = ds if ds is not None else ldata.load("mnist-5k")
    x, y, xt, yt = _flat(ds)
    rows = []
    for task in tasks:
        model = lnn.MLP(features=task.features, batch_norm=task.batch_norm)
        picks = {}
        for lo, hi in ranges:
            res = _range_tests(task, model, x, y, [num_steps], seeds, lo, hi)[num_steps]
            picks[(lo, hi)] = res.suggestion
            rows.append({"task": task.name, "kind": "range", "min_lr": lo, "max_lr": hi,
                         "num_steps": num_steps, "rate": float(res.suggestion),
                         "spread": res.spread["lecopt"]})
        # The seed's own share of the resolution move: disjoint groups of ``seeds`` seeds at
        # ONE resolution; max/min of the group medians is what noise alone moves the median.
        many = _range_tests(task, model, x, y, [num_steps], 3 * seeds, *ranges[0])[num_steps]
        per_seed = many.seed_suggestions["lecopt"]
        groups = [lr_finder.geometric_median(per_seed[i : i + seeds])
                  for i in range(0, 3 * seeds, seeds)]
        rows.append({"task": task.name, "kind": "seed noise", "num_steps": num_steps,
                     "seeds": seeds, "group_rates": groups,
                     "move": float(max(groups) / min(groups))})
        default = picks[tuple(ranges[0])]
        for epochs in budgets:
            grid, at = _grid_and_rates(dataclasses.replace(task, epochs=epochs), model,
                                       (x, y, xt, yt), grid_size, [default])
            rows.append({"task": task.name, "kind": "budget", "epochs": epochs,
                         "grid_best_rate": grid.best_rate, "grid_best_loss": grid.best_loss,
                         "suggestion": default,
                         "suggestion_regret": float(at[default] / grid.best_loss)})
    return rows


def format_dependence(rows: Sequence[dict[str, Any]]) -> str:
    """:func:`dependence`'s rows as text, a block per task."""
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        rng = [r for r in mine if r["kind"] == "range"]
        rates = np.asarray([r["rate"] for r in rng])
        lines.append(f"{task}: suggestion over the range swept ({rng[0]['num_steps']} steps): "
                     + ", ".join(f"{r['min_lr']:.0e}..{r['max_lr']:g} -> {r['rate']:.3g} "
                                 f"(seeds {r['spread']:.2f}x)" for r in rng)
                     + f"; max/min {rates.max() / rates.min():.2f}x")
        for r in (r for r in mine if r["kind"] == "seed noise"):
            lines.append(f"{task}: seed noise at {r['num_steps']} steps (median of {r['seeds']} "
                         "seeds, three disjoint groups): " + ", ".join(
                             f"{v:.3g}" for v in r["group_rates"]) + f"; max/min {r['move']:.2f}x")
        lines.append(f"{task}: best constant rate over the budget: "
                     + ", ".join(f"{r['epochs']} ep -> {r['grid_best_rate']:.3g} (suggestion "
                                 f"{r['suggestion']:.3g}: regret {r['suggestion_regret']:.2f}x)"
                                 for r in mine if r["kind"] == "budget"))
    return "\n".join(lines)


CLAIM7 = {"features": (512, 512), "batch_size": 128, "momentum": 0.9, "epochs": 5,
          "min_lr": 1e-6, "max_lr": 10.0, "num_steps": 400, "seeds": 3,
          "grid": tuple(10.0 ** (-3.0 + 0.25 * np.arange(16)))}
"""Claim 7's fixed settings (as ``lecopt.experiments.learning_rates`` measures it): mnist-5k,
the lecture's 784-512-512-10 MLP, SGD with momentum 0.9, batch 128, 5 epochs at a constant
rate; range tests of 400 steps over 1e-6..10; grid 1e-3..10^0.75 a quarter-decade apart."""


def claim7(settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Claim 7 re-measured against grid search: the lecture's literal rule and lecopt's rule,
    each with its suggestion and the regret of the loss it trains to.

    Args:
      settings: overrides of :data:`CLAIM7` (for a smaller smoke run only; the claim's
        verdict uses the defaults).

    Returns:
      ``{"settings", "grid": {"rates", "final_loss", "best_rate", "best_loss"},
      "rules": {name: {"rate", "seed_rates", "spread", "final_loss", "regret"}},
      "verdicts": {"lecture", "lecopt"}}``; a verdict holds when the rule's regret is <= 1.25.
    """
    cfg = {**CLAIM7, **(settings or {})}
    task = Task("claim 7", tuple(cfg["features"]), False, "momentum", cfg["batch_size"],
                cfg["epochs"], 0.0)
    ds = ldata.load("mnist-5k")
    x, y, xt, yt = _flat(ds)
    model = lnn.MLP(features=task.features)
    res = _range_tests(task, model, x, y, [cfg["num_steps"]], cfg["seeds"], cfg["min_lr"],
                       cfg["max_lr"])[cfg["num_steps"]]
    picks = {"lecture": res.suggestions["lecture"], "lecopt": res.suggestions["lecopt"]}
    grid_rates = [float(r) for r in cfg["grid"]]
    extra = [r for r in picks.values() if math.isfinite(r)]
    final, _ = train.train_at_rates(model, OPTIMIZERS["momentum"], (x, y, xt, yt),
                                        grid_rates + extra, epochs=task.epochs,
                                        batch_size=task.batch_size, seed=0)
    g = final[: len(grid_rates)]
    best = int(np.argmin(g))
    at = dict(zip(extra, final[len(grid_rates):]))
    rules, verdicts = {}, {}
    for name, rate in picks.items():
        loss = float(at.get(rate, math.nan))
        regret = loss / float(g[best])
        rules[name] = {"rate": float(rate), "seed_rates": res.seed_suggestions[name].tolist(),
                       "spread": res.spread[name], "final_loss": loss, "regret": regret}
        verdicts[name] = bool(regret <= HIT)
    return {"settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
            "grid": {"rates": grid_rates, "final_loss": g.tolist(),
                     "best_rate": grid_rates[best], "best_loss": float(g[best])},
            "rules": rules, "verdicts": verdicts}


def section(quick: bool = False) -> dict[str, Any]:
    """The suite as a ``lecopt bench`` section: ``{"title", "table", "rows", "ratios",
    "notes", "figures"}``; ``suggestions`` are :func:`run`'s rows for :data:`TASKS` (the
    suite), ``held_out`` those for :data:`HELD_OUT_TASKS` (not in quick mode), ``table`` is
    :func:`format_table`'s text for each, ``figures`` holds the regret figure (:func:`plot`)
    of both as PNG bytes."""
    t0 = time.perf_counter()
    rows = run(quick=quick)
    seconds = time.perf_counter() - t0
    held = [] if quick else run(tasks=HELD_OUT_TASKS)
    held_seconds = time.perf_counter() - t0 - seconds
    s = summary(rows)
    tasks = QUICK_TASKS if quick else TASKS
    table = format_table(rows)
    if held:
        table += ("\n\nHeld-out tasks (added after lecopt's factor was chosen on the suite; "
                  "out of sample):\n" + format_table(held))
    ratios = {f"{rule} median regret": v["median_regret"] for rule, v in s.items()}
    ratios.update({f"held out: {rule} median regret": v["median_regret"]
                   for rule, v in (summary(held).items() if held else ())})
    return {
        "title": (f"LR range-test suggestions judged by grid search: {len(tasks)} tasks on "
                  f"mnist-5k{' (quick suite)' if quick else ''}"
                  f"{f' and {len(HELD_OUT_TASKS)} held out' if held else ''}, {SEEDS} seeds"),
        "table": table,
        "rows": [],
        "suggestions": rows,
        "held_out": held,
        "summary": s,
        "held_out_summary": summary(held) if held else {},
        "ratios": ratios,
        "notes": [
            f"device: {jax.devices()[0].device_kind}; wall time {seconds:.0f} s for the suite"
            + (f", {held_seconds:.0f} s for the held-out tasks" if held else ""),
            f"regret = final training loss at the suggested rate (exact) / grid-best loss; "
            f"hit: regret <= {HIT}",
        ],
        "figures": {"lr_suggest_regret.png": train.figure_png(plot(rows, held))},
    }


def dependence_section(quick: bool = False) -> dict[str, Any]:
    """:func:`dependence` as a ``lecopt bench`` section (``--only lr-dependence``); quick: the
    first task, two ranges and budgets 1 and 2 at 100 steps and one seed."""
    t0 = time.perf_counter()
    if quick:
        rows = dependence(DEPENDENCE_TASKS[:1], num_steps=100, seeds=1, ranges=RANGES[:2],
                          budgets=(1, 2))
    else:
        rows = dependence()
    return {
        "title": "What lecopt's suggestion depends on: the swept range, the seed, the budget",
        "table": format_dependence(rows),
        "rows": [],
        "dependence": rows,
        "notes": [f"device: {jax.devices()[0].device_kind}; wall time "
                  f"{time.perf_counter() - t0:.0f} s",
                  "regret at a budget: the final training loss at the suggestion (exact rate) "
                  "over the grid-best loss of that budget"],
    }
