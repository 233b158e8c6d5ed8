"""Training across processes: ``initialize`` (JAX's multi-controller runtime) and ``launch_local``.

JAX runs one program per process (one process per host, usually): every process calls
:func:`initialize` first, builds a ``Mesh`` over ``jax.devices()`` (then every process's devices)
and makes the same ``train.fit(..., mesh=mesh)`` call; XLA's collectives (gloo on CPU) carry the
all-reduces between the processes.

What this module adds to ``jax.distributed.initialize``, and why:

* **A timeout that ends in one line, not a hang or a core dump.** When the coordinator cannot
  be reached, or not every process joins, JAX retries for ``initialization_timeout`` seconds and
  then aborts the process from C++ (``LOG(FATAL)``, a stack trace, exit status 134); its connect
  cannot be interrupted from Python. :func:`initialize` therefore watches the connect from a
  thread: if it has not returned within ``timeout_s``, the process prints one line saying what
  failed (nobody listens at the coordinator's address, or it listens but not all processes
  joined) to stderr and exits with status 1 (:data:`EXIT_INIT_TIMEOUT`).
* **A dead process is noticed by the others.** A process that dies (SIGKILL, a crash) stops
  sending heartbeats; after ``heartbeat_timeout_s`` JAX's coordination service tells the others,
  which then end (JAX's own message, "Terminating process because the JAX distributed service
  detected fatal errors ...", exit status 134) instead of waiting forever in a collective.
* **Loopback stays loopback.** With a coordinator on 127.0.0.1 (or ``localhost``), the
  coordinator binds only that address (JAX's default binds every interface) and gloo's
  connections between processes too.
* **The usual environment variables.** Arguments left ``None`` are read from
  ``JAX_COORDINATOR_ADDRESS`` (which JAX itself reads too), ``JAX_NUM_PROCESSES`` and
  ``JAX_PROCESS_ID`` (read by lecopt; JAX itself reads neither and otherwise asks a cluster
  manager: SLURM, Open MPI, Kubernetes or Cloud TPU). ``JAX_COORDINATOR_BIND_ADDRESS`` and
  ``JAX_LOCAL_DEVICE_IDS`` are left to JAX.

:func:`launch_local` starts ``N`` processes of ``python -m lecopt ...`` on this machine (each with
its own simulated CPU devices, a coordinator on 127.0.0.1 at a free port), shows process 0's
output, and stops all of them as soon as one fails or on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence

__all__ = ["initialize", "launch_local", "free_port", "is_loopback", "EXIT_INIT_TIMEOUT",
           "ENV_COORDINATOR", "ENV_NUM_PROCESSES", "ENV_PROCESS_ID"]

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
EXIT_INIT_TIMEOUT = 1
# JAX's own initialisation timeout is set this much longer than ours, so that the watchdog,
# not JAX's abort, reports a failed start.
_JAX_TIMEOUT_MARGIN_S = 60


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback interface (127.x.x.x, ::1, localhost).

    Example:
      >>> is_loopback("127.0.0.1"), is_loopback("[::1]"), is_loopback("10.0.0.1")
      (True, True, False)
    """
    host = host.strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def parse_address(address: str, name: str = "coordinator") -> tuple[str, int]:
    """``(host, port)`` of ``"HOST:PORT"``; ValueError naming ``name`` if malformed.

    Example:
      >>> parse_address("10.0.0.1:1234")
      ('10.0.0.1', 1234)
      >>> parse_address("10.0.0.1")
      Traceback (most recent call last):
      ...
      ValueError: coordinator='10.0.0.1' must be HOST:PORT with a port in 1..65535, e.g. ...
    """
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{name}={address!r} must be HOST:PORT with a port in 1..65535, "
                         "e.g. 10.0.0.1:1234 or 127.0.0.1:1234")
    return host, int(port)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at ``host`` right now (the OS picks it).

    Example:
      >>> 1024 <= free_port() <= 65535
      True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host.strip("[]"), port),
                                                                timeout=1.0):
        return True
    return False


def _env_int(name: str) -> int | None:
    text = os.environ.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"${name}={text!r} must be an integer") from None


