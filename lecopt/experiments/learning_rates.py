"""Learning rates: the range test, linear decay, cyclical rates and warm restarts (claims 7-10).

The lecture ("Learning Rates") makes four checkable statements:

7. The learning-rate range test: start very low, raise the rate after every minibatch, plot the
   loss; it first barely moves, then declines steeply, then blows up, and "a good learning rate
   is one that results in a steep decline in the loss". Here :func:`lecopt.lr_finder.lr_range_test`
   runs on the lecture's MLP (784-512-512-10, SGD with momentum 0.9); the lecture's rule read
   literally (:func:`lecopt.lr_finder.lecture_rule`, the steepest decline) and lecopt's rule
   (:func:`lecopt.lr_finder.lecopt_rule`) are each judged by a grid search of constant rates
   (:func:`lecopt.train.grid_search`, :func:`lecopt.train.validate_suggestions`): the loss their
   exact rate trains to over the grid-best loss (the regret). One claim, two verdicts: the
   claim's (the lecture's rule) and, in its evidence and numbers, lecopt's rule's.
8. Linear decay to a floor, ``alpha_t = (1 - t/tau) alpha_0 + (t/tau) alpha_tau`` for
   ``t <= tau`` and ``alpha_tau`` after, with the lecture's table for ``tau = 4``.
9. Cyclical rates: Smith's "triangular" and "triangular2" (the range cut in half after each
   cycle).
10. Cosine annealing with warm restarts (Loshchilov & Hutter): the rate jumps back up at the
    restarts, whose steps follow a geometric series when the cycles grow.

Metrics (pure NumPy functions, tested on known inputs):

* :func:`phases` - plateau, steepest decline and blow-up of a range-test curve;
* :func:`cycle_extrema` - peak and trough (values and steps) of every complete cycle;
* :func:`restart_steps` - the steps at which a schedule jumps up;
* :func:`ulps` - the distance between two numbers in units in the last place.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lecopt.experiments import ClaimSpec, Context, Figure, Measured, Result, Step, run_steps
from lecopt.experiments._common import majority, seed_tally

ID = "learning_rates"
TITLE = "Learning rates: range test, linear decay, cyclical rates and warm restarts"

RANGE_TEST = ClaimSpec(
    7, "lr-range-test",
    "LR range test: the loss first barely moves, then declines steeply, then blows up; the rate "
    "of the steepest decline (the lecture's rule) is a good rate: it trains to within 1.25x of "
    "the loss of the best constant rate of a grid search. (Second verdict, in the evidence: "
    "lecopt's rule on the same sweeps, same threshold.)")
LINEAR_DECAY = ClaimSpec(
    8, "linear-decay-table",
    "Linear decay until iteration tau: alpha_t = (1 - t/tau) alpha_0 + (t/tau) alpha_tau for "
    "t <= tau, alpha_tau after (the lecture's table for tau = 4).")
CYCLICAL = ClaimSpec(
    9, "cyclical-rates",
    "Cyclical learning rates: the triangular schedule cycles between base and max with a fixed "
    "cycle length; triangular2 cuts the range in half after each cycle.")
SGDR = ClaimSpec(
    10, "sgdr-restarts",
    "Cosine annealing with warm restarts (Loshchilov et al.): the rate anneals along a cosine "
    "and abruptly restarts after a set number of iterations.")
CLAIMS = (RANGE_TEST, LINEAR_DECAY, CYCLICAL, SGDR)

# ---------------------------------------------------------------- claim 7: LR range test
# The sweep: fastai's range (up to 10) and smoothing (beta = 0.98, divergence at 4x the best
# smoothed loss), with enough steps per decade (~57) that the moving average's memory
# (1 / (1 - beta) = 50 steps) spans about one decade of rates rather than several.
RANGE_MIN_LR, RANGE_MAX_LR, RANGE_STEPS = 1e-6, 10.0, 400
SMOOTHING, DIVERGE_FACTOR = 0.98, 4.0
MOMENTUM = 0.9
BATCH_SIZE = 128
# Phases of the smoothed loss (all relative to its first value s_0):
PLATEAU_FRACTION = 0.2  # "barely moves": over the first 20% of the grid (in steps = log-rate)
PLATEAU_MAX_REL_CHANGE = 0.05  # ... it stays within 5% of s_0
DECLINE_MIN_DROP = 0.25  # "steep decline": it falls by >= 25% of s_0 within one decade of rate
BLOWUP_FACTOR = 2.0  # "blows up": the sweep stopped on divergence or ends >= 2x its minimum
# Then a grid search of constant rates for the same epochs, from the same initialisation and
# minibatch order (train.fit with the seed), and each rule's exact rate trained the same way:
# regret = its final training loss (whole training set) / the grid-best loss. Per seed the
# lecture's claim holds when the three phases are there AND the lecture rule's regret <=
# REGRET_HIT; lecopt's when its regret <= REGRET_HIT. Each reproduced on a strict majority of
# seeds. 1.25 is the hit threshold of the suggestion benchmark (lecopt bench --only lr-suggest).
REGRET_HIT = 1.25
RULES_JUDGED = ("lecture", "lecopt")

SETTINGS = {
    # Grid: log10 rates from grid_lo to grid_hi, grid_step decades apart.
    "full": {"features": (512, 512), "epochs": 5, "seeds": 3,
             "grid_lo": -3.0, "grid_hi": 0.5, "grid_step": 0.25},
    "quick": {"features": (128, 128), "epochs": 3, "seeds": 2,
              "grid_lo": -3.0, "grid_hi": 0.5, "grid_step": 0.5},
}

# ---------------------------------------------------------------- claim 8: linear decay
DECAY_A0, DECAY_ATAU, DECAY_TAU = 0.1, 0.01, 4
DECAY_STEPS = 7  # t = 0 .. 6: the table's rows and two beyond tau
# float64: bit-for-bit equal to the closed form; float32: within 1 ulp of it.
DECAY_MAX_ULPS_F32 = 1.0

# ---------------------------------------------------------------- claim 9: cyclical rates
# Smith's (2017) example range 0.001 .. 0.006.
CLR_BASE, CLR_MAX, CLR_STEP_SIZE, CLR_CYCLES = 1e-3, 6e-3, 20, 5
# triangular: peaks == max_lr and troughs == base_lr bit for bit; triangular2: peaks within
# CLR_MAX_ULPS of base + (max - base) / 2**(k-1) (the library's lerp and the closed form
# may round differently); peaks at s + 2sk, troughs at 2sk exactly; in float32 and float64.
CLR_MAX_ULPS = 1.0

# ---------------------------------------------------------------- claim 10: SGDR
SGDR_MAX, SGDR_MIN, SGDR_PERIOD, SGDR_MULT, SGDR_DECAY = 0.1, 1e-4, 10, 2, 0.8
SGDR_RESTARTS = 8  # restarts checked on the dense grid: 10, 30, ..., 2550
SGDR_FAR = (16, 17, 20)  # restarts checked far out: steps 655,350, 1,310,710 and 10,485,750
SGDR_WINDOW = 5  # steps either side of a far restart
SGDR_SHOWN_FAR = SGDR_FAR[1]  # the far restart drawn in the figure (step 1,310,710)
# Restart steps equal 10 (2**i - 1) exactly (no other jump anywhere); peak i within
# SGDR_MAX_ULPS of max_lr * decay**i (pow may round differently from NumPy's); float32 and 64.
# The reference takes max_lr and decay as the dtype holds them (float32(0.8)**20 is 3e-7 away
# from 0.8**20 in relative terms: an error of the input, not of the schedule), computes the
# product in float64 and rounds it to the dtype.
SGDR_MAX_ULPS = 2.0


# ---------------------------------------------------------------------------------- metrics


def phases(
    lrs: Sequence[float],
    smoothed: Sequence[float],
    plateau_fraction: float = PLATEAU_FRACTION,
) -> dict[str, Any]:
    """The three phases of a learning-rate range test curve.

    Only finite values of ``smoothed`` count; a non-finite tail (the sweep stopped) marks the
    blow-up.

    Args:
      lrs: the rates of the sweep, increasing, shape (n,).
      smoothed: the smoothed loss at each rate, shape (n,); NaN after the sweep stopped.
      plateau_fraction: the leading fraction of the grid (in points) that is the plateau.

    Returns:
      A dict with

      * ``plateau_rel_change``: ``max |s_k - s_0| / s_0`` over the first ``plateau_fraction``
        of the points, and ``plateau_end_lr`` (the last rate of that part);
      * ``decline_drop``: the largest ``(s_k - s_j) / s_0`` with ``lrs[j] <= 10 lrs[k]`` (the
        fall within one decade of rate), ``decline_from_lr`` and ``decline_to_lr`` (its
        ``lrs[k]``, ``lrs[j]``);
      * ``min_loss`` and ``min_lr``: the smallest smoothed loss and its rate;
      * ``last_index``: the last finite point, ``stopped_early``: whether it is before the
        end, ``end_ratio``: its value over ``min_loss``;
      * ``plateau``, ``decline``, ``blowup``: the three phases judged by the module's
        thresholds (``PLATEAU_MAX_REL_CHANGE``, ``DECLINE_MIN_DROP``, ``BLOWUP_FACTOR``).
    """
    lrs = np.asarray(lrs, dtype=np.float64)
    s = np.asarray(smoothed, dtype=np.float64)
    if lrs.ndim != 1 or lrs.shape != s.shape or lrs.size < 2:
        raise ValueError(f"lrs and smoothed must be 1-D of the same length >= 2; got shapes "
                         f"{lrs.shape} and {s.shape}")
    if not 0 < plateau_fraction <= 1:
        raise ValueError(f"plateau_fraction={plateau_fraction!r} must be in (0, 1]")
    n = s.size
    finite = np.isfinite(s)
    if not finite[0] or s[0] <= 0:
        raise ValueError(f"smoothed[0]={s[0]!r} must be a finite positive loss")
    last = int(np.nonzero(finite)[0].max())
    s0 = s[0]

    head = max(1, math.ceil(plateau_fraction * n))
    head_vals = s[:head][finite[:head]]
    plateau_change = float(np.max(np.abs(head_vals - s0)) / s0)

    best_drop, best_k, best_j = -np.inf, 0, 0
    for k in range(last + 1):
        if not finite[k]:
            continue
        j_hi = int(np.searchsorted(lrs, lrs[k] * 10.0 * (1 + 1e-12), side="right")) - 1
        window = np.arange(k, min(j_hi, last) + 1)
        window = window[finite[window]]
        j = int(window[np.argmin(s[window])])
        drop = (s[k] - s[j]) / s0
        if drop > best_drop:
            best_drop, best_k, best_j = drop, k, j

    i_min = int(np.nanargmin(np.where(finite, s, np.nan)))
    end_ratio = float(s[last] / s[i_min]) if s[i_min] > 0 else math.inf
    stopped = last < n - 1
    return {
        "plateau_rel_change": plateau_change,
        "plateau_end_lr": float(lrs[head - 1]),
        "decline_drop": float(best_drop),
        "decline_from_lr": float(lrs[best_k]),
        "decline_to_lr": float(lrs[best_j]),
        "min_loss": float(s[i_min]),
        "min_lr": float(lrs[i_min]),
        "last_index": last,
        "stopped_early": bool(stopped),
        "end_ratio": end_ratio,
        "plateau": bool(plateau_change <= PLATEAU_MAX_REL_CHANGE),
        "decline": bool(best_drop >= DECLINE_MIN_DROP),
        "blowup": bool(stopped or end_ratio >= BLOWUP_FACTOR),
    }


def cycle_extrema(values: Sequence[float], period: int) -> dict[str, np.ndarray]:
    """Peak and trough of every complete cycle of a periodic schedule sampled from step 0.

    Cycle ``k`` (0-based) is the steps ``k * period .. (k + 1) * period - 1``; a partial last
    cycle is ignored.

    Args:
      values: the schedule at steps 0, 1, ....
      period: the cycle length in steps, a positive integer.

    Returns:
      ``{"peaks", "peak_steps", "troughs", "trough_steps"}``: per cycle, the largest and
      smallest value and the (first) step where each occurs.
    """
    v = np.asarray(values)
    if isinstance(period, bool) or int(period) != period or period < 1:
        raise ValueError(f"period={period!r} must be a positive integer")
    period = int(period)
    cycles = v.size // period
    if cycles == 0:
        raise ValueError(f"values has {v.size} points, fewer than one period ({period})")
    c = v[: cycles * period].reshape(cycles, period)
    offsets = np.arange(cycles) * period
    return {
        "peaks": c.max(axis=1),
        "peak_steps": offsets + c.argmax(axis=1),
        "troughs": c.min(axis=1),
        "trough_steps": offsets + c.argmin(axis=1),
    }


def restart_steps(values: Sequence[float], rel_tol: float = 1e-3) -> np.ndarray:
    """The steps ``t >= 1`` at which the schedule jumps up: ``v_t - v_{t-1} > rel_tol * range``.

    ``range`` is ``max(v) - min(v)``; the tolerance keeps rounding ripples of a curve that is
    flat at its floor from counting as jumps.

    Args:
      values: the schedule at consecutive steps (the first has index 0).
      rel_tol: the smallest rise counted, as a fraction of the values' range.

    Returns:
      The indices of the jumps (int array, possibly empty).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D; got shape {v.shape}")
    if v.size < 2:
        return np.zeros(0, dtype=np.int64)
    span = float(np.max(v) - np.min(v))
    if span == 0:
        return np.zeros(0, dtype=np.int64)
    return np.nonzero(np.diff(v) > rel_tol * span)[0].astype(np.int64) + 1


