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


def test_lr_find_starts_where_train_starts_and_prints_the_steepest_decline(
        tmp_path, monkeypatch, capsys):
    """In-process: the range test gets the parameters and minibatches `lecopt train` with the
    same seed starts from, and the printed suggestion is a NumPy recomputation of the rule."""
    from lecopt import cli, lr_finder, train
    from tests.test_lr_finder import _numpy_suggestions

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
    want = _numpy_suggestions(seen["result"], 30)["steepest"]
    assert f"suggested learning rate: {want:.3g}" in printed


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
