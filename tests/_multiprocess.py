"""Helpers of tests/test_multiprocess.py: start processes of one multi-process run on 127.0.0.1,
and always clean them up.

Every process is started in its own process group (``start_new_session``), its stdout and
stderr go to a log file, and :func:`processes` kills every group that is still alive when its
block ends, whether the test passed, failed or timed out: no process outlives a test.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from lecopt import distributed

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "_dist_worker.py"


class Group:
    """Processes started by :func:`processes`: ``procs[i]`` logs into ``logs[i]``."""

    def __init__(self, procs: list[subprocess.Popen], logs: list[Path]):
        self.procs = procs
        self.logs = logs

    def output(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace")

    def outputs(self) -> str:
        return "\n".join(f"--- process {i} ---\n{self.output(i)[-4000:]}"
                         for i in range(len(self.procs)))

    def wait(self, timeout: float) -> list[int]:
        """Exit statuses of all processes; AssertionError (after killing them) on a timeout."""
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"processes still running after {timeout:.0f} s\n"
                                     + self.outputs()) from None
        return [p.returncode for p in self.procs]

    def wait_for_line(self, i: int, prefix: str, timeout: float) -> str | None:
        """The first line of process ``i``'s output starting with ``prefix`` (None if it ends
        or ``timeout`` passes first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.output(i).splitlines():
                if line.startswith(prefix):
                    return line
            if self.procs[i].poll() is not None:
                return None
            time.sleep(0.05)
        return None

    def kill(self, i: int | None = None) -> None:
        """SIGKILL to the process group of process ``i`` (of all, if None)."""
        for p in self.procs if i is None else [self.procs[i]]:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)

    def alive(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]


def _no_core_dumps() -> None:
    # A survivor of a killed peer ends with JAX's abort (SIGABRT): no core file in the tree.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@contextlib.contextmanager
def processes(commands: Sequence[tuple[list[str], dict]], log_dir: Path) -> Iterator[Group]:
    """Starts ``(argv, env)`` for each command; kills all of them when the block ends."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs, logs = [], []
    try:
        for i, (argv, env) in enumerate(commands):
            log = log_dir / f"process-{i}-{time.monotonic_ns()}.log"
            with open(log, "wb") as f:
                procs.append(subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT,
                                              cwd=str(ROOT), start_new_session=True,
                                              preexec_fn=_no_core_dumps))
            logs.append(log)
        yield Group(procs, logs)
    finally:
        Group(procs, logs).kill()


def worker_envs(num_processes: int, devices_per_process: int, port: int | None = None,
                **extra: str) -> list[dict[str, str]]:
    """Environments of the processes of one run on 127.0.0.1 (a single process: no
    coordinator at all)."""
    port = distributed.free_port() if port is None else port
    envs = []
    for i in range(num_processes):
        env = distributed.local_env(port, num_processes, i, devices_per_process)
        if num_processes == 1:
            for k in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES,
                      distributed.ENV_PROCESS_ID):
                env.pop(k)
        env.update(extra)
        envs.append(env)
    return envs


def cache_env(directory: str) -> dict[str, str]:
    """JAX's persistent compilation cache in ``directory``, for every program, by environment
    variables (read by any process that imports JAX)."""
    return {"JAX_COMPILATION_CACHE_DIR": directory,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def worker_commands(jobs: list[dict], tmp: Path, name: str, num_processes: int,
                    devices_per_process: int, **extra: str) -> tuple[list, Path]:
    """Commands of ``tests/_dist_worker.py`` doing ``jobs`` in turn, and the prefix of their
    results."""
    cfg = tmp / f"{name}.json"
    cfg.write_text(json.dumps({"jobs": jobs}))
    prefix = tmp / name
    return [([sys.executable, str(WORKER), str(cfg), str(prefix)], env)
            for env in worker_envs(num_processes, devices_per_process, **extra)], prefix


def results(prefix: Path, job: str, num_processes: int) -> list[dict]:
    """What each process wrote for ``job``: a fit's leaves ``"000"``, ..., ``history`` (a
    dict), counts; a sweep's ``histories`` (a list), ``runs`` ([lr, seed] each) and leaves
    ``"r<run>_000"``, ...; a failed job's ``error``."""
    out = []
    for i in range(num_processes):
        with np.load(f"{prefix}.{job}.{i}.npz") as z:
            r = {k: z[k] for k in z.files}
        for k in ("history", "histories", "runs"):
            if k in r:
                r[k] = json.loads(str(r[k]))
        if "error" in r:
            r["error"] = str(r["error"])
        out.append(r)
    return out


def leaves(result: dict, run: int | None = None) -> list[np.ndarray]:
    """A fit's final leaves in order, or those of a sweep's run ``run``."""
    names = [k for k in result if k.isdigit()] if run is None else \
        [k for k in result if k.startswith(f"r{run}_")]
    return [result[k] for k in sorted(names)]