def ulps(actual: Any, reference: Any, dtype: Any) -> np.ndarray:
    """``|actual - reference|`` in units in the last place of ``reference`` rounded to ``dtype``.

    Args:
      actual: the values computed in ``dtype``.
      reference: the exact (or float64) values.
      dtype: ``np.float32`` or ``np.float64``.

    Returns:
      The distances, float64 (0 means bit-for-bit equal to the rounded reference).
    """
    ref = np.asarray(reference, dtype=np.float64).astype(dtype)
    act = np.asarray(actual).astype(dtype)
    gap = np.spacing(np.abs(ref)).astype(np.float64)
    return np.abs(act.astype(np.float64) - ref.astype(np.float64)) / gap


# ------------------------------------------------------------------------ claim 7: range test


def grid_rates(settings: dict[str, Any]) -> np.ndarray:
    """The grid of constant rates: ``10**k`` for k from ``grid_lo`` to ``grid_hi``."""
    count = round((settings["grid_hi"] - settings["grid_lo"]) / settings["grid_step"]) + 1
    return 10.0 ** (settings["grid_lo"] + settings["grid_step"] * np.arange(count))


def range_test_runs(ctx: Context) -> dict[str, Any]:
    """Claim 7's measurements, shared by both verdicts: per seed the range test (from the
    state ``train.fit(seed=seed)`` starts from, its loss, its minibatches of epoch 0), the
    grid search, and the exact-rate training of each judged rule."""
    import jax.numpy as jnp

    from lecopt import lr_finder, optimizers, train
    from lecopt import nn as lnn

    settings = SETTINGS["quick" if ctx.quick else "full"]
    ds = ctx.data()
    x = jnp.asarray(np.asarray(ds.x_train, np.float32).reshape(len(ds.x_train), -1))
    y = jnp.asarray(np.asarray(ds.y_train, np.int32))
    epochs = settings["epochs"]
    model = lnn.MLP(features=tuple(settings["features"]))
    rates = grid_rates(settings)

    def make_opt(learning_rate):
        return optimizers.sgd(learning_rate, momentum=MOMENTUM)

    per_seed, results, grids = [], [], []
    for seed in ctx.progress_bar(ctx.seeds(settings["seeds"]), desc="lr range test: seeds"):
        start = train.init_state(model, make_opt(RANGE_MIN_LR), x, seed)
        order = train.batch_order(seed, 0, int(x.shape[0]), BATCH_SIZE)
        res = lr_finder.lr_range_test(
            train.loss_function(model), start.params, (x[order], y[order]), make_opt,
            min_lr=RANGE_MIN_LR, max_lr=RANGE_MAX_LR, num_steps=RANGE_STEPS,
            smoothing=SMOOTHING, diverge_factor=DIVERGE_FACTOR, model_state=start.batch_stats)
        ph = phases(np.asarray(res.learning_rates, np.float64),
                    np.asarray(res.smoothed_losses, np.float64))
        grid = train.grid_search(model, make_opt, (x, y), rates=rates, epochs=epochs,
                                     batch_size=BATCH_SIZE, seed=seed)
        judged = {row["rule"]: row for row in train.validate_suggestions(res, grid, RULES_JUDGED)}
        three = bool(ph["plateau"] and ph["decline"] and ph["blowup"])
        per_seed.append({
            "seed": seed, "phases": ph, "three_phases": three,
            "stopped_at": int(res.stopped_at), "diverged": bool(res.diverged),
            "suggestions": {k: float(v) for k, v in res.suggestions.items()},
            "grid_rates": grid.rates.tolist(), "grid_final_loss": grid.final_loss.tolist(),
            "grid_best_rate": grid.best_rate, "grid_best_loss": grid.best_loss,
            "rules": {name: {"rate": r["rate"], "final_loss": r["final_loss"],
                             "regret": r["regret"],
                             "hit": bool(math.isfinite(r["regret"])
                                         and r["regret"] <= REGRET_HIT)}
                      for name, r in judged.items()},
        })
        results.append(res)
        grids.append(grid)
    return {"per_seed": per_seed, "results": results, "grids": grids, "epochs": epochs,
            "settings": settings}


