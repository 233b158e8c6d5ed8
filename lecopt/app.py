"""``lecopt app``: the lecture's explorers as one web page, served by Voila.

The page is the notebook ``lecopt/_app/app.ipynb`` (shipped with the package): it calls the
explorers of :mod:`lecopt.widgets` (optimizer paths on the four test functions with the
lecture's examples, learning-rate schedules, BatchNorm's offset slider). Voila, the Jupyter
project's server for ipywidgets pages, runs it in a fresh kernel for every visitor and shows
only its outputs: live widgets, no code. The server is an optional extra::

    pip install 'lecopt[app]'
    lecopt app                 # http://127.0.0.1:8866/, Ctrl-C stops it

It listens on 127.0.0.1 (this machine only) unless ``--host`` says otherwise. Without
``--port`` a busy default port is replaced by the next free one; a busy ``--port N`` is an
error naming it. Ctrl-C or SIGTERM stop the server and shut down its kernels.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.util
import json
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["DEFAULT_PORT", "NOTEBOOK", "INSTALL_HINT", "free_port", "serve", "add_arguments",
           "run"]

DEFAULT_PORT = 8866
"""Voila's own default port."""

NOTEBOOK = Path(__file__).resolve().parent / "_app" / "app.ipynb"
"""The page: a notebook of :mod:`lecopt.widgets` explorers."""

INSTALL_HINT = "lecopt app needs the web server: pip install 'lecopt[app]'"

_PORT_SEARCH = 20  # ports tried after a busy default one before asking the system for any


def _can_bind(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (as tornado binds: SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def free_port(host: str = "127.0.0.1", start: int = DEFAULT_PORT) -> int:
    """``start`` if free on ``host``, else the next free one of 20, else any free port."""
    for port in range(start, min(start + _PORT_SEARCH, 65536)):
        if _can_bind(host, port):
            return port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _kernel_of_this_interpreter() -> Iterator[str]:
    """A Jupyter data folder whose ``python3`` kernel runs this interpreter (which has lecopt),
    whatever other ``python3`` kernels the user has installed; first on ``JUPYTER_PATH``."""
    with tempfile.TemporaryDirectory(prefix="lecopt-app-") as root:
        spec = Path(root) / "kernels" / "python3"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            # Loopback TCP: ipykernel's notice about unencrypted transport is noise here.
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                     "--IPKernelApp.log_level=ERROR"],
            "display_name": "Python 3 (lecopt app)",
            "language": "python",
        }))
        yield root


def serve(port: int | None = None, host: str = "127.0.0.1", open_browser: bool = False) -> int:
    """Serves the app until Ctrl-C or SIGTERM; returns the exit status (1: could not start).

    Args:
      port: the port; None takes :data:`DEFAULT_PORT` or, if busy, the next free one.
      host: the address to listen on; the default 127.0.0.1 is reachable from this machine only.
      open_browser: open the page in the default web browser.
    """
    if importlib.util.find_spec("voila") is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 1
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"port={port!r} must be an integer in 1..65535")
    if port is None:
        port = free_port(host)
        if port != DEFAULT_PORT:
            print(f"lecopt app: port {DEFAULT_PORT} is busy, using {port}", flush=True)
    elif not _can_bind(host, port):
        print(f"lecopt app: port {port} on {host} is busy; choose another with --port, or leave "
              "--port out to take a free one", file=sys.stderr)
        return 1
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"

    import tornado.ioloop
    from voila.app import Voila

    with _kernel_of_this_interpreter() as jupyter_dir:
        env = {"JUPYTER_PATH": os.pathsep.join(
            [jupyter_dir, *filter(None, [os.environ.get("JUPYTER_PATH")])])}
        with _environ(env, drop=("MPLBACKEND",)):  # the kernel inherits it: inline figures
            app = Voila()
            # port_retries=0: the port checked above or an error, never a silent other one.
            # Kernels of pages closed without saying so (no unload beacon) go after 10 idle
            # minutes; a connected page's kernel stays.
            app.initialize([str(NOTEBOOK), f"--port={port}", f"--Voila.ip={host}",
                            "--Voila.port_retries=0",
                            "--Voila.open_browser=" + str(bool(open_browser)),
                            "--theme=light", "--Application.log_level=ERROR",
                            "--MappingKernelManager.cull_idle_timeout=600",
                            "--MappingKernelManager.cull_interval=60"])
            loop = tornado.ioloop.IOLoop.current()
            # Said once the server listens: the loop runs this first when it starts.
            loop.add_callback(print, f"lecopt app: the lecture's explorers at {url} "
                                     "(Ctrl-C stops)", flush=True)
            # Ctrl-C and SIGTERM stop the loop; Voila then shuts down every kernel it started.
            # (Also where SIGINT came ignored, as in a shell's background job.)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.asyncio_loop.add_signal_handler(sig, loop.stop)
            try:
                app.start()
            except SystemExit as e:  # Voila's own exit(1) when the port was taken meanwhile
                return int(e.code or 0)
    return 0


@contextlib.contextmanager
def _environ(values: dict[str, str], drop: Sequence[str] = ()) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in [*values, *drop]}
    os.environ.update(values)
    for k in drop:
        os.environ.pop(k, None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: expected a port 1-65535")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``lecopt app``."""
    parser.add_argument("--port", type=_port, default=None,
                        help=f"port (default {DEFAULT_PORT}, or the next free one if busy)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--open", action="store_true", help="open the page in a web browser")


def run(args: argparse.Namespace) -> int:
    """``lecopt app`` with parsed :func:`add_arguments` options."""
    return serve(port=args.port, host=args.host, open_browser=args.open)
