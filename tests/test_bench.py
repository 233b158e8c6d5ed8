"""The bench's machinery: traffic read off the HLO, the update table, the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lecopt import bench, train


def test_compiled_traffic_of_axpy_is_three_streams():
    n = 1 << 18
    x = jnp.ones(n)
    f = jax.jit(lambda x, y: x + 2.0 * y, donate_argnums=(0,))
    hlo = f.lower(x, x).compile().as_text()
    t = bench.compiled_traffic(hlo)
    assert t["bytes"] == 3 * 4 * n
    assert t["loops"] == 1


def test_compiled_traffic_of_momentum_counts_every_stream():
    shapes = [(256, 256), (256,)]
    _, hlo = bench.updates._jax_contestant(bench.OPTIMIZER_CASES["momentum"]["lecopt"](), shapes, 0)
    t = bench.compiled_traffic(hlo, min_bytes=1 << 16)
    # Only the big leaf counts. XLA:CPU emits single-output loops: nu' = phi nu - alpha g
    # (nu, g in; nu' out) and p' = p + nu' (p, nu' in; p' out): 6 streams in 2 loops.
    assert t == {"bytes": 6 * 4 * 256 * 256, "loops": 2}


def test_compiled_traffic_of_adam_is_three_loops_ten_streams():
    adam = bench.OPTIMIZER_CASES["adam"]["lecopt"]()
    _, hlo = bench.updates._jax_contestant(adam, [(256, 256)], 0)
    # s (s, g in), r (r, g in), p (p, s', r' in): 3 + 3 + 4 streams.
    assert bench.compiled_traffic(hlo) == {"bytes": 10 * 4 * 256 * 256, "loops": 3}


def test_run_updates_small():
    res = bench.run_updates(rounds=2, repeats=1, shapes=[(128, 64), (64,)],
                            cases=["momentum", "adam"])
    names = {(r["optimizer"], r["contestant"]) for r in res["rows"]}
    assert {("momentum", "lecopt"), ("momentum", "optax"), ("adam", "lecopt"),
            ("adam", "optax")} <= names
    assert set(res["ratios"]) >= {"momentum: lecopt/optax", "adam: lecopt/optax"}
    assert all(r["median_s"] > 0 for r in res["rows"])
    text = bench.format_section(res)
    assert "lecopt/optax" in text and "GB/s" in text


def test_cli_bench_help_and_bad_section(tmp_path):
    out = subprocess.run([sys.executable, "-m", "lecopt", "bench", "--help"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "--json" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "lecopt", "bench", "--only", "nope"],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert "--only" in bad.stderr and "Traceback" not in bad.stderr


def test_bench_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(bench.SECTIONS, "updates", _small_updates)
    path = tmp_path / "b.json"
    out = bench.run(["updates"], quick=True, json_path=str(path))
    data = json.loads(path.read_text())
    assert list(data["sections"]) == ["updates"]
    assert data["sections"]["updates"]["ratios"] == pytest.approx(
        out["sections"]["updates"]["ratios"])
    assert set(data["sections"]["updates"]["ratios"]) == {"rmsprop: lecopt/optax"} | (
        {"rmsprop: lecopt/torch"} if bench.updates._torch_available() else set())
    assert "ratio rmsprop: lecopt/optax" in capsys.readouterr().out


def test_bench_rejects_an_unknown_section_before_running():
    with pytest.raises(ValueError, match=r"unknown \['gpu'\]; choose from updates, lr, nn, "
                       r"train, schedules, nnx, lr-suggest, lr-dependence"):
        bench.run(["updates", "gpu"])


def test_default_sections_leave_out_only_the_long_suggestion_suite():
    assert set(bench.SECTIONS) - set(bench.DEFAULT_SECTIONS) == {"lr-suggest", "lr-dependence"}
    assert bench.SECTIONS["lr-suggest"] is bench.lr_suggest.section
    assert bench.SECTIONS["schedules"] is bench.schedules.run


def test_a_section_table_and_figures_are_printed_and_written(tmp_path, monkeypatch, capsys):
    import matplotlib.pyplot as plt

    rows = [{"task": "t", "num_steps": n, "rule": rule, "rate": rate, "spread": 1.0,
             "final_loss": loss, "regret": loss / 0.5, "grid_best_rate": 0.1,
             "grid_best_loss": 0.5}
            for n in (100, 400) for rule, rate, loss in (("lecopt", 0.1, 0.5),
                                                         ("lecture", 0.01, 0.9))]

    def fake(quick=False):
        return {"title": "suggestions", "table": bench.lr_suggest.format_table(rows),
                "rows": [], "ratios": {}, "notes": [],
                "figures": {"regret.png": train.figure_png(
                    bench.lr_suggest.plot(rows))}}

    monkeypatch.setitem(bench.SECTIONS, "lr-suggest", fake)
    out = bench.run(["lr-suggest"], out_dir=str(tmp_path / "figs"),
                    json_path=str(tmp_path / "b.json"))
    text = capsys.readouterr().out
    png = tmp_path / "figs" / "regret.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"figure: wrote {png}" in text
    # lecture's rate 0.01 trains to 0.9 against the best 0.5: regret 1.8, a miss at 1.25.
    assert "0.01: 1.80x" in text and "lecture | 0% | 100% | 1.800" in text
    assert "figures" not in out["sections"]["lr-suggest"]
    plt.close("all")


def _small_updates(quick: bool = False):
    return bench.run_updates(rounds=2, repeats=1, shapes=[(64, 32), (32,)], cases=["rmsprop"])


def test_lr_bench_contestants_compute_the_same_sweep():
    contestants, agree, steps = bench.lr._sweep_contestants()
    assert steps == bench.lr.NUM_STEPS and agree < 1e-5
    record = contestants["compiled sweep (lr_range_test's program)"]()
    rules = contestants["the rules on the record (host NumPy)"]()
    end_to_end = contestants["lr_range_test end to end"]()
    assert rules == pytest.approx(end_to_end.suggestions, rel=1e-6)
    assert record.losses.shape == (bench.lr.NUM_STEPS,)
    one, three, shared = (f() for f in bench.lr._timed_seeds(
        bench.lr._loss, lambda key: bench.lr._problem()[0], bench.lr._problem()[1]).values())
    # The same params and order for seed 0 either way: the seeds program is one sweep per seed.
    np.testing.assert_allclose(np.asarray(three.losses[0]), np.asarray(one.losses[0]),
                               rtol=1e-5, atol=1e-6)
    # Sharing seed 0's order: seed 0 is unchanged, the other seeds read seed 0's minibatches.
    np.testing.assert_allclose(np.asarray(shared.losses[0]), np.asarray(one.losses[0]),
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(shared.losses[1]), np.asarray(three.losses[1]))
    # Every seed starts from the same params here, so on one shared order every seed's sweep
    # is seed 0's single sweep.
    np.testing.assert_allclose(np.asarray(shared.losses[1]), np.asarray(one.losses[0]),
                               rtol=1e-5, atol=1e-6)


def test_lr_bench_floors_do_the_work_they_name():
    contestants, _, _ = bench.lr._sweep_contestants()
    params, batches = bench.lr._problem()
    # The kernel floor is the sweep whose every step sees minibatch 0: the same as the sweep
    # over 100 copies of it.
    floor = contestants["floor: compiled sweep on one cached minibatch"]()
    tiled = jax.tree.map(lambda a: jnp.repeat(a[:1], bench.lr.NUM_STEPS, axis=0), batches)
    ref = bench.lr.lr_finder._sweep(
        params, None, tiled, None, bench.lr.MIN_LR, bench.lr.MAX_LR, bench.lr.SMOOTHING,
        bench.lr.DIVERGE, loss_fn=bench.lr._loss, optimizer=bench.lr._optimizer,
        num_steps=bench.lr.NUM_STEPS, mode="exponential", with_state=False)
    np.testing.assert_allclose(np.asarray(floor.losses), np.asarray(ref.losses), rtol=1e-5)
    # The read floor copies every minibatch: its buffer ends holding the last one.
    landed = contestants["floor: read each minibatch once (NumPy copy)"]()
    np.testing.assert_array_equal(landed, np.asarray(batches["x"][-1]))