def _fmt_loss(v: float) -> str:
    return f"{v:.3f}" if math.isfinite(v) else "diverged"


def _rule_line(p: dict[str, Any], rule: str) -> str:
    r = p["rules"][rule]
    regret = f"{r['regret']:.2f}x" if math.isfinite(r["regret"]) else "inf"
    return (f"seed {p['seed']}: rate {r['rate']:.3g} trains to {_fmt_loss(r['final_loss'])}, "
            f"regret {regret}")


def _grid_words(runs: dict[str, Any]) -> str:
    st, p0 = runs["settings"], runs["per_seed"][0]
    n = len(p0["grid_rates"])
    return (f"grid of {n} constant rates {p0['grid_rates'][0]:.3g}..{p0['grid_rates'][-1]:.3g}, "
            f"{st['grid_step']:g} decade apart" + (" (quick mode: a reduced grid)"
                                                   if st["grid_step"] > 0.25 else "")
            + f", {runs['epochs']} epochs each")


def range_test(runs: dict[str, Any]) -> Measured:
    """Claim 7 with two verdicts. The claim's: three phases, and the lecture's rule (steepest
    decline) within ``REGRET_HIT`` of the grid-best loss. The second (evidence and
    ``numbers["lecopt_verdict"]``): lecopt's rule on the same sweeps, within ``REGRET_HIT``."""
    per_seed = runs["per_seed"]
    p0, ph0 = per_seed[0], per_seed[0]["phases"]
    held = [p["three_phases"] and p["rules"]["lecture"]["hit"] for p in per_seed]
    lecopt_held = [p["rules"]["lecopt"]["hit"] for p in per_seed]
    n = len(per_seed)

    def verdict(ok: bool) -> str:
        return "REPRODUCED" if ok else "NOT REPRODUCED"

    evidence = (
        f"seed {p0['seed']}: smoothed loss moved {ph0['plateau_rel_change']:.1%} over the first "
        f"{PLATEAU_FRACTION:.0%} of the sweep (rates up to {ph0['plateau_end_lr']:.2g}), fell "
        f"{ph0['decline_drop']:.0%} of its start within one decade "
        f"({ph0['decline_from_lr']:.2g} -> {ph0['decline_to_lr']:.2g}), then "
        + ("diverged" if ph0["stopped_early"] else f"ended at {ph0['end_ratio']:.2f}x its minimum")
        + f"; three phases on {sum(p['three_phases'] for p in per_seed)}/{n} seeds. Grid-best: "
        + "; ".join(f"seed {p['seed']}: {p['grid_best_rate']:.3g} ({p['grid_best_loss']:.3f})"
                    for p in per_seed)
        + f" ({_grid_words(runs)}). Verdict 1, the lecture's rule (steepest decline of a "
        "lag-free smoothing): " + "; ".join(_rule_line(p, "lecture") for p in per_seed)
        + f"; within {REGRET_HIT}x on {sum(p['rules']['lecture']['hit'] for p in per_seed)}/{n}"
        f" seeds: {verdict(majority(held))}"
        + ("" if majority(held) else " (the lecture's rule does not give a good rate here)")
        + ". Verdict 2, lecopt's rule (lr_finder.lecopt_rule) on the same sweeps: "
        + "; ".join(_rule_line(p, "lecopt") for p in per_seed)
        + f"; within {REGRET_HIT}x on {sum(lecopt_held)}/{n} seeds: "
        f"{verdict(majority(lecopt_held))}."
    )
    return Measured(
        evidence=evidence,
        threshold=(
            f"Per seed: smoothed loss within {PLATEAU_MAX_REL_CHANGE:.0%} of its start over the "
            f"first {PLATEAU_FRACTION:.0%} of the sweep; a fall of >= {DECLINE_MIN_DROP:.0%} of "
            f"its start within one decade of rate; sweep stops on divergence or ends >= "
            f"{BLOWUP_FACTOR:g}x its minimum; and the lecture's rule's rate trains (same epochs, "
            f"init and minibatch order) to a final training loss (whole training set) <= "
            f"{REGRET_HIT}x the grid-best loss (divergence counts as a miss). Reproduced on a "
            "strict majority of seeds. Verdict 2 (not the claim's): lecopt's rule's rate, "
            "the same regret threshold and majority."
        ),
        holds=majority(held),
        numbers={"per_seed": per_seed,
                 "lecopt_verdict": {"holds": majority(lecopt_held),
                                    "seeds": seed_tally(lecopt_held)}},
        seeds=seed_tally(held),
        data=runs,
    )


