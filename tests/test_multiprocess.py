"""Training across processes, for real: 2 processes x 2 simulated CPU devices on 127.0.0.1.

Every process is a subprocess started in its own process group and killed when its test ends
(tests/_multiprocess.py); every run binds 127.0.0.1 only, at a free port.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from lecopt import distributed
from tests import _multiprocess as mp

# The lecture's MLP with BatchNorm, `lecopt train`'s optimizer, all of mnist-5k, 2 epochs. A
# large batch keeps it quick (8 steps per epoch) and the comparison sharp: training
# amplifies rounding differences from step to step, the fewer steps the closer to rounding.
LECTURE_RUN = {"features": [512, 512], "n_train": None, "n_test": None, "epochs": 2,
               "batch_size": 500, "seed": 0, "lr": 0.03}
RUN_TIMEOUT = 300


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A compilation cache shared by the runs of this module (restarts load, not compile)."""
    return str(tmp_path_factory.mktemp("jax-cache"))


# `lecopt train --local-processes 2` with the same run (its defaults: sgd 0.03, momentum 0.9,
# weight decay 1e-3, MLP 512-512, seed 0).
CLI_ARGS = ["train", "--local-processes", "2", "--batch-norm", "--epochs", "2",
            "--batch-size", "500", "--quiet"]


@pytest.fixture(scope="module")
def lecture_runs(tmp_path_factory, cache):
    """The lecture's run as 2 processes x 2 devices, as 1 process x 4 devices and through
    ``lecopt train --local-processes 2``, all at once."""
    tmp = tmp_path_factory.mktemp("lecture")
    two, prefix2 = mp.worker_commands(LECTURE_RUN, tmp, "two", 2, 2, LECOPT_TEST_JAX_CACHE=cache)
    one, prefix1 = mp.worker_commands(LECTURE_RUN, tmp, "one", 1, 4, LECOPT_TEST_JAX_CACHE=cache)
    with mp.processes(two + one, tmp / "logs") as group:
        codes = group.wait(RUN_TIMEOUT)
        assert codes == [0, 0, 0], group.outputs()
    assert not group.alive()
    # After the 2-process run: its programs are in the cache (JAX reads the cache settings
    # from the environment in the processes the command starts).
    cli_env = dict(mp.worker_envs(1, 1)[0], **mp.cache_env(cache))
    cli = [([sys.executable, "-m", "lecopt", *CLI_ARGS, "--out", str(tmp / "cli")], cli_env)]
    with mp.processes(cli, tmp / "logs") as group:
        codes = group.wait(RUN_TIMEOUT)
        assert codes == [0], group.outputs()
        cli_output = group.output(0)
    return mp.results(prefix2, 2), mp.results(prefix1, 1)[0], (tmp / "cli", cli_output)


