"""Training across processes, for real: 2 processes x 2 simulated CPU devices on 127.0.0.1.

Every process is a subprocess started in its own process group and killed when its test ends
(tests/_multiprocess.py); every run binds 127.0.0.1 only, at a free port. Few processes, each
doing several jobs (tests/_dist_worker.py), all started at once by one fixture (``runs``):
the lecture's run (2 x 2 and 1 x 4, then the command line), the small runs (disagreeing
calls, the checkpointed reference, the sweeps; 2 x 2 and 1 x 4), the chain of kills (one run
killed and resumed in turn at every kill point), the processes without a coordinator.
"""

from __future__ import annotations

import contextlib
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
LECTURE = {"name": "lecture", "kind": "fit", "features": [512, 512], "n_train": None,
           "n_test": None, "epochs": 2, "batch_size": 500, "seed": 0, "lr": 0.03}
RUN_TIMEOUT = 300
# A small run with a checkpoint every 2 steps: 8 steps per epoch, 8 checkpoints in all.
SMALL = {"features": [64], "n_train": 512, "n_test": 200, "batch_size": 64}
EVERY = 2
KILL_RUN = {"name": "reference", "kind": "fit", **SMALL, "epochs": 2, "seed": 3, "lr": 0.05,
            "checkpoint_every": EVERY}
# Sweeps of the small model, 1 epoch, 4 runs each: every strategy; "vmap" with one seed (one
# order shared by the runs), "auto" (vmap on a CPU for this model) with two seeds (one set of
# minibatches gathered per run). 4 runs in both: the vmapped programs but training's are shared.
SWEEP = {"kind": "sweep", **SMALL, "epochs": 1, "lrs": [0.05, 0.02], "seeds": [3, 4]}
SWEEPS = [dict(SWEEP, name="sweep-loop", strategy="loop"),
          dict(SWEEP, name="sweep-vmap", strategy="vmap", lrs=[0.05, 0.02, 0.01, 0.1],
               seeds=[3]),
          dict(SWEEP, name="sweep-auto", strategy="auto")]
# Calls that process 1 makes differently (LECOPT_TEST_CONFIG_CHANGES): each must fail alike in
# both processes, which then go on with the next job.
DISAGREE = [dict(KILL_RUN, name="disagree-fit", epochs=1, checkpoint_every=None,
                 expect_error=True),
            dict(SWEEP, name="disagree-sweep", strategy="loop", expect_error=True)]
CHANGES = {"disagree-fit": {"seed": 4, "n_test": 100}, "disagree-sweep": {"lrs": [0.05, 0.03]}}
HEARTBEAT_S = 10  # a killed process is declared dead after this long
# (victim, the checkpoint after which it is SIGKILLed), in turn in one run: each resumed run is
# killed again, the last one runs to the end. Both processes, mid-epoch and at an epoch's end.
KILLS = [(1, 4), (0, 8), (1, 12)]
MORE_KILLS = [(0, 2), (1, 6), (1, 8), (0, 10), (0, 12)]