def plot_range_test(runs: dict[str, Any]) -> Figure:
    """lr_finder's two panels for the first seed: the sweep with the judged rules marked, and
    the grid search's final loss against the rate with the suggestions on it."""
    from lecopt import lr_finder

    fig = lr_finder.plot(runs["results"][0], runs["grids"][0], rules=RULES_JUDGED)
    p = runs["per_seed"][0]
    fig.suptitle(f"LR range test, SGD momentum {MOMENTUM} (seed {p['seed']}), judged by grid "
                 "search")
    fig.tight_layout()
    return Figure.from_matplotlib(
        fig, "lr_range_test",
        "Left: loss against a learning rate raised after every minibatch (log axis): raw, the "
        "moving average (fastai's) and the zero-phase smoothing the rules read; the marks are "
        "the lecture's rule (steepest decline) and lecopt's rule. Right: the final training "
        f"loss after {runs['epochs']} epochs at each constant rate of the grid, with both "
        "suggestions and the grid-best rate.")


# ---------------------------------------------------------------------- claim 8: linear decay


def _coefficients(t: int, tau: int) -> str:
    """The lecture's table entry for alpha_t, e.g. ``"3/4 a0 + 1/4 a_tau"``."""
    if t >= tau:
        return "a_tau"
    if t == 0:
        return "a0"
    return f"{tau - t}/{tau} a0 + {t}/{tau} a_tau"


