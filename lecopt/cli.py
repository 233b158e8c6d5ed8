"""The ``lecopt`` command: ``reproduce``, ``train``, ``lr-find``, ``bench`` and ``app``.

Every bad option gives one line naming the option and what is allowed, and argparse's exit
code 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lecopt.data import DATASETS

OPTIMIZER_NAMES = ("sgd", "adam", "rmsprop", "adagrad")
SCHEDULE_HELP = (
    "a learning-rate schedule over training steps: 'constant', 'linear:END[:STEPS]' (linear "
    "decay from --lr to END over STEPS, default all steps), 'triangular:BASE:STEP_SIZE', "
    "'triangular2:BASE:STEP_SIZE' (cyclical between BASE and --lr), 'cosine:MIN[:PERIOD]', "
    "'sgdr:MIN:PERIOD[:MULT[:DECAY]]' (warm restarts), "
    "'one_cycle[:PCT_START[:DIV_FACTOR[:FINAL_DIV_FACTOR]]]' (Smith's one cycle over all steps, "
    "peak --lr; defaults 0.3, 25, 1e4, as PyTorch's OneCycleLR), "
    "'warmup:STEPS[:SCHEDULE]' (linear warm-up from 0 to --lr over STEPS, then SCHEDULE, one "
    "of the above, over the remaining steps; default constant), e.g. 'warmup:100:cosine:0'"
)


# --------------------------------------------------------------------------------------------
# Argument types: each rejects a bad value with one line that names what is allowed.


def _number(kind: str, lo: float, hi: float = math.inf, lo_open: bool = False,
            hi_open: bool = False, integer: bool = False) -> Callable[[str], Any]:
    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and (
            value < hi if hi_open else value <= hi)
        if not ok:
            raise argparse.ArgumentTypeError(f"{text!r} is out of range: expected {kind}")
        return value

    return parse


nonneg_float = _number("a finite number >= 0", 0.0)
pos_float = _number("a finite number > 0", 0.0, lo_open=True)
unit_float = _number("a number in [0, 1)", 0.0, 1.0, hi_open=True)
pos_int = _number("an integer >= 1", 1, integer=True)
nonneg_int = _number("an integer >= 0", 0, integer=True)


def _features(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of layer widths, e.g. 512,512") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every layer width must be >= 1")
    return out


def _only(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def make_schedule(spec: str, lr: float, total_steps: int):
    """Builds a schedule from the ``--schedule`` text (see SCHEDULE_HELP); ValueError if bad."""
    from lecopt import schedules

    name, *args = spec.split(":")
    if name == "warmup":
        return _warmup(spec, args, lr, total_steps)
    try:
        nums = [float(a) for a in args]
    except ValueError:
        raise ValueError(f"--schedule {spec!r}: the parameters must be numbers") from None

    def need(lo: int, hi: int) -> None:
        if not lo <= len(nums) <= hi:
            raise ValueError(f"--schedule {spec!r}: {name} takes {lo}-{hi} parameters; "
                             f"{SCHEDULE_HELP}")

    if name == "constant":
        need(0, 0)
        return schedules.constant(lr)
    if name == "linear":
        need(1, 2)
        steps = int(nums[1]) if len(nums) > 1 else total_steps
        return schedules.linear_decay(lr, nums[0], steps)
    if name in ("triangular", "triangular2"):
        need(2, 2)
        return getattr(schedules, name)(nums[0], lr, int(nums[1]))
    if name == "cosine":
        need(1, 2)
        return schedules.cosine_annealing(lr, nums[0], int(nums[1]) if len(nums) > 1
                                          else total_steps)
    if name == "sgdr":
        need(2, 4)
        mult = nums[2] if len(nums) > 2 else 1
        decay = nums[3] if len(nums) > 3 else 1.0
        return schedules.sgdr(lr, nums[0], int(nums[1]), mult, decay)
    if name == "one_cycle":
        need(0, 3)
        defaults = (0.3, 25.0, 1e4)
        pct, div, final_div = (*nums, *defaults[len(nums):])
        if total_steps < 2:
            raise ValueError(f"--schedule {spec!r}: one_cycle needs >= 2 training steps")
        return schedules.one_cycle(lr, total_steps, pct, div, final_div)
    raise ValueError(f"--schedule {spec!r}: unknown schedule {name!r}; {SCHEDULE_HELP}")


def _warmup(spec: str, args: list[str], lr: float, total_steps: int):
    from lecopt import schedules

    try:
        steps = int(args[0])
    except (IndexError, ValueError):
        raise ValueError(f"--schedule {spec!r}: warmup takes the number of warm-up steps "
                         f"first, an integer; {SCHEDULE_HELP}") from None
    if not 1 <= steps < total_steps:
        raise ValueError(f"--schedule {spec!r}: warmup steps must be in [1, {total_steps}) "
                         f"(the training steps)")
    rest = ":".join(args[1:]) or "constant"
    if rest.split(":")[0] == "warmup":
        raise ValueError(f"--schedule {spec!r}: a warm-up cannot follow a warm-up")
    then = make_schedule(rest, lr, total_steps - steps)
    return schedules.warmup(lr, steps, then)


def build_optimizer(name: str, learning_rate: Any, momentum: float, weight_decay: float,
                    nesterov: bool = False):
    """The optimizer named on the command line (momentum, Nesterov and weight decay apply to
    sgd), from :data:`lecopt.registry.OPTIMIZERS`."""
    from lecopt import registry

    if name == "sgd":
        return registry.make_optimizer("nesterov" if nesterov else "momentum", learning_rate,
                                       momentum, weight_decay=weight_decay)
    return registry.make_optimizer(name, learning_rate)


# --------------------------------------------------------------------------------------------
# Subcommands.


def _cmd_bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from lecopt import bench

    sections = args.only or list(bench.DEFAULT_SECTIONS)
    for s in sections:
        if s not in bench.SECTIONS:
            parser.error(f"--only: unknown section {s!r}; choose from {', '.join(bench.SECTIONS)}")
    bench.run(sections, quick=args.quick, json_path=args.json, out_dir=args.out)
    if args.json:
        print(f"wrote {args.json}")
    return 0


def _load_data(args, parser):
    from lecopt import data

    try:
        return data.load(args.data, data_dir=args.data_dir)
    except (FileNotFoundError, ValueError) as e:
        parser.error(f"--data {args.data}: {_one_line(e)}")


def _one_line(e: Exception) -> str:
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip())


def _cmd_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.local_processes:
        if args.coordinator or args.num_processes or args.process_id is not None:
            parser.error("--local-processes starts the processes itself: give it without "
                         "--coordinator, --num-processes and --process-id")
        from lecopt import distributed

        return distributed.launch_local(_without_option(args.argv, "--local-processes"),
                                        args.local_processes)
    import matplotlib.pyplot as plt

    from lecopt import nn, train

    ds = _load_data(args, parser)
    steps_per_epoch = len(ds.x_train) // args.batch_size
    if steps_per_epoch < 1:
        parser.error(f"--batch-size {args.batch_size}: larger than the {len(ds.x_train)} "
                     "training examples")
    lr: Any = args.lr
    if args.schedule:
        try:
            lr = make_schedule(args.schedule, args.lr, steps_per_epoch * args.epochs)
        except ValueError as e:
            parser.error(str(e))
    tx = build_optimizer(args.optimizer, lr, args.momentum, args.weight_decay, args.nesterov)
    model = nn.MLP(features=args.features, num_classes=ds.num_classes,
                   batch_norm=args.batch_norm)
    out = Path(args.out)
    ckpt = str(out / "checkpoints") if (args.resume or args.checkpoint_every) else None
    # Before joining the other processes: once joined, process 0 may write checkpoints.
    if ckpt and not args.resume and Path(ckpt).exists() and any(Path(ckpt).iterdir()):
        parser.error(f"--out {out}: holds checkpoints from an earlier run; pass --resume to "
                     "continue it or choose another --out")
    mesh = _join_processes(args, parser)
    from lecopt import distributed

    main_process = distributed.is_main_process()
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if args.checkpoint_every:
        kwargs["checkpoint_every"] = args.checkpoint_every
    _, history = train.fit(model, tx, ds, epochs=args.epochs, batch_size=args.batch_size,
                           seed=args.seed, checkpoint_dir=ckpt, progress=not args.quiet,
                           mesh=mesh, **kwargs)
    if not main_process:  # process 0 writes the results and reports
        return 0
    hist = history.to_dict()
    hist["settings"] = {k: v for k, v in vars(args).items() if k not in ("func", "argv")}
    (out / "history.json").write_text(json.dumps(hist, indent=1, default=train.to_jsonable))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    train.plot_history(history, ax=axes)
    fig.suptitle(f"{args.optimizer} on {args.data}: lr={args.lr:g}"
                 + (f", momentum={args.momentum:g}" if args.optimizer == "sgd" else "")
                 + (", BatchNorm" if args.batch_norm else ""))
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)
    last = {k: hist[k][-1] for k in ("train_loss", "train_error", "test_loss", "test_error")
            if k in hist and hist[k]}
    print("final: " + ", ".join(f"{k}={v:.4f}" for k, v in last.items()))
    print(f"wrote {out / 'history.json'} and {out / 'curves.png'}")
    return 0


def _cmd_lr_find(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np

    from lecopt import lr_finder, nn, schedules, train

    if args.min_lr >= args.max_lr:
        parser.error(f"--min-lr {args.min_lr:g} must be smaller than --max-lr {args.max_lr:g}")
    ds = _load_data(args, parser)
    if args.batch_size > len(ds.x_train):
        parser.error(f"--batch-size {args.batch_size}: larger than the training set")
    model = nn.MLP(features=args.features, num_classes=ds.num_classes,
                   batch_norm=args.batch_norm)

    def make_tx(lr):
        return build_optimizer(args.optimizer, lr, args.momentum, args.weight_decay)

    # What `lecopt train` with this seed trains: its initial state, its loss, the minibatches
    # of its first epoch.
    state = train.init_state(model, make_tx(args.max_lr), ds.x_train, seed=args.seed)
    order = train.batch_order(args.seed, 0, len(ds.x_train), args.batch_size)
    batches = (jnp.asarray(ds.x_train)[order], jnp.asarray(ds.y_train)[order])
    params: Any = state.params
    seeds = None
    if args.seeds > 1:
        # Seeds args.seed .. args.seed + N - 1, one vmapped program: each seed its own
        # initialisation and minibatch order (lr_range_test's seeds).
        x1 = jnp.asarray(ds.x_train[:1])
        seeds = list(range(args.seed, args.seed + args.seeds))
        params = lambda key: model.init(key, x1, train=False)["params"]
    result = lr_finder.lr_range_test(train.loss_function(model), params, batches, make_tx,
                                     min_lr=args.min_lr, max_lr=args.max_lr,
                                     num_steps=args.steps, model_state=state.batch_stats,
                                     seeds=seeds)
    suggestion = float(result.suggestion)
    print(f"suggested learning rate: {suggestion:.3g}"
          + (f" (median of {args.seeds} seeds, spread max/min "
             f"{result.spread['lecopt']:.2f}x)" if seeds else ""))
    for k, v in result.suggestions.items():
        line = f"  {k}: {float(v):.3g}"
        if seeds:
            each = ", ".join(f"{r:.3g}" for r in np.asarray(result.seed_suggestions[k]))
            line += f"  (seeds: {each}; spread {result.spread[k]:.2f}x)"
        print(line)
    stopped = np.asarray(result.stopped_at).reshape(-1)
    print("stopped at step " + ", ".join(str(int(s)) for s in stopped) + f" of {args.steps}")
    grid = None
    if args.validate:
        grid = _validate(args, model, make_tx, ds, result, suggestion)
    if math.isfinite(suggestion) and suggestion > 0:
        total = args.epochs * (len(ds.x_train) // args.batch_size)
        plan = schedules.one_cycle_from_range_test(suggestion, max(total, 2))
        print(f"one-cycle plan for {args.epochs} epochs ({total} steps): rate "
              f"{plan.initial_lr:.3g} -> {plan.max_lr:.3g} at step {plan.peak_step:g} -> "
              f"{plan.min_lr:.3g}; its momentum (schedules.one_cycle_momentum) 0.95 -> 0.85 -> "
              "0.95 in code, a constant --momentum on the command line")
        print(f"  lecopt train --optimizer {args.optimizer} --lr {plan.max_lr:.3g} --epochs "
              f"{args.epochs} --batch-size {args.batch_size} --schedule one_cycle")
    if grid is not None:
        fig = lr_finder.plot(result, grid)
    else:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        result.plot(ax=ax)
    fig.axes[0].set_title(f"LR range test: {args.optimizer}"
                          + (f" (momentum {args.momentum:g})" if args.optimizer == "sgd" else "")
                          + (" + BatchNorm" if args.batch_norm else "") + f" on {args.data}"
                          + (f", {args.seeds} seeds" if seeds else ""))
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    print(f"wrote {args.out}")
    return 0


GRID_DECADES_BELOW, GRID_DECADES_ABOVE = 2.0, 1.0
"""``lr-find --validate``'s grid: a quarter-decade apart from 100x below lecopt's suggestion
to 10x above it (13 rates)."""


def _validate(args, model, make_tx, ds, result, suggestion):
    import numpy as np

    from lecopt import train

    if not (math.isfinite(suggestion) and suggestion > 0):
        print("validate: no suggestion to centre the grid on; skipped")
        return None
    k = np.arange(-4 * GRID_DECADES_BELOW, 4 * GRID_DECADES_ABOVE + 1)
    rates = suggestion * 10.0 ** (0.25 * k)
    grid = train.grid_search(model, make_tx, ds, rates=rates, epochs=args.epochs,
                             batch_size=args.batch_size, seed=args.seed)
    rows = train.validate_suggestions(result, grid)
    print(f"grid search: {len(rates)} constant rates {rates[0]:.3g} .. {rates[-1]:.3g}, "
          f"{args.epochs} epochs each: best {grid.best_rate:.3g} (final training loss "
          f"{grid.best_loss:.4f})"
          + ("; the best is at the grid's end, widen it" if grid.best_rate in
             (rates[0], rates[-1]) else ""))
    print(f"  {'rule':<22} {'rate':>9} {'final loss':>11} {'regret':>8}")
    for r in rows:
        loss = f"{r['final_loss']:.4f}" if math.isfinite(r["final_loss"]) else "diverged"
        print(f"  {r['rule']:<22} {r['rate']:9.3g} {loss:>11} {r['regret']:7.3f}x")
    return grid


def _cmd_reproduce(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from lecopt.experiments import runner

    try:
        return runner.main(args.out, quick=args.quick, only=args.only, data=args.data,
                           data_dir=args.data_dir, seed=args.seed,
                           figures_dir=args.figures_dir, progress=not args.no_progress)
    except runner.UsageError as e:
        parser.error(str(e))


def _cmd_app(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from lecopt import app

    return app.run(args)


# --------------------------------------------------------------------------------------------
# Parser.


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", choices=DATASETS, default="mnist-5k",
                   help="data set (mnist-5k is embedded; the others read IDX files)")
    p.add_argument("--data-dir", default=None,
                   help="folder with the IDX files for mnist/fashion-mnist ($LECOPT_DATA)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--optimizer", choices=OPTIMIZER_NAMES, default="sgd")
    p.add_argument("--momentum", type=unit_float, default=0.9, help="phi for sgd, in [0, 1)")
    p.add_argument("--weight-decay", type=nonneg_float, default=1e-3,
                   help="L2 weight decay lambda for sgd, >= 0")
    p.add_argument("--batch-norm", action="store_true",
                   help="BatchNorm before each hidden nonlinearity")
    p.add_argument("--features", type=_features, default=(512, 512),
                   help="hidden layer widths, comma-separated (default 512,512)")
    p.add_argument("--batch-size", type=pos_int, default=128)
    p.add_argument("--seed", type=nonneg_int, default=0)


def _add_process_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "several processes", "one process per host; each gets the same command with its own "
        "--process-id (or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID); "
        "--out must be a folder all of them share")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="address of process 0 (it listens there)")
    g.add_argument("--num-processes", type=pos_int, default=None, metavar="N")
    g.add_argument("--process-id", type=nonneg_int, default=None, metavar="I",
                   help="this process's index, 0 .. N-1")
    g.add_argument("--init-timeout", type=pos_float, default=60.0, metavar="S",
                   help="seconds to wait for every process to join (default 60); also the "
                        "time after which a process that stopped answering counts as dead")
    g.add_argument("--local-processes", type=pos_int, default=None, metavar="N",
                   help="start N processes of this command on this machine (127.0.0.1, 2 "
                        "simulated CPU devices each) and wait for them")


def _without_option(argv: Sequence[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` / ``option=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == option:
            skip = True
        elif not a.startswith(option + "="):
            out.append(a)
    return out


def _join_processes(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The mesh over every process's devices if this is one process of several, else None."""
    import os

    from lecopt import distributed

    several = (args.coordinator or args.num_processes or args.process_id is not None
               or os.environ.get(distributed.ENV_COORDINATOR))
    if not several:
        return None
    try:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                               timeout_s=args.init_timeout)
    except (ValueError, TypeError) as e:
        parser.error(_one_line(e))
    import jax
    import numpy as np
    from jax.sharding import Mesh

    if args.batch_size % len(jax.devices()):
        parser.error(f"--batch-size {args.batch_size} must be divisible by the "
                     f"{len(jax.devices())} devices of the {jax.process_count()} processes")
    return Mesh(np.array(jax.devices()), ("data",))


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (plus a pointer to ``--help``)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n(see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lecopt",
        description="The advanced-optimization lecture, reproduced with JAX.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("reproduce", help="re-run every experiment of the lecture; write a report")
    p.add_argument("--quick", action="store_true", help="small settings (about 3 minutes)")
    p.add_argument("--out", default="results", help="output folder (default results/)")
    p.add_argument("--only", type=_only, default=None,
                   help="comma-separated claim or experiment ids to run")
    _add_data_args(p)
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--figures-dir", default=None,
                   help="also copy the README's figures into this folder (e.g. docs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser("train", help="train the lecture's MLP and write its curves")
    _add_data_args(p)
    _add_model_args(p)
    p.add_argument("--lr", type=nonneg_float, default=0.03, help="learning rate alpha >= 0")
    p.add_argument("--nesterov", action="store_true", help="Nesterov momentum (sgd)")
    p.add_argument("--epochs", type=pos_int, default=10)
    p.add_argument("--schedule", default=None, help=SCHEDULE_HELP)
    p.add_argument("--out", default="train-out", help="output folder")
    p.add_argument("--resume", action="store_true",
                   help="resume from the newest checkpoint in OUT/checkpoints")
    p.add_argument("--checkpoint-every", type=pos_int, default=None,
                   help="save a checkpoint every N steps (and at the end)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_process_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("lr-find", help="learning-rate range test on the lecture's MLP")
    _add_data_args(p)
    _add_model_args(p)
    p.add_argument("--min-lr", type=pos_float, default=1e-6)
    p.add_argument("--max-lr", type=pos_float, default=10.0)
    p.add_argument("--steps", type=_number("an integer >= 2", 2, integer=True), default=100)
    p.add_argument("--seeds", type=pos_int, default=1,
                   help="range tests over N seeds (--seed, --seed+1, ...) in one vmapped "
                        "program; prints the median suggestion and the spread")
    p.add_argument("--validate", action="store_true",
                   help="grid search of constant rates (13, a quarter-decade apart around the "
                        "suggestion) for --epochs; prints each rule's regret")
    p.add_argument("--epochs", type=pos_int, default=3,
                   help="training budget for --validate and the one-cycle plan (default 3)")
    p.add_argument("--out", default="lr-find.png", help="figure file")
    p.set_defaults(func=_cmd_lr_find)

    p = sub.add_parser("bench", help="time lecopt against optax, Flax (and torch if present)")
    p.add_argument("--quick", action="store_true", help="fewer rounds")
    p.add_argument("--only", type=_only, default=None,
                   help="comma-separated sections: updates, lr, nn, train, schedules, nnx, "
                        "lr-suggest, lr-dependence (default: all but lr-suggest, the "
                        "minutes-long suite of range-test suggestions judged by grid search, "
                        "and lr-dependence, what the suggestion depends on)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--out", default="bench-out", metavar="DIR",
                   help="folder for the sections' figures (default bench-out/)")
    p.set_defaults(func=_cmd_bench)

    from lecopt import app

    p = sub.add_parser("app", help="serve the lecture's explorers as a web page (lecopt[app])")
    app.add_arguments(p)
    p.set_defaults(func=_cmd_app)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # The command writes figures to files: no window, whatever the environment says. Only the
    # front end chooses the backend; the library never does.
    import matplotlib

    matplotlib.use("Agg")
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    sub = parser._subparsers._group_actions[0].choices[args.command]
    return int(args.func(args, sub) or 0)


if __name__ == "__main__":
    sys.exit(main())
