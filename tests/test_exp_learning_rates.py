"""The learning-rates experiment: its metrics on inputs with known answers, and one quick run."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from lecopt.experiments import Result
from lecopt.experiments import learning_rates as exp

# --------------------------------------------------------------------------------- phases


def _range_curve(stop_at: float | None = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Ten points per decade from 1e-6 to 10: flat at 2 up to 1e-3, then down 0.5 per decade
    to 1.0 at 1e-1, flat to 1e-0.5, then up 1.0 per decade; NaN from ``stop_at`` on."""
    lrs = 10.0 ** (np.arange(71) / 10 - 6)
    d = np.log10(lrs)
    s = np.full(lrs.shape, 2.0)
    s = np.where(d > -3, 2.0 - 0.5 * (d + 3), s)
    s = np.where(d > -1, 1.0, s)
    s = np.where(d > -0.5, 1.0 + 1.0 * (d + 0.5), s)
    if stop_at is not None:
        s = np.where(lrs > stop_at * 1.0001, np.nan, s)
    return lrs, s


def test_phases_known_curve():
    lrs, s = _range_curve()
    ph = exp.phases(lrs, s)
    # The first 20% of 71 points (15 points, up to 10**-4.6) are exactly flat.
    assert ph["plateau_rel_change"] == 0.0
    assert ph["plateau_end_lr"] == pytest.approx(10**-4.6)
    # Steepest decade: 0.5 of the start value 2 -> 25%, inside 1e-3 .. 1e-1.
    assert ph["decline_drop"] == pytest.approx(0.25)
    assert 1e-3 * 0.999 <= ph["decline_from_lr"] <= 1e-2 * 1.001
    assert ph["decline_to_lr"] == pytest.approx(ph["decline_from_lr"] * 10)
    assert ph["min_loss"] == pytest.approx(1.0)
    assert 1e-1 * 0.999 <= ph["min_lr"] <= 10**-0.5 * 1.001
    # The last finite point is lr = 1 (index 60): 1.5 / 1.0.
    assert ph["last_index"] == 60
    assert ph["stopped_early"] is True
    assert ph["end_ratio"] == pytest.approx(1.5)
    assert (ph["plateau"], ph["decline"], ph["blowup"]) == (True, True, True)


def test_phases_no_blowup_and_noisy_plateau():
    lrs, s = _range_curve(stop_at=None)
    s = np.where(lrs > 10**-0.5, 1.0, s)  # flat to the end: no stop, end ratio 1
    ph = exp.phases(lrs, s)
    assert not ph["stopped_early"] and ph["end_ratio"] == pytest.approx(1.0)
    assert ph["blowup"] is False
    # A rise to 2x the minimum without stopping counts as a blow-up.
    s2 = s.copy()
    s2[-1] = 2.0
    assert exp.phases(lrs, s2)["blowup"] is True
    # A plateau that wanders by 10% is not a plateau.
    s3 = s.copy()
    s3[5] = 2.2
    ph3 = exp.phases(lrs, s3)
    assert ph3["plateau_rel_change"] == pytest.approx(0.1)
    assert ph3["plateau"] is False


def test_phases_weak_decline_is_not_steep():
    lrs = 10.0 ** (np.arange(71) / 10 - 6)
    s = 2.0 - 0.05 * (np.log10(lrs) + 6)  # 2.5% of the start per decade, everywhere
    ph = exp.phases(lrs, s)
    assert ph["decline_drop"] == pytest.approx(0.025)
    assert ph["decline"] is False


def test_phases_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        exp.phases([1e-3, 1e-2], [2.0])
    with pytest.raises(ValueError, match=r"smoothed\[0\]"):
        exp.phases([1e-3, 1e-2], [np.nan, 2.0])
    with pytest.raises(ValueError, match="plateau_fraction"):
        exp.phases([1e-3, 1e-2], [2.0, 1.0], plateau_fraction=0.0)


# ----------------------------------------------------------------------------- cycle_extrema


def test_cycle_extrema_triangle_and_partial_cycle():
    # A triangle of period 8 between 1 and 5, written out by hand, plus 3 points of a 4th cycle.
    one = np.array([1, 2, 3, 4, 5, 4, 3, 2], dtype=float)
    v = np.concatenate([one, one * 2, one * 3, [1.0, 9.0, 9.0]])
    ex = exp.cycle_extrema(v, 8)
    np.testing.assert_array_equal(ex["peaks"], [5, 10, 15])
    np.testing.assert_array_equal(ex["peak_steps"], [4, 12, 20])
    np.testing.assert_array_equal(ex["troughs"], [1, 2, 3])
    np.testing.assert_array_equal(ex["trough_steps"], [0, 8, 16])


