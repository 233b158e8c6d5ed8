"""The ``lecopt`` command end to end on mnist-5k (quick settings) and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import chex
import jax.numpy as jnp
import pytest

from lecopt import data

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def lecopt(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lecopt", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_the_commands():
    out = lecopt("--help")
    assert out.returncode == 0
    for cmd in ("reproduce", "train", "lr-find", "bench"):
        assert cmd in out.stdout


def test_train_writes_history_and_figure(tmp_path):
    out = tmp_path / "run"
    p = lecopt("train", "--features", "32", "--epochs", "2", "--lr", "0.05", "--momentum", "0.9",
               "--batch-norm", "--out", str(out), "--quiet")
    assert p.returncode == 0, p.stderr[-2000:]
    hist = json.loads((out / "history.json").read_text())
    assert len(hist["train_loss"]) == 2 and len(hist["test_error"]) == 2
    assert hist["test_error"][-1] < 0.5  # chance is 0.9
    assert hist["settings"]["batch_norm"] is True
    assert (out / "curves.png").read_bytes()[:8] == PNG_MAGIC
    assert "final:" in p.stdout


def test_train_with_schedule_and_resume(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--features", "16", "--epochs", "2", "--optimizer", "sgd",
            "--schedule", "sgdr:0.001:10:2", "--checkpoint-every", "10", "--out", str(out),
            "--quiet"]
    first = lecopt(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    again = lecopt(*args)  # checkpoints exist: refuses to overwrite them silently
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = lecopt(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((out / "history.json").read_text())
    assert len(a["train_loss"]) == 2


def test_lr_find(tmp_path):
    fig = tmp_path / "lr.png"
    p = lecopt("lr-find", "--features", "32", "--steps", "40", "--min-lr", "1e-5",
               "--max-lr", "10", "--out", str(fig))
    assert p.returncode == 0, p.stderr[-2000:]
    assert fig.read_bytes()[:8] == PNG_MAGIC
    assert "suggested learning rate:" in p.stdout


def test_lr_find_starts_where_train_starts_and_prints_its_suggestions(
        tmp_path, monkeypatch, capsys):
    """In-process: the range test gets the parameters and minibatches `lecopt train` with the
    same seed starts from, and every rule's suggestion is printed (the rules themselves are
    checked against hand computations in tests/test_lr_suggest.py)."""
    from lecopt import cli, lr_finder, train

    seen = {}
    real_range_test, real_fit = lr_finder.lr_range_test, train.fit

    def range_test(loss_fn, params, batches, optimizer, **kw):
        seen["lr_find"] = params, batches
        seen["result"] = real_range_test(loss_fn, params, batches, optimizer, **kw)
        return seen["result"]

    def fit(*args, **kw):
        return real_fit(*args, callback_steps=(0,),
                        callback=lambda step, state: seen.setdefault("train", state), **kw)

    monkeypatch.setattr(lr_finder, "lr_range_test", range_test)
    monkeypatch.setattr(train, "fit", fit)
    common = ["--features", "16", "--batch-norm", "--seed", "3", "--batch-size", "64"]
    assert cli.main(["lr-find", *common, "--steps", "30", "--out", str(tmp_path / "lr.png")]) == 0
    printed = capsys.readouterr().out
    assert cli.main(["train", *common, "--epochs", "1", "--quiet",
                     "--out", str(tmp_path / "run")]) == 0
    params, (xb, yb) = seen["lr_find"]
    chex.assert_trees_all_equal(params, seen["train"].params)
    ds = data.load("mnist-5k")
    order = train.batch_order(3, 0, len(ds.x_train), 64)
    chex.assert_trees_all_equal(xb, jnp.asarray(ds.x_train)[order])
    chex.assert_trees_all_equal(yb, jnp.asarray(ds.y_train)[order])
    res = seen["result"]
    assert f"suggested learning rate: {float(res.suggestions['lecopt']):.3g}\n" in printed
    for rule, rate in res.suggestions.items():
        assert f"  {rule}: {float(rate):.3g}\n" in printed


@pytest.mark.parametrize(
    "args, option",
    [
        (["train", "--lr", "-1"], "--lr"),
        (["train", "--lr", "abc"], "--lr"),
        (["train", "--momentum", "1.0"], "--momentum"),
        (["train", "--optimizer", "lion"], "--optimizer"),
        (["train", "--epochs", "0"], "--epochs"),
        (["train", "--features", "0,3"], "--features"),
        (["train", "--schedule", "bogus:1"], "--schedule"),
        (["train", "--schedule", "triangular:0.5:4"], "base_lr"),
        (["train", "--data", "mnist", "--data-dir", "/nonexistent"], "--data"),
        (["train", "--batch-size", "100000"], "--batch-size"),
        (["lr-find", "--min-lr", "1", "--max-lr", "0.1"], "--min-lr"),
        (["lr-find", "--steps", "1"], "--steps"),
        (["lr-find", "--seeds", "0"], "--seeds"),
        (["train", "--schedule", "warmup:0"], "--schedule"),
        (["bench", "--only", "gpu"], "--only"),
    ],
)
def test_bad_options_give_one_line(tmp_path, args, option):
    p = lecopt(*args, "--out", str(tmp_path / "x")) if args[0] != "bench" else lecopt(*args)
    assert p.returncode == 2, p.stderr
    assert option in p.stderr
    assert "Traceback" not in p.stderr
    # One line naming the option and what is allowed, and a pointer to --help.
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 2 and option in lines[0] and "--help" in lines[1], p.stderr


def test_schedule_one_cycle_and_warmup_specs():
    import numpy as np

    from lecopt import cli, schedules

    t = jnp.arange(0, 200)
    f = cli.make_schedule("one_cycle", 0.4, 200)
    np.testing.assert_allclose(f(t), schedules.one_cycle(0.4, 200)(t), rtol=1e-6)
    g = cli.make_schedule("one_cycle:0.25:10:100", 0.4, 200)
    np.testing.assert_allclose(g(t), schedules.one_cycle(0.4, 200, 0.25, 10, 100)(t), rtol=1e-6)
    # Warm-up to --lr over 20 steps, then cosine from --lr to 0.01 over the other 180 (closed
    # form written out here).
    w = np.asarray(cli.make_schedule("warmup:20:cosine:0.01", 0.4, 200)(t), np.float64)
    tt = np.arange(200.0)
    want = np.where(tt < 20, 0.4 * tt / 20,
                    0.01 + 0.5 * (0.4 - 0.01) * (1 + np.cos(np.pi * (tt - 20) / 180)))
    np.testing.assert_allclose(w, want, rtol=1e-5, atol=1e-7)
    c = np.asarray(cli.make_schedule("warmup:50", 0.4, 200)(t))
    assert c[25] == pytest.approx(0.2) and np.all(c[50:] == np.float32(0.4))
    for bad, word in (("warmup", "warm-up steps"), ("warmup:0", "warmup steps"),
                      ("warmup:10:warmup:5", "cannot follow"), ("one_cycle:1:2:3:4", "0-3"),
                      ("warmup:10:bogus", "unknown schedule")):
        with pytest.raises(ValueError, match=word):
            cli.make_schedule(bad, 0.4, 200)


def test_train_with_one_cycle_records_the_cycle(tmp_path):
    from lecopt import cli

    out = tmp_path / "run"
    assert cli.main(["train", "--features", "8", "--epochs", "2", "--batch-size", "500",
                     "--lr", "0.2", "--schedule", "one_cycle", "--out", str(out),
                     "--quiet"]) == 0
    hist = json.loads((out / "history.json").read_text())
    assert len(hist["train_loss"]) == 2


def test_lr_find_seeds_validate_and_one_cycle_plan(tmp_path, monkeypatch, capsys):
    """In-process: the printed median and spread are recomputed from the seeds' suggestions,
    the printed regrets from the grid's losses, the one-cycle plan from the suggestion."""
    import numpy as np

    from lecopt import cli, lr_finder, train

    seen = {}
    real_test, real_grid = lr_finder.lr_range_test, train.grid_search

    def range_test(*a, **kw):
        seen["result"] = real_test(*a, **kw)
        return seen["result"]

    def grid_search(*a, **kw):
        seen["grid"] = real_grid(*a, **kw)
        return seen["grid"]

    monkeypatch.setattr(lr_finder, "lr_range_test", range_test)
    monkeypatch.setattr(train, "grid_search", grid_search)
    fig = tmp_path / "lr.png"
    assert cli.main(["lr-find", "--features", "8", "--steps", "30", "--seeds", "3",
                     "--validate", "--epochs", "1", "--batch-size", "250",
                     "--out", str(fig)]) == 0
    printed = capsys.readouterr().out
    res, grid = seen["result"], seen["grid"]
    each = np.asarray(res.seed_suggestions["lecopt"])
    assert each.shape == (3,)
    median = float(np.exp(np.median(np.log(each))))
    spread = each.max() / each.min()
    assert f"suggested learning rate: {median:.3g} (median of 3 seeds, spread max/min " \
           f"{spread:.2f}x)" in printed
    assert len(grid.rates) == 13 and grid.epochs == 1
    np.testing.assert_allclose(grid.rates, median * 10.0 ** (0.25 * np.arange(-8, 5)))
    assert grid.best_loss == pytest.approx(np.min(grid.final_loss))
    lines = {ln.split()[0]: ln.split() for ln in printed.splitlines()
             if ln.startswith("  ") and ln.strip().endswith("x") and "rule" not in ln}
    # lecopt's own rate was trained exactly once more: its loss at the grid's centre rate.
    lec = lines["lecopt"]
    centre = grid.final_loss[8]
    assert float(lec[-2]) == pytest.approx(centre, rel=2e-3, abs=1e-4)
    assert float(lec[-1][:-1]) == pytest.approx(centre / grid.best_loss, rel=2e-3)
    steps = 1 * (len(data.load("mnist-5k").x_train) // 250)
    assert (f"one-cycle plan for 1 epochs ({steps} steps): rate {median / 25:.3g} -> "
            f"{median:.3g}") in printed
    assert f"--lr {median:.3g} --epochs 1 --batch-size 250 --schedule one_cycle" in printed
    assert fig.read_bytes()[:8] == PNG_MAGIC