def _max_abs(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def test_two_processes_see_four_devices(lecture_runs):
    two, one, _ = lecture_runs
    for i, r in enumerate(two):
        assert (int(r["processes"]), int(r["devices"]), int(r["local_devices"])) == (2, 4, 2), i
    assert (int(one["processes"]), int(one["devices"]), int(one["local_devices"])) == (1, 4, 4)


def test_two_processes_agree_with_each_other_bit_for_bit(lecture_runs):
    (p0, p1), _, _ = lecture_runs
    for a, b in zip(mp.leaves(p0), mp.leaves(p1)):
        np.testing.assert_array_equal(a, b)
    h0, h1 = dict(p0["history"]), dict(p1["history"])
    # Each process measures its own clock; everything else is the same value.
    h0.pop("wall_time"), h1.pop("wall_time")
    assert h0 == h1


def test_two_processes_of_two_devices_equal_one_process_of_four(lecture_runs):
    two, one, _ = lecture_runs
    p0 = two[0]
    h2, h1 = p0["history"], one["history"]
    assert h2["steps_per_epoch"] == h1["steps_per_epoch"] == 8
    # Float32 rounding: the all-reduces of gradients and BatchNorm statistics sum in another
    # order across processes (gloo) than inside one; 16 steps amplify it a little. Measured:
    # step losses within 1.2e-7 nats, test losses 3e-7, parameters 4.9e-6 (absolute).
    assert _max_abs(h2["step_loss"], h1["step_loss"]) < 1e-6
    assert _max_abs(h2["train_loss"], h1["train_loss"]) < 1e-6
    assert _max_abs(h2["test_loss"], h1["test_loss"]) < 2e-6
    assert _max_abs(h2["test_error"], h1["test_error"]) <= 2e-3  # at most 2 of 1000 flip
    for a, b in zip(mp.leaves(p0), mp.leaves(one)):
        scale = max(1.0, float(np.max(np.abs(b))))
        assert _max_abs(a, b) < 5e-5 * scale
    # evaluate() across processes: the same numbers as fit's last test evaluation, in both
    # processes, and as evaluate() in one process
    for r in two:
        assert float(r["evaluate"][0]) == h2["test_loss"][-1]
        assert float(r["evaluate"][1]) == h2["test_error"][-1]
    assert _max_abs(p0["evaluate"], one["evaluate"]) < 2e-6
    # and the run trained: the loss fell from about log(10)
    assert h2["step_loss"][0] > 1.5 and h2["train_loss"][-1] < 0.6 * h2["step_loss"][0]


def _without_clock(history: dict) -> dict:
    return {k: v for k, v in history.items() if k != "wall_time"}


def test_command_line_local_processes_is_the_same_run(lecture_runs):
    (p0, _), _, (out, output) = lecture_runs
    written = json.loads((out / "history.json").read_text())
    assert (out / "curves.png").stat().st_size > 0
    assert _without_clock({k: written[k] for k in p0["history"]}) == \
        _without_clock(p0["history"])
    # process 0 alone reports: one final line
    assert output.count("final: train_loss=") == 1, output


def test_processes_that_disagree_about_the_run_fail_alike(tmp_path, cache):
    config = dict(KILL_RUN, epochs=1)
    commands, _ = mp.worker_commands(config, tmp_path, "disagree", 2, 2,
                                     LECOPT_TEST_JAX_CACHE=cache)
    commands[1][1]["LECOPT_TEST_CONFIG_CHANGES"] = json.dumps({"seed": 4, "n_test": 100})
    with mp.processes(commands, tmp_path / "logs") as group:
        codes = group.wait(RUN_TIMEOUT)
    for i, code in enumerate(codes):
        out = group.output(i)
        assert code != 0 and "START" in out and "DONE" not in out, out
        line = [x for x in out.splitlines() if x.startswith("ValueError: fit across 2")]
        assert line and "the processes disagree about the run" in line[0], out
        for field in ("seed", "test_data_contents", "eval_batch_size"):
            assert f"{field} in process(es) [1]" in line[0], line
        assert "train_data_contents" not in line[0], line


@pytest.mark.parametrize("process_id", [0, 1])
def test_no_coordinator_is_one_clear_line_within_the_timeout(tmp_path, process_id):
    """Process 1 with nobody at the coordinator's address; process 0 with nobody joining."""
    port = distributed.free_port()
    env = mp.worker_envs(2, 2, port=port)[process_id]
    code = ("from lecopt import distributed; distributed.initialize(timeout_s=3); "
            "print('JOINED')")
    with mp.processes([([sys.executable, "-c", code], env)], tmp_path) as group:
        t0 = time.monotonic()
        [rc] = group.wait(120)
        elapsed = time.monotonic() - t0
    out = group.output(0)
    errors = [line for line in out.splitlines() if line.startswith("lecopt: error:")]
    assert rc == distributed.EXIT_INIT_TIMEOUT, out
    assert len(errors) == 1 and "JOINED" not in out and "Check failure" not in out, out
    assert f"process {process_id} could not start the 2-process run within 3 s" in errors[0]
    if process_id == 1:
        assert f"nobody listens at the coordinator address 127.0.0.1:{port}" in errors[0]
    else:
        assert "answers but not all 2 processes joined" in errors[0]
    # 3 s of waiting plus the interpreter's and JAX's start (slow on a loaded machine)
    assert elapsed < 60, elapsed


# --------------------------------------------------------------------------------------------
# Kill one process, resume both.

# A small run with a checkpoint every 2 steps: 8 steps per epoch, 8 checkpoints in all.
KILL_RUN = {"features": [64], "n_train": 512, "n_test": 200, "epochs": 2, "batch_size": 64,
            "seed": 3, "lr": 0.05, "checkpoint_every": 2}
HEARTBEAT_S = 10  # a killed process is declared dead after this long
# (victim, the checkpoint after which it is SIGKILLed): both processes, mid-epoch and at
# the end of an epoch.
KILLS = [(1, 4), (0, 8), (1, 12)]
MORE_KILLS = [(0, 2), (1, 6), (0, 10), (1, 10), (0, 12), (1, 2)]


def _kill_env(cache: str) -> dict:
    return {"LECOPT_TEST_JAX_CACHE": cache, "LECOPT_TEST_HEARTBEAT": str(HEARTBEAT_S)}


def _run_to_end(tmp: Path, name: str, config: dict, cache: str) -> list[dict]:
    commands, prefix = mp.worker_commands(config, tmp, name, 2, 2, **_kill_env(cache))
    with mp.processes(commands, tmp / "logs") as group:
        codes = group.wait(RUN_TIMEOUT)
        assert codes == [0, 0], group.outputs()
    return mp.results(prefix, 2)


def _kill_and_resume(tmp: Path, victim: int, after: int, cache: str) -> dict:
    """Kills ``victim`` after checkpoint ``after``; checks the survivor ends with an error
    within the heartbeat timeout; resumes both; returns their results and timings."""
    tmp.mkdir(parents=True, exist_ok=True)
    config = dict(KILL_RUN, checkpoint_dir=str(tmp / "checkpoints"))
    commands, _ = mp.worker_commands(config, tmp, "killed", 2, 2, **_kill_env(cache))
    survivor = 1 - victim
    with mp.processes(commands, tmp / "logs") as group:
        line = group.wait_for_line(0, f"CKPT {after}", RUN_TIMEOUT)
        assert line is not None, group.outputs()
        group.kill(victim)
        killed_at = time.monotonic()
        try:
            code = group.procs[survivor].wait(timeout=HEARTBEAT_S + 50)
        except Exception:  # a hang: reported below, killed by processes()
            code = None
        waited = time.monotonic() - killed_at
        survivor_output = group.output(survivor)
        finished = "DONE" in group.output(0) or "DONE" in group.output(1)
    print(f"killed process {victim} after checkpoint {after}: the survivor ended with {code} "
          f"{waited:.1f} s later")
    committed = sorted(int(p.name) for p in (tmp / "checkpoints").iterdir() if p.name.isdigit())
    return {"code": code, "waited": waited, "finished_before_kill": finished,
            "committed": committed, "survivor_output": survivor_output,
            "resumed": _run_to_end(tmp, "resumed", config, cache)}


@pytest.fixture(scope="module")
def kills(tmp_path_factory, cache):
    """The uninterrupted checkpointed 2-process run and the KILLS, all at once."""
    root = tmp_path_factory.mktemp("kills")
    reference = dict(KILL_RUN, checkpoint_dir=str(root / "reference-checkpoints"))
    # First the reference alone, which fills the compilation cache, then the kills at once
    # (they load the programs; their waits for a dead process overlap).
    ref = _run_to_end(root, "reference", reference, cache)
    with ThreadPoolExecutor(len(KILLS)) as pool:
        runs = [pool.submit(_kill_and_resume, root / f"kill-{v}-{k}", v, k, cache)
                for v, k in KILLS]
        return ref, [r.result() for r in runs]


def _check_kill(reference: list[dict], run: dict) -> None:
    assert not run["finished_before_kill"]
    # The survivor ended with an error (JAX's abort when the heartbeats stop, or the error
    # of a collective whose peer is gone), within the heartbeat timeout plus a margin for a
    # loaded machine: not a hang.
    assert run["code"] is not None and run["code"] != 0, run["survivor_output"][-3000:]
    assert run["waited"] < HEARTBEAT_S + 50, run["waited"]
    assert run["committed"], "no checkpoint survived the kill"
    for resumed in run["resumed"]:
        for a, b in zip(mp.leaves(resumed), mp.leaves(reference[0])):
            np.testing.assert_array_equal(a, b)
        assert _without_clock(resumed["history"]) == _without_clock(reference[0]["history"])


@pytest.mark.parametrize("index", range(len(KILLS)), ids=[f"kill-{v}-after-{k}"
                                                         for v, k in KILLS])
def test_kill_one_process_then_resume_both_is_bit_identical(kills, index):
    reference, runs = kills
    _check_kill(reference, runs[index])


@pytest.mark.slow
@pytest.mark.parametrize("victim,after", MORE_KILLS)
def test_more_kill_points(tmp_path, cache, victim, after):
    reference = _run_to_end(tmp_path, "reference",
                            dict(KILL_RUN, checkpoint_dir=str(tmp_path / "ref")), cache)
    _check_kill(reference, _kill_and_resume(tmp_path / "kill", victim, after, cache))


# --------------------------------------------------------------------------------------------
# The launcher leaves nothing behind.


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # the field after the state is the parent's pid
            out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")
@pytest.mark.parametrize("signal_name", ["SIGINT", pytest.param("SIGTERM",
                                                                 marks=pytest.mark.slow)])
def test_launcher_interrupted_stops_every_process(tmp_path, signal_name):
    import signal

    args = ["train", "--local-processes", "2", "--epochs", "50", "--quiet",
            "--out", str(tmp_path / "out")]
    env = mp.worker_envs(1, 1)[0]
    with mp.processes([([sys.executable, "-m", "lecopt", *args], env)], tmp_path) as group:
        launcher = group.procs[0].pid
        deadline = time.monotonic() + 60
        while len(_children(launcher)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        children = _children(launcher)
        assert len(children) == 2, group.outputs()
        group.procs[0].send_signal(getattr(signal, signal_name))
        [code] = group.wait(60)
        assert code == 130, group.outputs()
        assert "stopped all 2 processes" in group.output(0)
    for pid in children:  # reaped by the launcher: gone, not zombies
        assert not Path(f"/proc/{pid}").exists(), pid