def test_cycle_extrema_first_occurrence_and_errors():
    ex = exp.cycle_extrema([0.0, 1.0, 1.0, 0.0], 4)
    assert ex["peak_steps"].tolist() == [1] and ex["trough_steps"].tolist() == [0]
    with pytest.raises(ValueError, match="period"):
        exp.cycle_extrema([1.0, 2.0], 0)
    with pytest.raises(ValueError, match="period"):
        exp.cycle_extrema([1.0, 2.0], 1.5)
    with pytest.raises(ValueError, match="fewer than one period"):
        exp.cycle_extrema([1.0, 2.0], 3)


# ----------------------------------------------------------------------------- restart_steps


def _numpy_sgdr(num_steps: int, hi: float, lo: float, period: int, mult: int,
                decay: float) -> np.ndarray:
    """SGDR written as a plain loop over cycles (Loshchilov & Hutter)."""
    out, start, length, i = [], 0, period, 0
    for t in range(num_steps):
        if t - start >= length:
            start, length, i = start + length, length * mult, i + 1
        peak = hi * decay**i
        out.append(lo + (peak - lo) * (1 + math.cos(math.pi * (t - start) / length)) / 2)
    return np.asarray(out)


def test_restart_steps_on_numpy_sgdr():
    v = _numpy_sgdr(700, 0.1, 1e-4, 10, 2, 0.8)
    assert exp.restart_steps(v).tolist() == [10, 30, 70, 150, 310, 630]
    v1 = _numpy_sgdr(100, 1.0, 0.0, 25, 1, 1.0)
    assert exp.restart_steps(v1).tolist() == [25, 50, 75]


def test_restart_steps_sawtooth_ripple_and_edge_cases():
    saw = np.tile(np.arange(5.0, 0.0, -1.0), 3)  # 5 4 3 2 1 5 4 ...
    assert exp.restart_steps(saw).tolist() == [5, 10]
    rippled = saw.copy()
    rippled[4] = rippled[3] + 1e-6  # a rise of 2.5e-7 of the range: below the tolerance
    assert exp.restart_steps(rippled).tolist() == [5, 10]
    assert exp.restart_steps(rippled, rel_tol=1e-9).tolist() == [4, 5, 10]
    assert exp.restart_steps(np.full(10, 0.3)).size == 0
    assert exp.restart_steps([1.0]).size == 0
    with pytest.raises(ValueError, match="1-D"):
        exp.restart_steps(np.ones((2, 2)))


# -------------------------------------------------------------------------------------- ulps


def test_ulps_known_distances():
    one32 = np.float32(1.0)
    assert exp.ulps(one32, 1.0, np.float32) == 0
    assert exp.ulps(np.nextafter(one32, np.float32(2)), 1.0, np.float32) == 1
    assert exp.ulps(1.0 + 3 * np.spacing(1.0), 1.0, np.float64) == 3
    # The reference is rounded to the dtype first: float32(0.1) is 0 ulp from 0.1.
    assert exp.ulps(np.float32(0.1), 0.1, np.float32) == 0
    np.testing.assert_array_equal(exp.ulps([2.0, 4.0], [2.0, 4.0], np.float64), [0, 0])