def linear_decay_table() -> Measured:
    """Claim 8: linear_decay at t = 0..6 against the lecture's closed form, bit for bit."""
    from lecopt import schedules

    a0, at, tau = DECAY_A0, DECAY_ATAU, DECAY_TAU
    ts = list(range(DECAY_STEPS))
    # The lecture's closed form in Python floats (IEEE float64).
    ref = [(1 - t / tau) * a0 + (t / tau) * at if t <= tau else at for t in ts]
    f = schedules.linear_decay(a0, at, tau)
    got64 = _eval(f, np.arange(DECAY_STEPS), x64=True)
    got32 = _eval(f, np.arange(DECAY_STEPS), x64=False)
    equal64 = [float(g) == r for g, r in zip(got64, ref)]
    u32 = ulps(got32, ref, np.float32)
    holds = all(equal64) and float(u32.max()) <= DECAY_MAX_ULPS_F32

    rows = "; ".join(f"t={t} (t/tau={min(t / tau, 1):g}): {_coefficients(t, tau)} = "
                     f"{float(g):.6g}"
                     for t, g in zip(ts, got64))
    evidence = (
        f"lecopt.schedules.linear_decay({a0}, {at}, {tau}): {rows}. float64: "
        f"{sum(equal64)}/{len(ts)} values bit-for-bit equal to (1 - t/tau) a0 + (t/tau) a_tau "
        f"(a_tau beyond tau); float32: max {u32.max():.0f} ulp from it."
    )
    return Measured(
        evidence=evidence,
        threshold=("float64: every value at t = 0..6 bit-for-bit equal to the closed form; "
                   f"float32: within {DECAY_MAX_ULPS_F32:g} ulp of it."),
        holds=bool(holds),
        numbers={"t": ts, "float64": got64.tolist(), "closed_form": ref,
                 "float32": got32.tolist(), "float32_ulps": u32.tolist(),
                 "equal_float64": equal64},
        data={"schedule": f, "t": ts, "closed_form": ref, "float64": got64,
              "equal_float64": equal64},
    )


