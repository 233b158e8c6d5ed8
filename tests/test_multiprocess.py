"""Training across processes, for real: 2 processes x 2 simulated CPU devices on 127.0.0.1.

Every process is a subprocess started in its own process group and killed when its test ends
(tests/_multiprocess.py); every run binds 127.0.0.1 only, at a free port.
"""

from __future__ import annotations

import sys
import time

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


@pytest.fixture(scope="module")
def lecture_runs(tmp_path_factory, cache):
    """The lecture's run as 2 processes x 2 devices and as 1 process x 4 devices (at once)."""
    tmp = tmp_path_factory.mktemp("lecture")
    two, prefix2 = mp.worker_commands(LECTURE_RUN, tmp, "two", 2, 2, LECOPT_TEST_JAX_CACHE=cache)
    one, prefix1 = mp.worker_commands(LECTURE_RUN, tmp, "one", 1, 4, LECOPT_TEST_JAX_CACHE=cache)
    with mp.processes(two + one, tmp / "logs") as group:
        codes = group.wait(RUN_TIMEOUT)
        assert codes == [0, 0, 0], group.outputs()
    assert not group.alive()
    return mp.results(prefix2, 2), mp.results(prefix1, 1)[0]


def _max_abs(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def test_two_processes_see_four_devices(lecture_runs):
    two, one = lecture_runs
    for i, r in enumerate(two):
        assert (int(r["processes"]), int(r["devices"]), int(r["local_devices"])) == (2, 4, 2), i
    assert (int(one["processes"]), int(one["devices"]), int(one["local_devices"])) == (1, 4, 4)


def test_two_processes_agree_with_each_other_bit_for_bit(lecture_runs):
    (p0, p1), _ = lecture_runs
    for a, b in zip(mp.leaves(p0), mp.leaves(p1)):
        np.testing.assert_array_equal(a, b)
    h0, h1 = dict(p0["history"]), dict(p1["history"])
    # Each process measures its own clock; everything else is the same value.
    h0.pop("wall_time"), h1.pop("wall_time")
    assert h0 == h1


def test_two_processes_of_two_devices_equal_one_process_of_four(lecture_runs):
    (p0, _), one = lecture_runs
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
    # and the run trained: the loss fell from about log(10)
    assert h2["step_loss"][0] > 1.5 and h2["train_loss"][-1] < 0.6 * h2["step_loss"][0]


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