def test_schedule_evaluator_reuses_its_program(compile_counter):
    """Schedules are pytrees: a new schedule of the same kind runs the compiled evaluator."""
    from lecopt import schedules

    steps = np.arange(13)
    a = exp._eval(schedules.triangular2(0.0, 1.0, 3), steps, x64=False)
    with compile_counter.expect(0):
        b = exp._eval(schedules.triangular2(0.5, 2.0, 4), steps, x64=False)
    # Smith's formula in NumPy.
    for v, (lo, hi, s) in ((a, (0.0, 1.0, 3)), (b, (0.5, 2.0, 4))):
        cycle = np.floor(1 + steps / (2 * s))
        x = np.abs(steps / s - 2 * cycle + 1)
        want = lo + (hi - lo) * np.maximum(0, 1 - x) / 2 ** (cycle - 1)
        np.testing.assert_allclose(v, want, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------ quick run


@pytest.fixture(scope="module")
def quick_result(quick_reproduction) -> Result:
    return quick_reproduction.results[exp.ID]


def test_quick_run_claims(quick_result):
    res = quick_result
    assert [(c.number, c.id, c.statement) for c in res.claims] == [tuple(s) for s in exp.CLAIMS]
    by_id = {c.id: c for c in res.claims}
    # Deterministic claims: exact schedules.
    for cid in ("linear-decay-table", "cyclical-rates", "sgdr-restarts"):
        assert by_id[cid].holds, by_id[cid].evidence
        assert by_id[cid].seeds is None
    # The seed-dependent claims: each seed's verdicts are the rules applied to its own
    # numbers, and the regrets are recomputed from the returned grid losses.
    lecture = by_id["lr-range-test"]
    per_seed = lecture.numbers["per_seed"]
    assert [p["seed"] for p in per_seed] == [0, 1]
    for p in per_seed:
        losses = np.asarray(p["grid_final_loss"])
        np.testing.assert_allclose(p["grid_rates"], exp.grid_rates(exp.SETTINGS["quick"]))
        assert p["grid_best_loss"] == np.min(losses)
        assert p["grid_best_rate"] == p["grid_rates"][int(np.argmin(losses))]
        for rule in exp.RULES_JUDGED:
            r = p["rules"][rule]
            assert r["rate"] == p["suggestions"][rule]
            assert exp.RANGE_MIN_LR < r["rate"] < exp.RANGE_MAX_LR
            assert r["regret"] == pytest.approx(r["final_loss"] / np.min(losses), rel=1e-12)
            assert r["hit"] == bool(r["regret"] <= exp.REGRET_HIT)
            # The grid-best is the best of the grid only: a rate between grid points can do
            # better (regret < 1) but not by much on a grid this fine.
            assert r["regret"] > 0.7
        ph = p["phases"]
        assert p["three_phases"] == (ph["plateau"] and ph["decline"] and ph["blowup"])
    held = [p["three_phases"] and p["rules"]["lecture"]["hit"] for p in per_seed]
    assert lecture.seeds == {"run": 2, "held": sum(held)}
    assert lecture.holds == all(held)  # a strict majority of two seeds
    hits = [p["rules"]["lecopt"]["hit"] for p in per_seed]
    second = lecture.numbers["lecopt_verdict"]
    assert second == {"holds": all(hits), "seeds": {"run": 2, "held": sum(hits)}}
    assert "reduced grid" in lecture.evidence
    verdict = lambda ok: "REPRODUCED" if ok else "NOT REPRODUCED"
    assert f"on {sum(hits)}/2 seeds: {verdict(all(hits))}." in lecture.evidence
    for p in per_seed:  # the evidence quotes each seed's regret as measured
        assert f"regret {p['rules']['lecture']['regret']:.2f}x" in lecture.evidence
        assert f"regret {p['rules']['lecopt']['regret']:.2f}x" in lecture.evidence


def test_quick_run_numbers_match_closed_forms(quick_result):
    by_id = {c.id: c for c in quick_result.claims}
    ld = by_id["linear-decay-table"].numbers
    # The lecture's closed form in Python floats, bit for bit (0.0775 comes out as
    # 0.07750000000000001 in float64: the formula's rounding, which lecopt reproduces).
    want = [(1 - t / 4) * 0.1 + (t / 4) * 0.01 if t <= 4 else 0.01 for t in range(7)]
    assert ld["float64"] == want
    assert ld["float32"] == pytest.approx(want, rel=1e-7)
    sg = by_id["sgdr-restarts"].numbers
    assert sg["float32"]["found_restarts"] == [10, 30, 70, 150, 310, 630, 1270, 2550]
    assert [f["found"] for f in sg["float32"]["far"]] == [[655350], [1310710], [10485750]]
    # The SGDR loop in NumPy: the same restarts on the dense grid.
    assert exp.restart_steps(_numpy_sgdr(2551, 0.1, 1e-4, 10, 2, 0.8)).tolist() == \
        sg["float64"]["found_restarts"]
    cy = by_id["cyclical-rates"].numbers
    assert cy["triangular2_float64"]["peaks"] == pytest.approx(
        [0.006, 0.0035, 0.00225, 0.001625, 0.0013125], rel=1e-15)


def test_quick_run_figures(quick_result):
    assert [f.filename for f in quick_result.figures] == [
        "lr_range_test.png", "linear_decay.png", "schedules.png", "sgdr.png"]
    for f in quick_result.figures:
        with Image.open(io.BytesIO(f.data)) as im:
            assert im.format == "PNG" and min(im.size) > 100
        assert f.caption and f.title


def test_sgdr_figure_draws_the_measured_far_window():
    m = exp.sgdr_restarts(exp.schedule_values())
    window, values = m.data["windows"][(exp.SGDR_SHOWN_FAR, "float32")]
    start = 10 * (2**exp.SGDR_SHOWN_FAR - 1)
    assert window[exp.SGDR_WINDOW] == start
    # The window's only jump is the restart, to max_lr * decay^i in float32.
    assert (window[0] + exp.restart_steps(values)).tolist() == [start]
    assert values[exp.SGDR_WINDOW] == pytest.approx(0.1 * 0.8**exp.SGDR_SHOWN_FAR, rel=1e-6)
    assert exp.plot_sgdr(m.data).filename == "sgdr.png"