def plot_linear_decay(data: dict[str, Any]) -> Figure:
    """The schedule on a fine grid with the lecture's table beside it."""
    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt

    a0, at, tau = DECAY_A0, DECAY_ATAU, DECAY_TAU
    f, ts, ref, got64, equal64 = (data[k] for k in ("schedule", "t", "closed_form", "float64",
                                                    "equal_float64"))
    fig, (ax, tx) = plt.subplots(1, 2, figsize=(13, 4.2),
                                 gridspec_kw={"width_ratios": [1, 1.25]})
    fine = np.linspace(0, DECAY_STEPS - 0.5, 300)
    ax.plot(fine, np.asarray(jax.vmap(f)(jnp.asarray(fine, jnp.float32))), color="tab:blue",
            lw=2, label="linear_decay(0.1, 0.01, tau=4)")
    ax.plot(ts, ref, "s", ms=11, mfc="none", mec="black", mew=1.5,
            label="closed form (lecture's table)")
    ax.plot(ts, got64, "o", ms=5, color="tab:red", label="lecopt, float64")
    ax.axvline(tau, color="0.5", ls=":", lw=1.2, label="t = tau")
    ax.set_xlabel("iteration t (updates)")
    ax.set_ylabel("learning rate alpha_t")
    ax.set_title(f"Linear decay to alpha_tau, tau = {tau}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    tx.axis("off")
    cells = [[str(t), f"{min(t / tau, 1):g}", _coefficients(t, tau), f"{float(g):.6g}",
              "yes" if e else "NO"] for t, g, e in zip(ts, got64, equal64)]
    table = tx.table(cellText=cells,
                     colLabels=["t", "t/tau", "alpha_t (lecture)", "lecopt value",
                                "exact (f64)"],
                     colWidths=[0.08, 0.12, 0.42, 0.2, 0.18], loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9.5)
    table.scale(1, 1.5)
    tx.set_title(f"The lecture's table, alpha_0 = {a0}, alpha_tau = {at}")
    fig.suptitle("Linear learning-rate decay (the lecture's example, tau = 4)")
    fig.tight_layout()
    return Figure.from_matplotlib(
        fig, "linear_decay",
        "The linear decay schedule (line) with the lecture's table (squares: closed form, dots: "
        "lecopt in float64): it falls linearly from alpha_0 to alpha_tau at t = tau = 4 and "
        "stays there. Right: the table; every value equals the closed form bit for bit.")


# ------------------------------------------------------------ claims 9-10: cyclical and SGDR


_EVALUATE: list = []
_DTYPES = (("float64", True), ("float32", False))


def _eval(schedule, steps: np.ndarray, x64: bool) -> np.ndarray:
    """The schedule at ``steps`` in float64 (``x64``) or float32, through one jitted program.

    The schedule is a pytree of its hyperparameters, so it is an argument of the jitted
    function: every schedule of one kind and every step array of one shape share a program.
    """
    import jax
    import jax.numpy as jnp

    if not _EVALUATE:
        _EVALUATE.append(jax.jit(lambda sched, t: jax.vmap(sched)(t)))
    evaluate = _EVALUATE[0]
    if x64:
        with jax.enable_x64(True):
            out = np.asarray(evaluate(schedule, jnp.asarray(steps, jnp.int64)))
            assert out.dtype == np.float64
            return out
    return np.asarray(evaluate(schedule, jnp.asarray(steps, jnp.int32)))


def _restart(i: int) -> int:
    """The step of SGDR's restart ``i``: ``T_0 (T_mult^i - 1) / (T_mult - 1)``."""
    return SGDR_PERIOD * (SGDR_MULT**i - 1) // (SGDR_MULT - 1)


def schedule_values() -> dict[str, Any]:
    """The schedules of claims 9 and 10, and their values in float64 and float32.

    Returns ``{"schedules": {name: schedule}, "values": {(name, dtype): array}}`` for
    ``triangular`` and ``triangular2`` over ``CLR_CYCLES`` cycles and ``sgdr`` up to restart
    ``SGDR_RESTARTS`` (steps 0, 1, ...).
    """
    from lecopt import schedules

    made = {"triangular": schedules.triangular(CLR_BASE, CLR_MAX, CLR_STEP_SIZE),
            "triangular2": schedules.triangular2(CLR_BASE, CLR_MAX, CLR_STEP_SIZE),
            "sgdr": schedules.sgdr(SGDR_MAX, SGDR_MIN, SGDR_PERIOD, period_mult=SGDR_MULT,
                                   max_lr_decay=SGDR_DECAY)}
    last = {"triangular": 2 * CLR_STEP_SIZE * CLR_CYCLES, "triangular2": 2 * CLR_STEP_SIZE *
            CLR_CYCLES, "sgdr": _restart(SGDR_RESTARTS)}
    values = {(name, dt): _eval(f, np.arange(last[name] + 1), x64)
              for name, f in made.items() for dt, x64 in _DTYPES}
    return {"schedules": made, "values": values}


def cyclical_rates(curves: dict[str, Any]) -> Measured:
    """Claim 9: peaks, troughs and their steps of triangular and triangular2, to the ulp."""
    base, top, s, cycles = CLR_BASE, CLR_MAX, CLR_STEP_SIZE, CLR_CYCLES
    period = 2 * s
    k = np.arange(1, cycles + 1)
    want_peaks2 = base + (top - base) / 2.0 ** (k - 1)
    want_peak_steps = s + period * (k - 1)
    want_trough_steps = period * (k - 1)
    out: dict[str, Any] = {}
    ok = True
    for name in ("triangular", "triangular2"):
        for dt, x64 in _DTYPES:
            v = curves["values"][(name, dt)]
            ex = cycle_extrema(v, period)
            want = np.full(cycles, top) if name == "triangular" else want_peaks2
            npdt = np.float64 if x64 else np.float32
            pu, tu = ulps(ex["peaks"], want, npdt), ulps(ex["troughs"], base, npdt)
            limit = 0.0 if name == "triangular" else CLR_MAX_ULPS
            pos = (np.array_equal(ex["peak_steps"], want_peak_steps)
                   and np.array_equal(ex["trough_steps"], want_trough_steps))
            good = bool(pu.max() <= limit and tu.max() == 0 and pos)
            ok &= good
            out[f"{name}_{dt}"] = {"peaks": ex["peaks"].tolist(), "expected_peaks": want.tolist(),
                                   "peak_ulps": pu.tolist(), "trough_ulps": tu.tolist(),
                                   "peak_steps": ex["peak_steps"].tolist(),
                                   "trough_steps": ex["trough_steps"].tolist(),
                                   "positions_exact": pos, "held": good}

    t2 = out["triangular2_float64"]
    evidence = (
        f"triangular({base}, {top}, step_size={s}) over {cycles} cycles: peaks "
        f"{sorted(set(out['triangular_float64']['peaks']))} at steps "
        f"{out['triangular_float64']['peak_steps']}, troughs {base} at "
        f"{out['triangular_float64']['trough_steps']} (period {period}); triangular2 peaks "
        + ", ".join(f"{p:.6g}" for p in t2["peaks"])
        + " (expected base + (max - base)/2^(k-1): "
        + ", ".join(f"{p:.6g}" for p in t2["expected_peaks"])
        + f"); max ulp error float64/float32: triangular "
        f"{max(out['triangular_float64']['peak_ulps']):.0f}/"
        f"{max(out['triangular_float32']['peak_ulps']):.0f}, triangular2 "
        f"{max(t2['peak_ulps']):.0f}/{max(out['triangular2_float32']['peak_ulps']):.0f}; "
        "positions exact in both dtypes: "
        + str(all(d["positions_exact"] for d in out.values())) + "."
    )
    return Measured(
        evidence=evidence,
        threshold=("In float64 and float32, over 5 cycles: triangular peaks equal max_lr and all "
                   "troughs equal base_lr bit for bit; triangular2 peak k within "
                   f"{CLR_MAX_ULPS:g} ulp of base + (max - base)/2^(k-1); peaks at steps "
                   "s + 2s(k-1) and troughs at 2s(k-1) exactly (period 2 step_size)."),
        holds=bool(ok),
        numbers=out,
        data=curves,
    )


def _peak(i: Any, dtype: Any) -> np.ndarray:
    """``max_lr * decay**i`` with the two hyperparameters rounded to ``dtype``, in float64."""
    top = np.float64(np.asarray(SGDR_MAX, dtype))
    decay = np.float64(np.asarray(SGDR_DECAY, dtype))
    return top * decay ** np.asarray(i, dtype=np.float64)


def sgdr_restarts(curves: dict[str, Any]) -> Measured:
    """Claim 10: SGDR's upward jumps (dense grid and far out) and peaks, to the ulp."""
    p, m = SGDR_PERIOD, SGDR_MULT
    f = curves["schedules"]["sgdr"]
    starts = [_restart(i) for i in range(SGDR_RESTARTS + 1)]  # S_0 = 0 .. S_8
    out: dict[str, Any] = {"expected_restarts": starts[1:]}
    ok = True
    windows = {}
    for dt, x64 in _DTYPES:
        npdt = np.float64 if x64 else np.float32
        v = curves["values"][("sgdr", dt)]
        found = restart_steps(v).tolist()
        idx = np.asarray(starts)
        want_peaks = _peak(np.arange(len(starts)), npdt)
        pu = ulps(v[idx], want_peaks, npdt)
        before_end = v[idx[1:] - 1]  # the last step of each cycle: close to the floor
        far = []
        for i in SGDR_FAR:
            start = _restart(i)
            window = np.arange(start - SGDR_WINDOW, start + SGDR_WINDOW + 1)
            w = _eval(f, window, x64)
            windows[(i, dt)] = (window, w)
            jumps = (window[0] + restart_steps(w)).tolist()
            peak_u = float(ulps(w[SGDR_WINDOW], _peak(i, npdt), npdt))
            far.append({"restart": i, "step": start, "found": jumps, "peak": float(w[SGDR_WINDOW]),
                        "peak_ulps": peak_u,
                        "held": jumps == [start] and peak_u <= SGDR_MAX_ULPS})
        good = (found == starts[1:] and float(pu.max()) <= SGDR_MAX_ULPS
                and all(x["held"] for x in far))
        ok &= good
        out[dt] = {"found_restarts": found, "peaks": v[idx].tolist(),
                   "expected_peaks": want_peaks.tolist(), "peak_ulps": pu.tolist(),
                   "last_step_values": before_end.tolist(), "far": far, "held": bool(good)}
    d = out["float32"]
    evidence = (
        f"sgdr({SGDR_MAX}, {SGDR_MIN}, period={p}, period_mult={m}, max_lr_decay={SGDR_DECAY}):"
        f" jumps found at {out['float64']['found_restarts']} (float64) and {d['found_restarts']}"
        f" (float32), expected 10 (2^i - 1) = {starts[1:]}; far out: "
        + ", ".join(f"step {x['step']:,} found {x['found']}" for x in d["far"])
        + " (float32); peaks " + ", ".join(f"{v:.5g}" for v in out["float64"]["peaks"][:5])
        + f", ... = {SGDR_MAX} * {SGDR_DECAY}^i, max error "
        f"{max(out['float64']['peak_ulps']):.0f} ulp (float64), "
        f"{max(d['peak_ulps']):.0f} ulp (float32); far peaks max "
        f"{max(x['peak_ulps'] for x in d['far'] + out['float64']['far']):.0f} ulp."
    )
    return Measured(
        evidence=evidence,
        threshold=(f"In float64 and float32: the only upward jumps on steps 0..{starts[-1]} are "
                   f"at 10 (2^i - 1), i = 1..{SGDR_RESTARTS}; near restarts "
                   + ", ".join(str(i) for i in SGDR_FAR)
                   + f" (steps up to {p * (m**max(SGDR_FAR) - 1):,}) the only jump is at the "
                   f"expected step; every peak within {SGDR_MAX_ULPS:g} ulp of max_lr * "
                   "decay^i (max_lr and decay taken as the dtype holds them)."),
        holds=bool(ok),
        numbers=out,
        data={"float64": curves["values"][("sgdr", "float64")],
              "restarts": out["float64"]["found_restarts"], "windows": windows},
    )


def plot_schedules(curves: dict[str, Any]) -> Figure:
    """triangular, triangular2 and the first 630 steps of SGDR, with their extrema."""
    import matplotlib.pyplot as plt

    values = curves["values"]
    s, period = CLR_STEP_SIZE, 2 * CLR_STEP_SIZE
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3))
    for ax, name in zip(axes[:2], ("triangular", "triangular2")):
        v = values[(name, "float32")]
        ex = cycle_extrema(v, period)
        ax.plot(np.arange(v.size), v, color="tab:blue", lw=2, label=f"{name}, step_size = {s}")
        ax.plot(ex["peak_steps"], ex["peaks"], "v", color="tab:red", ms=7, label="peaks")
        ax.plot(ex["trough_steps"], ex["troughs"], "^", color="tab:green", ms=7, label="troughs")
        ax.axhline(CLR_MAX, color="0.5", ls=":", lw=1)
        ax.axhline(CLR_BASE, color="0.5", ls=":", lw=1)
        ax.set_title(f"{name}" + (" (range halved each cycle)" if name == "triangular2" else ""))
        ax.set_xlabel("iteration t (updates)")
        ax.set_ylabel("learning rate alpha_t")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="upper center", ncol=3)
        ax.set_ylim(0, CLR_MAX * 1.3)
    ax = axes[2]
    v = values[("sgdr", "float32")]
    shown = 630 + 1
    ax.plot(np.arange(shown), v[:shown], color="tab:blue", lw=2,
            label=f"SGDR, T_0 = {SGDR_PERIOD}, T_mult = {SGDR_MULT}, peak decay {SGDR_DECAY}")
    rs = restart_steps(v[:shown])
    ax.plot(rs, v[rs], "v", color="tab:red", ms=7, label="restarts (measured)")
    ax.set_title("Cosine annealing with warm restarts")
    ax.set_xlabel("iteration t (updates)")
    ax.set_ylabel("learning rate alpha_t")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper right")
    ax.set_ylim(0, SGDR_MAX * 1.2)
    fig.suptitle("Cyclical learning rates: triangular, triangular2 and SGDR (lecopt.schedules)")
    fig.tight_layout()
    return Figure.from_matplotlib(
        fig, "schedules",
        f"Left: the triangular schedule rises linearly from {CLR_BASE} to {CLR_MAX} in "
        f"{s} steps and falls back (cycle {period} steps). Middle: triangular2 halves the range "
        "after each cycle. Right: cosine annealing with warm restarts; each cycle twice as long "
        "as the one before, the peak scaled by 0.8 per restart.")