def _check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}={value!r} must be an int >= {minimum}")
    if value < minimum:
        raise ValueError(f"{name}={value!r} is out of range; {name} must be an int >= {minimum}")
    return value


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: float = 60.0,
               heartbeat_timeout_s: float | None = None) -> None:
    """Joins this process to a multi-process JAX run (``jax.distributed.initialize``).

    Call it first, before anything touches ``jax.devices()``. Then ``jax.devices()`` lists every
    process's devices, ``jax.process_index()`` is ``process_id``.

    Args:
      coordinator: ``"HOST:PORT"`` of process 0, which runs the coordination service there
        (``$JAX_COORDINATOR_ADDRESS`` if None). Every process gives the same address.
      num_processes: the number of processes (``$JAX_NUM_PROCESSES`` if None).
      process_id: this process's index in ``0 .. num_processes - 1`` (``$JAX_PROCESS_ID``).
        If any of the three is still unknown, JAX asks a cluster manager (SLURM, Open MPI,
        Kubernetes, Cloud TPU).
      timeout_s: seconds to wait until every process has joined. Past it, the process prints
        one line to stderr (which of: nobody listens at the coordinator's address; it listens
        but not all ``num_processes`` joined) and exits with status 1: JAX's connect cannot be
        interrupted, and it would otherwise abort the process itself, later, with a stack trace.
      heartbeat_timeout_s: a process that stops responding (killed) for this long is declared
        dead and every other process ends with JAX's error (default: ``max(timeout_s, 10)``).

    Raises:
      ValueError, TypeError: a malformed address, count or index, or a timeout <= 0.
      RuntimeError: this process has already been initialised.
    """
    import jax

    coordinator = coordinator if coordinator is not None else os.environ.get(ENV_COORDINATOR)
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s={timeout_s!r} must be a number of seconds > 0")
    heartbeat = max(float(timeout_s), 10.0) if heartbeat_timeout_s is None \
        else float(heartbeat_timeout_s)
    if not heartbeat > 0:
        raise ValueError(f"heartbeat_timeout_s={heartbeat_timeout_s!r} must be > 0")
    host = port = None
    if coordinator is not None:
        host, port = parse_address(coordinator)
    if num_processes is not None:
        _check_count("num_processes", num_processes, 1)
    if process_id is not None:
        _check_count("process_id", process_id, 0)
        if num_processes is not None and process_id >= num_processes:
            raise ValueError(f"process_id={process_id} must be < num_processes={num_processes}")
    if jax.distributed.is_initialized():
        raise RuntimeError("lecopt.distributed.initialize: this process is already initialised")

    kwargs = {}
    loopback = host is not None and is_loopback(host)
    if loopback and not os.environ.get("JAX_COORDINATOR_BIND_ADDRESS"):
        kwargs["coordinator_bind_address"] = coordinator
    # gloo is JAX's CPU collectives from 0.5 on; older versions default to none at all.
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")

    joined = threading.Event()

    def watchdog() -> None:
        if joined.wait(timeout_s):
            return
        who = "?" if process_id is None else process_id
        if coordinator is None:
            why = "the cluster manager's coordinator did not answer"
        elif not _listening(host, port):
            why = (f"nobody listens at the coordinator address {coordinator} (is process 0 "
                   "running there, and is the address right?)")
        else:
            why = (f"the coordinator at {coordinator} answers but not all {num_processes} "
                   "processes joined (are all of them started, with the same address and "
                   "count?)")
        sys.stderr.write(f"lecopt: error: process {who} could not start the {num_processes}-"
                         f"process run within {timeout_s:g} s: {why}\n")
        sys.stderr.flush()
        os._exit(EXIT_INIT_TIMEOUT)

    threading.Thread(target=watchdog, name="lecopt-init-watchdog", daemon=True).start()
    try:
        with _gloo_on(host if loopback else None):
            jax.distributed.initialize(
                coordinator_address=coordinator, num_processes=num_processes,
                process_id=process_id,
                initialization_timeout=int(math.ceil(timeout_s)) + _JAX_TIMEOUT_MARGIN_S,
                heartbeat_timeout_seconds=int(math.ceil(heartbeat)),
                shutdown_timeout_seconds=int(math.ceil(heartbeat)), **kwargs)
            # The CPU backend (and its gloo collectives) is created here, by the first call
            # after initialisation, while gloo's address is still pinned.
            jax.devices()
    finally:
        joined.set()  # also when JAX raised: its error is the caller's, not a timeout


