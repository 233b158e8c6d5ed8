"""The metrics of the momentum-in-practice experiment (claims 4 and 5), on known curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lecopt.experiments import Context
from lecopt.experiments import mnist_momentum as mm

# ------------------------------------------------------------------------------ fluctuation


def test_fluctuation_known_values():
    assert mm.fluctuation([0.1, 0.3, 0.1, 0.3]) == pytest.approx(0.2)
    assert mm.fluctuation([0.5, 0.5, 0.5]) == 0.0
    # A straight line changes by |slope| each epoch, and nothing once detrended.
    line = 0.4 - 0.01 * np.arange(10)
    assert mm.fluctuation(line) == pytest.approx(0.01)
    assert mm.fluctuation(line, detrend=True) == pytest.approx(0.0, abs=1e-12)


def test_fluctuation_detrended_matches_least_squares_residual():
    rng = np.random.default_rng(0)
    t = np.arange(15.0)
    e = 0.3 - 0.012 * t + 0.02 * (-1.0) ** t + 0.005 * rng.standard_normal(15)
    # Independent detrending: least squares by the normal equations.
    a = np.stack([t, np.ones_like(t)], 1)
    coef = np.linalg.solve(a.T @ a, a.T @ e)
    resid = e - a @ coef
    expected = np.mean(np.abs(resid[1:] - resid[:-1]))
    assert mm.fluctuation(e, detrend=True) == pytest.approx(expected, rel=1e-10)


def test_fluctuation_orders_noisy_above_smooth():
    t = np.arange(20.0)
    smooth = 0.1 * np.exp(-t / 5)
    noisy = smooth + 0.01 * (-1.0) ** t
    assert mm.fluctuation(noisy, detrend=True) > 5 * mm.fluctuation(smooth, detrend=True)


@pytest.mark.parametrize("bad", [[0.1], [], [[0.1, 0.2], [0.3, 0.4]]])
def test_fluctuation_rejects_bad_curves(bad):
    with pytest.raises(ValueError, match="errors"):
        mm.fluctuation(bad)


# ------------------------------------------------------------------------------ epochs_to


def test_epochs_to_known_values():
    assert mm.epochs_to([0.5, 0.2, 0.1, 0.15], 0.2) == 2.0  # at the level counts
    assert mm.epochs_to([0.5, 0.2, 0.1, 0.15], 0.12) == 3.0
    assert mm.epochs_to([0.05, 0.2], 0.1) == 1.0
    assert mm.epochs_to([0.5, 0.4], 0.1) == math.inf
    with pytest.raises(ValueError, match="errors"):
        mm.epochs_to([[0.1]], 0.1)


def test_error_after():
    assert mm.error_after([0.5, 0.3, 0.2], 2) == 0.3
    for k in (0, 4):
        with pytest.raises(ValueError, match=f"k={k}"):
            mm.error_after([0.5, 0.3, 0.2], k)


# ------------------------------------------------------------------------------ per-seed rules


def test_speed_rule_needs_strict_order():
    curves = {0.0: np.array([0.5, 0.3]), 0.5: np.array([0.4, 0.2]), 0.9: np.array([0.3, 0.1])}
    ok, errs = mm._seed_speed(curves, 2)
    assert ok and errs == [0.3, 0.2, 0.1]
    curves[0.9] = np.array([0.3, 0.2])  # tie with phi = 0.5
    assert not mm._seed_speed(curves, 2)[0]


def test_fluctuation_rule():
    n = 10
    t = np.arange(n, dtype=float)
    calm = 0.05 * np.exp(-t / 3)
    jumpy = calm + 0.02 * (-1.0) ** t
    curves = {"train": {0.9: calm, 0.99: jumpy}, "test": {0.9: calm + 0.03, 0.99: jumpy + 0.03}}
    ok, out = mm._seed_fluctuation(curves, n)
    assert ok and out["train"]["ratio"] > mm.FLUCT_RATIO
    # Only the training error fluctuates: the claim needs both.
    curves["test"][0.99] = calm + 0.03
    assert not mm._seed_fluctuation(curves, n)[0]
    # A run stopped by a non-finite loss (shorter history) cannot be measured: not held.
    curves["test"][0.99] = jumpy[:4]
    ok, out = mm._seed_fluctuation(curves, n)
    assert not ok and out["test"] == {"diverged": True}


def _synthetic_runs(epochs: int = 12) -> mm.Runs:
    """Three seeds of made-up error curves with known verdicts.

    Claim 4: seeds 0 and 1 are ordered by momentum at epoch 2, seed 2 is not (phi = 0.5 and
    0.9 swapped). Claim 5: phi = 0.99 zig-zags on seed 0 only; on seed 2 it stopped after 4
    epochs (a non-finite loss).
    """
    t = np.arange(epochs, dtype=np.float64)
    calm = 0.02 + 0.3 * np.exp(-t / 2)
    errors = {}
    for seed in range(3):
        curves = {phi: calm * (1.0 - phi / 2) for phi in mm.MOMENTA}
        if seed == 2:
            curves[0.5], curves[0.9] = curves[0.9], curves[0.5]
        jumpy = curves[0.99] + (0.02 * (-1.0) ** t if seed == 0 else 0.0)
        curves[0.99] = jumpy[:4] if seed == 2 else jumpy
        errors[seed] = {"train": dict(curves), "test": {p: c + 0.01 for p, c in curves.items()}}
    settings = {"features": (8,), "epochs": epochs, "seeds": [0, 1, 2], "speed_epochs": 2}
    return mm.Runs(errors=errors, stopped={"phi=0.99,seed=2": {"epoch": 5}}, settings=settings)


def test_speed_claim_tallies_the_seeds_in_order():
    runs = _synthetic_runs()
    m = mm.speed(runs)
    assert m.seeds == {"run": 3, "held": 2} and m.holds
    # The reported mean error after 2 epochs, recomputed from the curves.
    mean_09 = np.mean([runs.errors[s]["train"][0.9][1] for s in range(3)])
    assert f"phi=0.9: {100 * mean_09:.2f}%" in m.evidence


def test_fluctuation_claim_needs_a_majority_and_counts_stopped_runs_as_not_held():
    m = mm.fluctuation_at_large_momentum(_synthetic_runs())
    assert m.seeds == {"run": 3, "held": 1} and not m.holds
    per_seed = m.numbers["per_seed"]
    assert per_seed["0"]["train"]["ratio"] > mm.FLUCT_RATIO
    assert per_seed["1"]["train"]["ratio"] < mm.FLUCT_RATIO
    assert per_seed["2"]["train"] == {"diverged": True}
    assert "seeds [2] counted as not held" in m.evidence


def test_error_curve_figure_renders():
    fig = mm.plot_error_curves(_synthetic_runs())
    assert fig.filename == "mnist_momentum.png" and fig.data[:4] == b"\x89PNG"
    assert "SGD with momentum" in fig.title


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_quick_run():
    res = mm.run(Context(quick=True, progress=False))
    assert [(c.number, c.id, c.statement) for c in res.claims] == [tuple(s) for s in mm.CLAIMS]
    for c in res.claims:
        assert c.evidence and c.threshold and c.seeds["run"] == 3
    assert [f.filename for f in res.figures] == ["mnist_momentum.png"]