def plot_sgdr(data: dict[str, Any]) -> Figure:
    """SGDR's measured restarts on a symlog axis, and the steps around a far restart."""
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.3))
    v = data["float64"]
    ax.plot(np.arange(v.size), v, color="tab:blue", lw=1.5, label="sgdr (float64)")
    rs = data["restarts"]
    for i, r in enumerate(rs):
        ax.axvline(r, color="tab:red", ls=":", lw=1, label="measured restarts" if i == 0 else None)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlim(0, v.size)
    ax.set_xlabel("iteration t (updates, symlog scale)")
    ax.set_ylabel("learning rate alpha_t")
    ax.set_title(f"Restarts at 10 (2^i - 1) = {', '.join(str(r) for r in rs)}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    i = SGDR_SHOWN_FAR
    start = _restart(i)
    window, w = data["windows"][(i, "float32")]
    bx.plot(window - start, w, "o-", color="tab:blue", label="sgdr (float32)")
    bx.axvline(0, color="tab:red", ls=":", label=f"expected restart, step {start:,}")
    bx.axhline(SGDR_MAX * SGDR_DECAY**i, color="0.5", ls="--", lw=1,
               label=f"max_lr * 0.8^{i}")
    bx.set_xlabel(f"iteration t - {start:,} (updates)")
    bx.set_ylabel("learning rate alpha_t")
    bx.set_title(f"Restart {i} lands exactly, far out")
    bx.grid(True, alpha=0.3)
    bx.legend(fontsize="small")
    fig.suptitle("SGDR: restarts on the geometric series, also after a million steps")
    fig.tight_layout()
    return Figure.from_matplotlib(
        fig, "sgdr",
        "Left: SGDR (period 10, period_mult 2, peak decay 0.8) over 2,550 steps; the measured "
        "restarts (dotted) are 10, 30, 70, .... Right: the 11 steps around restart 17 "
        "(step 1,310,710): the rate is at its floor until the very step of the restart.")


# ---------------------------------------------------------------------------------- run


def run(ctx: Context) -> Result:
    """Claims 7-10 (quick mode: a smaller MLP, fewer epochs and seeds for the range test)."""
    curves = schedule_values()
    runs = functools.partial(range_test_runs, ctx)
    return run_steps(ctx, ID, [
        Step(lambda: range_test(runs()), RANGE_TEST, plot_range_test),
        Step(linear_decay_table, LINEAR_DECAY, plot_linear_decay),
        Step(functools.partial(cyclical_rates, curves), CYCLICAL, plot_schedules),
        Step(functools.partial(sgdr_restarts, curves), SGDR, plot_sgdr),
    ], settings=_settings(ctx))


def _settings(ctx: Context) -> dict[str, Any]:
    settings = SETTINGS["quick" if ctx.quick else "full"]
    return {
        "model": f"MLP{tuple(settings['features'])} ReLU", "optimizer":
        f"sgd momentum {MOMENTUM}", "batch_size": BATCH_SIZE,
        "range": f"{RANGE_MIN_LR:g}..{RANGE_MAX_LR:g} in {RANGE_STEPS} steps (exponential)",
        "smoothing": SMOOTHING, "diverge_factor": DIVERGE_FACTOR,
        "train_epochs": settings["epochs"], "trainer": "lecopt.train.grid_search",
        "grid": f"{len(grid_rates(settings))} rates 10^{settings['grid_lo']:g}.."
                f"10^{settings['grid_hi']:g}, {settings['grid_step']:g} decade apart",
        "compared": "final loss on the whole training set", "seeds": settings["seeds"],
        "data": ctx.data_name,
    }