# `lecopt train --local-processes 2` with the lecture's run (its defaults: sgd 0.03, momentum
# 0.9, weight decay 1e-3, MLP 512-512, seed 0).
CLI_ARGS = ["train", "--local-processes", "2", "--batch-norm", "--epochs", "2",
            "--batch-size", "500", "--quiet"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A compilation cache shared by the runs of this module (restarts load, not compile)."""
    return str(tmp_path_factory.mktemp("jax-cache"))


def _env(cache: str, **extra: str) -> dict:
    return {"LECOPT_TEST_JAX_CACHE": cache, "LECOPT_TEST_HEARTBEAT": str(HEARTBEAT_S), **extra}


def _quick_to_compile(commands: list) -> list:
    """``commands`` with LLVM's optimisation off in XLA:CPU: the small runs' time is mostly
    compilation, which this halves. (Not for the lecture's run: it compares 2 x 2 devices
    with 1 x 4 over 16 steps at XLA's default settings, the users'.) Runs compared bit for
    bit or to rounding are all compiled alike."""
    for _, env in commands:
        env["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
    return commands


def _lecture(tmp: Path, cache: str) -> dict:
    """The lecture's run as 2 processes x 2 devices and as 1 process x 4 devices at once;
    then through ``lecopt train --local-processes 2`` (which loads their compiled programs)."""
    tmp.mkdir(parents=True, exist_ok=True)
    two, prefix2 = mp.worker_commands([LECTURE], tmp, "two", 2, 2, **_env(cache))
    one, prefix1 = mp.worker_commands([LECTURE], tmp, "one", 1, 4, **_env(cache))
    # JAX reads the cache settings from the environment in the processes the command starts.
    cli_env = dict(mp.worker_envs(1, 1)[0], **mp.cache_env(cache))
    cli = [([sys.executable, "-m", "lecopt", *CLI_ARGS, "--out", str(tmp / "cli")], cli_env)]
    with mp.processes(two + one, tmp / "logs") as group:
        pair = mp.Group(group.procs[:2], group.logs[:2])
        assert pair.wait(RUN_TIMEOUT) == [0, 0], group.outputs()
        # The 2 processes are done, their programs are in the cache: the command line's
        # processes load them, while the 1-process run goes on.
        with mp.processes(cli, tmp / "logs") as command:
            codes = command.wait(RUN_TIMEOUT)
            assert codes == [0], command.outputs()
            cli_output = command.output(0)
        assert group.wait(RUN_TIMEOUT) == [0, 0, 0], group.outputs()
    assert not group.alive()
    return {"lecture": mp.results(prefix2, "lecture", 2),
            "one/lecture": mp.results(prefix1, "lecture", 1)[0],
            "cli": (tmp / "cli", cli_output)}


def _small_runs(tmp: Path, cache: str, checkpoints: Path) -> dict:
    """One set of 2 processes x 2 devices doing the small jobs in turn (the disagreeing calls,
    the uninterrupted checkpointed run the kills are compared with, the sweeps), and 1
    process x 4 devices doing the sweeps at the same time."""
    tmp.mkdir(parents=True, exist_ok=True)
    reference = dict(KILL_RUN, checkpoint_dir=str(checkpoints))
    jobs = DISAGREE + [reference] + SWEEPS
    two, prefix2 = mp.worker_commands(jobs, tmp, "two", 2, 2, **_env(cache))
    two[1][1]["LECOPT_TEST_CONFIG_CHANGES"] = json.dumps(CHANGES)
    one, prefix1 = mp.worker_commands(SWEEPS, tmp, "one", 1, 4, **_env(cache))
    with mp.processes(_quick_to_compile(two + one), tmp / "logs") as group:
        codes = group.wait(RUN_TIMEOUT)
        assert codes == [0, 0, 0], group.outputs()
        logs = [group.output(i) for i in range(2)]
    out = {j["name"]: mp.results(prefix2, j["name"], 2) for j in jobs}
    out.update({f"one/{j['name']}": mp.results(prefix1, j["name"], 1)[0] for j in SWEEPS})
    out["logs"] = logs
    return out


def _kill_chain(tmp: Path, kills: list[tuple[int, int]], cache: str) -> dict:
    """One checkpointed 2-process run of KILL_RUN killed at each of ``kills`` in turn: process 0
    hangs before the commit after the kill point (so that the kill lands exactly there); the
    victim is SIGKILLed; the survivor must end with an error within the heartbeat timeout;
    both are restarted (at once, while the survivor is still ending: its wait overlaps with
    their start), and resume. The last restart runs to the end: its results."""
    tmp.mkdir(parents=True, exist_ok=True)
    config = dict(KILL_RUN, name="killed", checkpoint_dir=str(tmp / "checkpoints"))

    def start(name: str, hang_at: int = 0) -> mp.Group:
        commands, _ = mp.worker_commands([config], tmp, name, 2, 2, **_env(
            cache, LECOPT_TEST_HANG_AT_FINALIZE=str(hang_at)))
        return stack.enter_context(mp.processes(_quick_to_compile(commands), tmp / "logs"))

    records, resumed_from = [], 0
    with contextlib.ExitStack() as stack:
        group = start("first", (kills[0][1] - resumed_from) // EVERY + 1)
        for k, (victim, after) in enumerate(kills):
            line = group.wait_for_line(0, "FINALIZING", RUN_TIMEOUT)
            assert line is not None, group.outputs()
            group.kill(victim)
            killed_at = time.monotonic()
            committed = sorted(int(p.name) for p in (tmp / "checkpoints").iterdir()
                               if p.name.isdigit())
            following = start(f"after-{after}", 0 if k + 1 == len(kills)
                              else (kills[k + 1][1] - after) // EVERY + 1)
            survivor = 1 - victim
            try:
                code = group.procs[survivor].wait(timeout=HEARTBEAT_S + 50)
            except Exception:  # a hang: reported by the test, killed by processes()
                code = None
            waited = time.monotonic() - killed_at
            print(f"killed process {victim} after checkpoint {after}: the survivor ended "
                  f"with {code} {waited:.1f} s later")
            records.append({"victim": victim, "after": after, "code": code, "waited": waited,
                            "committed": committed, "resumed_from": resumed_from,
                            "outputs": [group.output(i) for i in range(2)]})
            group.kill()
            group, resumed_from = following, after
        codes = group.wait(RUN_TIMEOUT)
        assert codes == [0, 0], group.outputs()
        last = group.output(0)
    prefix = tmp / f"after-{kills[-1][1]}"
    return {"kills": records, "resumed": mp.results(prefix, "killed", 2), "last_output": last}


def _no_coordinator(tmp: Path) -> tuple:
    """Process 0 of a 2-process run that nobody joins, and process 1 of another whose
    coordinator nobody runs, both with a 3 s timeout: (ports, exit codes, outputs, seconds)."""
    code = ("from lecopt import distributed; distributed.initialize(timeout_s=3); "
            "print('JOINED')")
    ports = [distributed.free_port()]
    while len(ports) < 2:  # two runs: process 1 must not find process 0's coordinator
        port = distributed.free_port()
        if port != ports[0]:
            ports.append(port)
    envs = [mp.worker_envs(2, 2, port=port)[i] for i, port in enumerate(ports)]
    with mp.processes([([sys.executable, "-c", code], env) for env in envs], tmp) as group:
        t0 = time.monotonic()
        codes = group.wait(120)
        elapsed = time.monotonic() - t0
    return ports, codes, [group.output(i) for i in range(2)], elapsed


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache):
    """Every run of this module but the launcher's interruption, at once: the lecture's (and
    then the command line), the small runs, the chain of kills (whose waits for a dead
    process overlap with the others' work), the processes without a coordinator."""
    tmp = tmp_path_factory.mktemp("multiprocess")
    with ThreadPoolExecutor(4) as pool:
        lecture = pool.submit(_lecture, tmp / "lecture", cache)
        small = pool.submit(_small_runs, tmp / "small", cache, tmp / "reference")
        chain = pool.submit(_kill_chain, tmp / "chain", KILLS, cache)
        lonely = pool.submit(_no_coordinator, tmp / "no-coordinator")
        return dict(lecture.result(), **small.result(), chain=chain.result(),
                    no_coordinator=lonely.result())


def _max_abs(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _without_clock(history: dict) -> dict:
    return {k: v for k, v in history.items() if k != "wall_time"}


def test_two_processes_see_four_devices(runs):
    two, one = runs["lecture"], runs["one/lecture"]
    for i, r in enumerate(two):
        assert (int(r["processes"]), int(r["devices"]), int(r["local_devices"])) == (2, 4, 2), i
    assert (int(one["processes"]), int(one["devices"]), int(one["local_devices"])) == (1, 4, 4)


@pytest.mark.parametrize("job", ["lecture", "reference"])
def test_two_processes_agree_with_each_other_bit_for_bit(runs, job):
    p0, p1 = runs[job]
    for a, b in zip(mp.leaves(p0), mp.leaves(p1), strict=True):
        np.testing.assert_array_equal(a, b)
    # Each process measures its own clock; everything else is the same value.
    assert _without_clock(p0["history"]) == _without_clock(p1["history"])


def test_two_processes_of_two_devices_equal_one_process_of_four(runs):
    two, one = runs["lecture"], runs["one/lecture"]
    p0 = two[0]
    h2, h1 = p0["history"], one["history"]
    assert h2["steps_per_epoch"] == h1["steps_per_epoch"] == 8
    # Float32 rounding: the all-reduces of gradients and BatchNorm statistics sum in another
    # order across processes (gloo) than inside one; 16 steps amplify it a little. Measured:
    # step losses within 1.2e-7 nats, test losses 3e-7, parameters 4.9e-6 (absolute).
    diffs = {"step_loss": _max_abs(h2["step_loss"], h1["step_loss"]),
             "test_loss": _max_abs(h2["test_loss"], h1["test_loss"]),
             "params": max(_max_abs(a, b) for a, b in zip(mp.leaves(p0), mp.leaves(one)))}
    print(f"fit, 2 processes x 2 devices against 1 x 4, largest differences: {diffs}")
    assert diffs["step_loss"] < 1e-6
    assert _max_abs(h2["train_loss"], h1["train_loss"]) < 1e-6
    assert diffs["test_loss"] < 2e-6
    assert _max_abs(h2["test_error"], h1["test_error"]) <= 2e-3  # at most 2 of 1000 flip
    for a, b in zip(mp.leaves(p0), mp.leaves(one), strict=True):
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


def test_command_line_local_processes_is_the_same_run(runs):
    p0 = runs["lecture"][0]
    out, output = runs["cli"]
    written = json.loads((out / "history.json").read_text())
    assert (out / "curves.png").stat().st_size > 0
    assert _without_clock({k: written[k] for k in p0["history"]}) == \
        _without_clock(p0["history"])
    # process 0 alone reports: one final line
    assert output.count("final: train_loss=") == 1, output


@pytest.mark.parametrize("call,fields", [
    ("fit", ("seed", "test_data_contents", "eval_batch_size")),
    ("sweep", ("settings", "optimizers"))])
def test_processes_that_disagree_about_the_run_fail_alike(runs, call, fields):
    for i, r in enumerate(runs[f"disagree-{call}"]):
        assert r["error"].startswith(f"{call} across 2 processes: the processes disagree "
                                     "about the run"), r["error"]
        for field in fields:
            assert f"{field} in process(es) [1]" in r["error"], (i, r["error"])
        assert "train_data_contents" not in r["error"], r["error"]
        # and each process went on to the next job
        assert runs["logs"][i].count("ValueError: ") == 2, runs["logs"][i]


def _sweep_runs(result: dict) -> list[tuple[dict, list[np.ndarray]]]:
    return [(h, mp.leaves(result, r)) for r, h in enumerate(result["histories"])]


@pytest.mark.parametrize("job", [j["name"] for j in SWEEPS])
def test_sweep_across_processes(runs, job):
    """Each strategy: the same runs in both processes (bit for bit), equal to 1 process x 4
    devices to float32 rounding."""
    (p0, p1), one = runs[job], runs[f"one/{job}"]
    sweep = next(j for j in SWEEPS if j["name"] == job)
    assert p0["runs"] == p1["runs"] == one["runs"] == [[lr, s] for lr in sweep["lrs"]
                                                       for s in sweep["seeds"]]
    diffs = {"step_loss": 0.0, "test_loss": 0.0, "params": 0.0}
    for (h0, l0), (h1, l1), (h, leaves) in zip(_sweep_runs(p0), _sweep_runs(p1),
                                               _sweep_runs(one), strict=True):
        assert _without_clock(h0) == _without_clock(h1)
        for a, b in zip(l0, l1, strict=True):
            np.testing.assert_array_equal(a, b)
        assert len(h0["step_loss"]) == h0["steps_per_epoch"] == 8
        diffs["step_loss"] = max(diffs["step_loss"], _max_abs(h0["step_loss"], h["step_loss"]))
        diffs["test_loss"] = max(diffs["test_loss"], _max_abs(h0["test_loss"], h["test_loss"]))
        diffs["params"] = max([diffs["params"]] + [_max_abs(a, b) for a, b in zip(l0, leaves)])
        assert h0["step_loss"][0] > 1.5 and h0["train_loss"][-1] < h0["step_loss"][0]
    print(f"{job}, 2 processes x 2 devices against 1 x 4, largest differences: {diffs}")
    assert diffs["step_loss"] < 1e-6 and diffs["test_loss"] < 1e-6 and diffs["params"] < 1e-5


def test_sweep_across_processes_is_fit_across_processes(runs):
    """The loop's run of lr 0.05, seed 3 is the first epoch of the reference fit (the same
    program, bit for bit); vmap and auto give it to float32 rounding."""
    fit = runs["reference"][0]["history"]
    loop = dict(zip(map(tuple, runs["sweep-loop"][0]["runs"]),
                    runs["sweep-loop"][0]["histories"]))
    run = loop[(0.05, 3)]
    assert run["step_loss"] == fit["step_loss"][:8]
    assert run["test_loss"] == fit["test_loss"][:1]
    compared = 0
    for job in ("sweep-vmap", "sweep-auto"):
        for (lr, seed), h in zip(runs[job][0]["runs"], runs[job][0]["histories"]):
            if (lr, seed) in loop:
                assert _max_abs(h["step_loss"], loop[(lr, seed)]["step_loss"]) < 1e-6, job
                compared += 1
    assert compared == 6


# --------------------------------------------------------------------------------------------
# Kill one process, resume both.


def _check_chain(reference: list[dict], chain: dict) -> None:
    for kill in chain["kills"]:
        where = f"process {kill['victim']} killed after checkpoint {kill['after']}"
        # It was killed there: the run had started from the previous kill's checkpoint, and
        # the next commit never happened.
        assert "DONE" not in "".join(kill["outputs"]), where
        assert f"CKPT {kill['after']}" in kill["outputs"][0], where
        assert kill["committed"] and kill["committed"][-1] == kill["after"], where
        # The survivor ended with an error (JAX's abort when the heartbeats stop, or the error
        # of a collective whose peer is gone), within the heartbeat timeout plus a margin for
        # a loaded machine: not a hang.
        survivor = kill["outputs"][1 - kill["victim"]]
        assert kill["code"] is not None and kill["code"] != 0, (where, survivor[-3000:])
        assert kill["waited"] < HEARTBEAT_S + 50, (where, kill["waited"])
    # Resumed from where each kill left it, run to the end: bit for bit the uninterrupted run.
    for resumed in chain["resumed"]:
        for a, b in zip(mp.leaves(resumed), mp.leaves(reference[0]), strict=True):
            np.testing.assert_array_equal(a, b)
        assert _without_clock(resumed["history"]) == _without_clock(reference[0]["history"])
    assert f"CKPT {chain['kills'][-1]['after'] + EVERY}" in chain["last_output"]


def test_kill_one_process_then_resume_both_is_bit_identical(runs):
    """KILLS in turn in one run: each resume is killed again, the last runs to the end."""
    assert [(k["victim"], k["after"]) for k in runs["chain"]["kills"]] == KILLS
    _check_chain(runs["reference"], runs["chain"])


@pytest.mark.slow
def test_more_kill_points(tmp_path, runs, cache):
    _check_chain(runs["reference"], _kill_chain(tmp_path, MORE_KILLS, cache))


def test_no_coordinator_is_one_clear_line_within_the_timeout(runs):
    """Process 1 with nobody at the coordinator's address; process 0 (of another run, at the
    same time) with nobody joining."""
    ports, codes, outputs, elapsed = runs["no_coordinator"]
    for process_id, (rc, out) in enumerate(zip(codes, outputs)):
        errors = [line for line in out.splitlines() if line.startswith("lecopt: error:")]
        assert rc == distributed.EXIT_INIT_TIMEOUT, out
        assert len(errors) == 1 and "JOINED" not in out and "Check failure" not in out, out
        assert f"process {process_id} could not start the 2-process run within 3 s" in errors[0]
        if process_id == 1:
            assert f"nobody listens at the coordinator address 127.0.0.1:{ports[1]}" in errors[0]
        else:
            assert "answers but not all 2 processes joined" in errors[0]
    # 3 s of waiting plus the interpreter's and JAX's start (slow on a loaded machine)
    assert elapsed < 60, elapsed


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
    # Killed and reaped: gone, not zombies. (A process SIGKILLed while it starts takes a moment
    # to end on a loaded machine; if the launcher's wait for it ran out, init reaps it.)
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{pid}").exists() for pid in children) and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in children:
        assert not Path(f"/proc/{pid}").exists(), pid