@contextlib.contextmanager
def _gloo_on(host: str | None):
    """Pins gloo's listening address to ``host`` while the CPU backend is created.

    JAX creates gloo's TCP transport without an address, and gloo then binds the address that
    this machine's hostname resolves to, which need not be loopback.
    """
    if host is None:
        yield
        return
    from jax._src.lib import _jax

    original = getattr(_jax, "make_gloo_tcp_collectives", None)
    if original is None:
        yield
        return

    def pinned(*args, **kwargs):
        kwargs.setdefault("hostname", host.strip("[]"))
        return original(*args, **kwargs)

    _jax.make_gloo_tcp_collectives = pinned
    try:
        yield
    finally:
        _jax.make_gloo_tcp_collectives = original


# --------------------------------------------------------------------------------------------
# Local launcher.


def _die_with_parent() -> None:
    # Linux: the kernel sends SIGKILL to the child when the launcher dies, even by SIGKILL, so
    # that no process outlives it. (prctl(PR_SET_PDEATHSIG, SIGKILL))
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL to the process group of ``proc`` (itself and anything it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(timeout=10)


def _xla_flags(devices: int) -> str:
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")]
    return " ".join(kept + [f"--xla_force_host_platform_device_count={devices}"])


def local_env(port: int, num_processes: int, process_id: int,
              devices_per_process: int) -> dict[str, str]:
    """The environment of process ``process_id`` of a local run (see :func:`launch_local`).

    Example:
      >>> env = local_env(12355, 2, 1, devices_per_process=2)
      >>> env["JAX_COORDINATOR_ADDRESS"], env["JAX_PROCESS_ID"], env["JAX_PLATFORMS"]
      ('127.0.0.1:12355', '1', 'cpu')
    """
    env = dict(os.environ)
    env.update({
        ENV_COORDINATOR: f"127.0.0.1:{port}",
        ENV_NUM_PROCESSES: str(num_processes),
        ENV_PROCESS_ID: str(process_id),
        "XLA_FLAGS": _xla_flags(devices_per_process),
        # Simulated CPU devices: local processes must not share (and fight over) a GPU.
        "JAX_PLATFORMS": "cpu",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


def launch_local(argv: Sequence[str], num_processes: int, devices_per_process: int = 2,
                 poll_s: float = 0.1) -> int:
    """Runs ``python -m lecopt *argv`` as ``num_processes`` processes of one run, on this machine.

    Each process gets ``devices_per_process`` simulated CPU devices
    (``--xla_force_host_platform_device_count``) and finds the others through
    ``$JAX_COORDINATOR_ADDRESS`` = 127.0.0.1 at a free port, ``$JAX_NUM_PROCESSES`` and
    ``$JAX_PROCESS_ID`` (read by :func:`initialize`). Process 0 writes to this terminal; the
    others to temporary files, whose last lines are shown if they fail. Each process runs in
    its own process group; when one fails, or on Ctrl-C / SIGTERM, every group is killed, and
    on Linux the processes die with the launcher even if it is killed itself.

    Args:
      argv: the arguments of ``lecopt``, e.g. ``["train", "--epochs", "2"]``.
      num_processes: processes to start (>= 1).
      devices_per_process: simulated CPU devices in each (>= 1).
      poll_s: seconds between checks of the processes.

    Returns:
      0 if every process exited with 0; else the failing process's exit status (128 + the
      signal number if it was killed, 130 after Ctrl-C).
    """
    _check_count("num_processes", num_processes, 1)
    _check_count("devices_per_process", devices_per_process, 1)
    port = free_port()
    cmd = [sys.executable, "-m", "lecopt", *argv]
    procs: list[subprocess.Popen] = []
    logs: list = []
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        signal.signal(signal.SIGTERM, on_term)
    try:
        for i in range(num_processes):
            out = None
            if i > 0:
                out = tempfile.TemporaryFile(mode="w+b", prefix=f"lecopt-process-{i}-")
                logs.append(out)
            procs.append(subprocess.Popen(
                cmd, env=local_env(port, num_processes, i, devices_per_process),
                stdout=out, stderr=subprocess.STDOUT if out is not None else None,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None))
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                i, code = failed[0]
                for p in procs:
                    if p.poll() is None:
                        _kill_group(p)
                if i > 0:
                    _show_tail(logs[i - 1], i)
                sys.stderr.write(f"lecopt: error: process {i} of {num_processes} "
                                 f"{_describe(code)}; stopped the others\n")
                return code if code > 0 else 128 - code
            if all(c == 0 for c in codes):
                return 0
            time.sleep(poll_s)
    except KeyboardInterrupt:
        sys.stderr.write(f"lecopt: interrupted; stopped all {num_processes} processes\n")
        return 130
    finally:
        for p in procs:
            if p.poll() is None:
                _kill_group(p)
        for f in logs:
            f.close()
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _show_tail(log, process_id: int, lines: int = 20) -> None:
    log.flush()
    log.seek(0)
    tail = log.read().decode(errors="replace").splitlines()[-lines:]
    for line in tail:
        sys.stderr.write(f"[process {process_id}] {line}\n")


# --------------------------------------------------------------------------------------------
# What the training layer needs when a mesh spans processes.


def spans_processes(mesh) -> bool:
    """Whether ``mesh`` holds devices of other processes than this one."""
    import jax

    here = jax.process_index()
    return any(d.process_index != here for d in mesh.devices.flat)


def is_main_process() -> bool:
    """Process 0 (or the only one): the one that shows progress and writes result files."""
    import jax

    return jax.process_index() == 0


def gathered(x, index, sharding):
    """The global array ``x[index]`` of which this process computes and transfers only the
    part its own devices hold.

    ``x`` is a host array that every process holds whole (the same in each), ``index`` an
    integer array of shape ``index.shape``; the result has shape ``index.shape + x.shape[1:]``
    and ``sharding``. Each device's block ``x[index[block]]`` is gathered on the host by the
    process that owns the device (``jax.make_array_from_callback``), so with a minibatch axis
    split over the mesh each process moves only its slice of every minibatch.
    """
    import jax
    import numpy as np

    x = np.asarray(x)
    index = np.asarray(index)
    shape = tuple(index.shape) + tuple(x.shape[1:])

    def block(where):
        lead = tuple(where[:index.ndim])
        return x[index[lead]][(slice(None),) * index.ndim + tuple(where[index.ndim:])]

    return jax.make_array_from_callback(shape, sharding, block)


def mismatched_fields(fields: dict) -> dict[str, list[int]]:
    """``{name: [processes]}`` of the fields whose value differs from process 0's.

    ``fields`` maps names to JSON-able values (or bytes); each process hashes its values and
    the digests are all-gathered, so every process gets the same answer (empty if all agree).
    Every process must call it, with the same names.
    """
    import hashlib
    import json

    import numpy as np
    from jax.experimental import multihost_utils

    names = sorted(fields)
    digests = []
    for k in names:
        v = fields[k]
        raw = v if isinstance(v, bytes) else json.dumps(v, sort_keys=True).encode()
        digests.append(np.frombuffer(hashlib.sha256(raw).digest()[:8], np.uint32))
    mine = np.stack(digests)  # (fields, 2)
    everyone = np.asarray(multihost_utils.process_allgather(mine))  # (processes, fields, 2)
    out = {}
    for j, k in enumerate(names):
        differ = [p for p in range(everyone.shape[0])
                  if not np.array_equal(everyone[p, j], everyone[0, j])]
        if differ:
            out[k] = differ
    return out


def content_digest(*arrays) -> bytes:
    """SHA-256 of the arrays' dtypes, shapes and bytes (None counts as absent)."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.digest()


def replicated(tree, sharding):
    """``tree`` with every array leaf made a global array of ``sharding`` (Python numbers stay).

    Every process gives the same values and places its own copy on its own devices (no
    cross-process check or transfer: ``jax.device_put`` of a host value to a sharding that
    spans processes first all-gathers it to compare, and fails on 0-d values in jax 0.10).
    """
    import jax
    import numpy as np

    def one(leaf):
        if isinstance(leaf, bool | int | float | complex):
            return leaf
        a = np.asarray(leaf)
        return jax.make_array_from_callback(a.shape, sharding, lambda where: a[where])

    return jax.tree.map(one, tree)
