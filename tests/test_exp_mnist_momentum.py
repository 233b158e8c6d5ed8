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


def test_thresholds_are_the_lectures_settings():
    assert mm.LEARNING_RATE == 0.03 and mm.WEIGHT_DECAY == 1e-3
    assert mm.MOMENTA == (0.0, 0.5, 0.9, 0.99)
    assert set(mm.CLAIM_IDS) == {"mnist-momentum-speed", "mnist-momentum-fluctuation"}


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_quick_run(tmp_path):
    res = mm.run(Context(out_dir=tmp_path, quick=True, progress=False))
    assert [c.id for c in res.claims] == list(mm.CLAIM_IDS)
    assert [c.number for c in res.claims] == list(mm.CLAIM_NUMBERS)
    for c in res.claims:
        assert c.evidence and c.threshold and c.seeds["run"] == 3
        assert any(ch.isdigit() for ch in c.evidence)
    assert (tmp_path / "figures" / "mnist_momentum.png").stat().st_size > 10_000
