"""Momentum in practice: SGD with momentum 0, 0.5, 0.9 and 0.99 on MNIST (claims 4 and 5).

The lecture ("Momentum in practice") trains its usual fully connected net (784-512-512-10,
ReLU) with SGD at different momenta ``phi`` and reports: "The higher momentum, the faster SGD
learns the weights on the training data, but if momentum is too large, the training and test
error fluctuates." Learning rate 0.03 and weight decay 0.001 are the chapter's standard
settings (the same as in the BatchNorm benchmark).

Metrics (pure functions, tested on known inputs):

* :func:`error_after` - the training error after ``k`` epochs;
* :func:`epochs_to` - the first epoch whose error is at or below a level;
* :func:`fluctuation` - the mean absolute epoch-to-epoch change of a curve (optionally of its
  residual around a straight line, so a steady downward trend does not count as noise).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lecopt.experiments import ClaimSpec, Context, Figure, Measured, Result, Step, run_steps
from lecopt.experiments._common import band, format_count, majority, seed_tally

ID = "mnist_momentum"
TITLE = "Momentum in practice: SGD with different momenta on MNIST"

SPEED = ClaimSpec(
    4, "mnist-momentum-speed",
    "The higher the momentum (0, 0.5, 0.9), the faster SGD lowers the training error on MNIST.")
FLUCTUATION = ClaimSpec(
    5, "mnist-momentum-fluctuation",
    "With too large a momentum (0.99) the training and test error fluctuate.")
CLAIMS = (SPEED, FLUCTUATION)

# The lecture's setting.
LEARNING_RATE = 0.03
WEIGHT_DECAY = 1e-3
MOMENTA = (0.0, 0.5, 0.9, 0.99)
SPEED_MOMENTA = (0.0, 0.5, 0.9)  # claim 4: the ordering is checked on these
TOO_LARGE, REFERENCE = 0.99, 0.9  # claim 5: phi = 0.99 against phi = 0.9
BATCH_SIZE = 128

# Claim 4: training error after SPEED_EPOCHS epochs strictly decreasing in phi, per seed;
# reproduced when that holds for a majority of seeds. (Full: epoch 3; quick: epoch 2.)
SPEED_EPOCHS = {"full": 3, "quick": 2}
# Also reported (not part of the rule): epochs to reach this training error.
SPEED_LEVEL = 0.05
# Claim 5: fluctuation = mean |e_{t+1} - e_t| of the detrended error curve over the second half
# of the epochs; phi = 0.99 must fluctuate at least FLUCT_RATIO times as much as phi = 0.9, for
# the training AND the test error, on a majority of seeds.
FLUCT_RATIO = 1.5
FLUCT_FROM = 0.5  # fraction of the epochs skipped before measuring fluctuation

SETTINGS = {
    "full": {"features": (512, 512), "epochs": 30, "seeds": 3},
    "quick": {"features": (128, 128), "epochs": 12, "seeds": 3},
}


# ---------------------------------------------------------------------------------- metrics


def error_after(errors: Sequence[float], k: int) -> float:
    """The error after ``k`` epochs, ``errors[k - 1]`` (``errors[t]`` is measured after epoch t+1).

    Args:
      errors: per-epoch error curve.
      k: number of epochs, 1 <= k <= len(errors).

    Returns:
      The error after epoch ``k``.
    """
    errors = np.asarray(errors, dtype=np.float64)
    if not 1 <= k <= errors.size:
        raise ValueError(f"k={k} must be in [1, {errors.size}] (the number of epochs recorded)")
    return float(errors[k - 1])


def epochs_to(errors: Sequence[float], level: float) -> float:
    """The first epoch (1-based) after which the error is at or below ``level``.

    Args:
      errors: per-epoch error curve; ``errors[t]`` is measured after epoch ``t + 1``.
      level: the target error.

    Returns:
      The epoch count (a float so that "never" can be ``math.inf``).

    Example:
      >>> epochs_to([0.5, 0.2, 0.1, 0.15], 0.2)
      2.0
    """
    errors = np.asarray(errors, dtype=np.float64)
    if errors.ndim != 1:
        raise ValueError(f"errors must be a 1-D curve; got shape {errors.shape}")
    hit = np.flatnonzero(errors <= level)
    return float(hit[0] + 1) if hit.size else math.inf


def fluctuation(errors: Sequence[float], detrend: bool = False) -> float:
    """Mean absolute epoch-to-epoch change of a curve, ``mean_t |e_{t+1} - e_t|``.

    With ``detrend=True`` the least-squares straight line through the curve is removed first,
    so a steady decrease (learning) does not count as fluctuation: the result is
    ``mean_t |e_{t+1} - e_t - b|`` with ``b`` the fitted slope per epoch.

    Args:
      errors: a 1-D curve with at least 2 points.
      detrend: remove the fitted linear trend first.

    Returns:
      The mean absolute change (same units as ``errors``).

    Example:
      >>> round(fluctuation([0.1, 0.3, 0.1, 0.3]), 12)
      0.2
    """
    e = np.asarray(errors, dtype=np.float64)
    if e.ndim != 1 or e.size < 2:
        raise ValueError(f"errors must be a 1-D curve of at least 2 points; got shape {e.shape}")
    if detrend:
        t = np.arange(e.size, dtype=np.float64)
        slope, intercept = np.polyfit(t, e, 1)
        e = e - (slope * t + intercept)
    return float(np.mean(np.abs(np.diff(e))))


# ---------------------------------------------------------------------------------- the run


def _seed_speed(train_err: dict[float, np.ndarray], k: int) -> tuple[bool, list[float]]:
    """Claim 4 on one seed: training error after ``k`` epochs strictly decreasing in phi."""
    errs = [error_after(train_err[phi], k) for phi in SPEED_MOMENTA]
    return bool(all(a > b for a, b in zip(errs, errs[1:]))), errs


def _tail(curve: np.ndarray) -> np.ndarray:
    return curve[int(len(curve) * FLUCT_FROM):]


def _seed_fluctuation(curves: dict[str, dict[float, np.ndarray]], epochs: int
                      ) -> tuple[bool, dict[str, Any]]:
    """Claim 5 on one seed: phi=0.99 fluctuates FLUCT_RATIO times as much as phi=0.9."""
    out: dict[str, Any] = {}
    ok = True
    for which in ("train", "test"):
        big, ref = curves[which][TOO_LARGE], curves[which][REFERENCE]
        if len(big) < epochs or len(ref) < epochs:
            # A run that stopped (non-finite loss) has no later epochs to measure.
            out[which] = {"diverged": True}
            ok = False
            continue
        f_big = fluctuation(_tail(big), detrend=True)
        f_ref = fluctuation(_tail(ref), detrend=True)
        ratio = f_big / f_ref if f_ref > 0 else math.inf
        out[which] = {"fluct_0.99": f_big, "fluct_0.9": f_ref, "ratio": ratio}
        ok &= ratio >= FLUCT_RATIO
    return bool(ok), out


@dataclasses.dataclass
class Runs:
    """The error curves of the sweep over momenta and seeds.

    Attributes:
      errors: ``errors[seed][which][phi]``, ``which`` in ``("train", "test")``: the per-epoch
        error curve of one run (shorter when the run stopped on a non-finite loss).
      stopped: ``"phi=...,seed=..."`` -> where a run stopped, for the runs that did.
      settings: the settings of the sweep (features, epochs, seeds, ...).
    """

    errors: dict[int, dict[str, dict[float, np.ndarray]]]
    stopped: dict[str, Any]
    settings: dict[str, Any]

    @property
    def seeds(self) -> list[int]:
        return list(self.errors)

    def curves(self, which: str, phi: float) -> list[np.ndarray]:
        """One error curve per seed."""
        return [self.errors[s][which][phi] for s in self.seeds]


def train_momenta(ctx: Context) -> Runs:
    """SGD at every momentum in MOMENTA on every seed, through one :func:`lecopt.train.sweep`."""
    from lecopt import nn, optimizers, train

    cfg = SETTINGS["quick" if ctx.quick else "full"]
    seeds = ctx.seeds(cfg["seeds"])
    ds = ctx.data()
    model = nn.MLP(features=tuple(cfg["features"]), num_classes=ds.num_classes)

    def make_optimizer(momentum):
        return optimizers.sgd(LEARNING_RATE, momentum=momentum, weight_decay=WEIGHT_DECAY)

    runs = train.sweep(model, make_optimizer, {"momentum": list(MOMENTA)}, ds,
                       epochs=cfg["epochs"], seeds=seeds, progress=ctx.progress,
                       batch_size=BATCH_SIZE)
    errors: dict[int, dict[str, dict[float, np.ndarray]]] = {
        s: {"train": {}, "test": {}} for s in seeds}
    stopped: dict[str, Any] = {}
    for r in runs:
        phi = float(r.setting["momentum"])
        errors[r.seed]["train"][phi] = np.asarray(r.history.train_error, np.float64)
        errors[r.seed]["test"][phi] = np.asarray(r.history.test_error, np.float64)
        if r.history.stopped is not None:
            stopped[f"phi={phi:g},seed={r.seed}"] = r.history.stopped
    settings = {"features": tuple(cfg["features"]), "epochs": cfg["epochs"], "seeds": seeds,
                "learning_rate": LEARNING_RATE, "weight_decay": WEIGHT_DECAY,
                "momenta": MOMENTA, "batch_size": BATCH_SIZE, "data": ds.name,
                "speed_epochs": SPEED_EPOCHS["quick" if ctx.quick else "full"]}
    return Runs(errors=errors, stopped=stopped, settings=settings)


def speed(runs: Runs) -> Measured:
    """Claim 4: the training error after a few epochs, ordered by momentum on each seed."""
    k, seeds = runs.settings["speed_epochs"], runs.seeds
    per_seed = {s: _seed_speed(runs.errors[s]["train"], k) for s in seeds}
    flags = [ok for ok, _ in per_seed.values()]
    mean_k = {phi: float(np.mean([error_after(c, k) for c in runs.curves("train", phi)]))
              for phi in SPEED_MOMENTA}
    reach = {phi: [epochs_to(c, SPEED_LEVEL) for c in runs.curves("train", phi)]
             for phi in SPEED_MOMENTA}
    tally = seed_tally(flags)
    return Measured(
        evidence=(f"training error after {k} epochs (mean of {len(seeds)} seeds): "
                  + ", ".join(f"phi={phi:g}: {100 * mean_k[phi]:.2f}%" for phi in SPEED_MOMENTA)
                  + f"; strictly ordered on {tally['held']}/{len(seeds)} seeds; epochs to reach "
                  f"{100 * SPEED_LEVEL:g}% training error (per seed): "
                  + ", ".join(f"phi={phi:g}: " + "/".join(format_count(x) for x in reach[phi])
                              for phi in SPEED_MOMENTA)
                  + "."),
        threshold=(f"per seed, training error after {k} epochs strictly decreasing over phi = "
                   f"0, 0.5, 0.9; reproduced when that holds on a majority of seeds (epochs to "
                   f"{100 * SPEED_LEVEL:g}% reported, not part of the rule)"),
        holds=majority(flags),
        numbers={"epoch": k, "train_error_after_k": {str(s): v[1] for s, v in per_seed.items()},
                 "epochs_to_level": {f"{phi:g}": reach[phi] for phi in SPEED_MOMENTA},
                 "level": SPEED_LEVEL},
        seeds=tally,
        data=runs,
    )


def fluctuation_at_large_momentum(runs: Runs) -> Measured:
    """Claim 5: the detrended epoch-to-epoch change at phi = 0.99 against phi = 0.9."""
    epochs, seeds = runs.settings["epochs"], runs.seeds
    fl = {s: _seed_fluctuation(runs.errors[s], epochs) for s in seeds}
    flags = [ok for ok, _ in fl.values()]
    tally = seed_tally(flags)
    first = int(epochs * FLUCT_FROM) + 1

    def joined(which: str, key: str, scale: float, fmt: str) -> str:
        vals = [fl[s][1][which][key] for s in seeds if key in fl[s][1][which]]
        return "/".join(format(scale * v, fmt) for v in vals) if vals else "n/a"

    def compared(which: str) -> str:
        return (f"phi=0.99 {joined(which, 'fluct_0.99', 100, '.2f')} vs phi=0.9 "
                f"{joined(which, 'fluct_0.9', 100, '.2f')} (ratio "
                f"{joined(which, 'ratio', 1, '.1f')})")

    diverged = [s for s in seeds if any(fl[s][1][w].get("diverged") for w in ("train", "test"))]
    return Measured(
        evidence=(f"mean |epoch-to-epoch change| of the detrended error, epochs {first}-{epochs}"
                  f", per seed, in percentage points: train {compared('train')}; test "
                  f"{compared('test')}; held on {tally['held']}/{len(seeds)} seeds"
                  + (f"; runs stopped by a non-finite loss: {runs.stopped}" if runs.stopped
                     else "")
                  + (f"; seeds {diverged} counted as not held (phi=0.99 or 0.9 diverged)"
                     if diverged else "") + "."),
        threshold=(f"per seed, the fluctuation (mean |e_t+1 - e_t| of the error curve minus its "
                   f"least-squares line, over the second half of the epochs) at phi=0.99 is >= "
                   f"{FLUCT_RATIO} x that at phi=0.9 for both training and test error; "
                   "reproduced on a majority of seeds"),
        holds=majority(flags),
        numbers={"per_seed": {str(s): v[1] for s, v in fl.items()}, "stopped": runs.stopped},
        seeds=tally,
    )


def plot_error_curves(runs: Runs) -> Figure:
    """Training and test error per epoch for every momentum (mean over seeds, min-max band)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs, features, seeds = (runs.settings[k] for k in ("epochs", "features", "seeds"))
    colors = {0.0: "black", 0.5: "tab:blue", 0.9: "tab:red", 0.99: "tab:orange"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained", sharey=False)
    for ax, which, title in ((axes[0], "train", "Training error (mean over the epoch's "
                              "minibatches)"), (axes[1], "test", "Test error (after each epoch)")):
        for phi in MOMENTA:
            band(ax, runs.curves(which, phi), colors[phi], f"phi = {phi:g}", scale=100.0)
        ax.set_xlabel("epoch")
        ax.set_ylabel("classification error (%)")
        ax.set_title(title, fontsize=10)
        ax.set_xlim(1, epochs)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(title="momentum")
    # The first epochs of small momenta sit far above the rest; show where the curves differ.
    top = max(float(np.median([100.0 * c[min(1, len(c) - 1)]
                               for c in runs.curves("train", 0.0)])), 5.0)
    axes[0].set_ylim(0, min(100.0, 1.3 * top))
    axes[1].set_ylim(0, min(100.0, 1.3 * max(top, 10.0)))
    arch = "-".join(str(f) for f in (784, *features, 10))
    fig.suptitle(f"SGD with momentum phi on MNIST ({arch} MLP, alpha = {LEARNING_RATE}, "
                 f"weight decay {WEIGHT_DECAY}); line: mean of {len(seeds)} seeds, band: "
                 "min-max", fontsize=11)
    return Figure.from_matplotlib(
        fig, "mnist_momentum",
        "Training (left) and test (right) error per epoch of SGD with momentum phi (mean over "
        "seeds, band min-max). Higher momentum lowers the training error faster; with phi = "
        "0.99 both curves jump from epoch to epoch.")


def run(ctx: Context) -> Result:
    """Claims 4 and 5, from one sweep of SGD at momenta 0, 0.5, 0.9, 0.99 over seeds."""
    runs = train_momenta(ctx)
    return run_steps(ctx, ID, [
        Step(functools.partial(speed, runs), SPEED, plot_error_curves),
        Step(functools.partial(fluctuation_at_large_momentum, runs), FLUCTUATION),
    ], settings={k: v for k, v in runs.settings.items() if k != "speed_epochs"})
