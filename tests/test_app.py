"""``lecopt app``: the explorers of lecopt.widgets served as a web page by Voila.

The server tests start ``lecopt app`` in a subprocess on a free loopback port, load the page,
read the widget models from the page's own kernel over Voila's websocket (the widget protocol's
``request_states``, as the browser's widget manager does), and stop the server with SIGTERM,
checking that no process it started is left. They need the ``app`` extra (``make test``
installs it) and are skipped with that reason without it. The explorer tests move controls
through the widgets' own API in this process and compare the redrawn figure with a fresh
computation.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lecopt
from lecopt import app, cli, landscapes, schedules, widgets

HAS_SERVER = importlib.util.find_spec("voila") is not None
needs_server = pytest.mark.skipif(
    not HAS_SERVER, reason="the app extra is not installed (pip install -e '.[app]'; "
                           "make test installs it)")
needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                reason="the process checks read /proc (Linux)")
PAGE_TIMEOUT_S = 60
WS_PROTOCOL = "v1.kernel.websocket.jupyter.org"  # what JupyterLab's and Voila's pages speak


# --------------------------------------------------------------------------------------------
# Processes


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            out.setdefault(ppid, []).append(int(d.name))
    return out


def _descendants(pid: int) -> set[int]:
    children, found, todo = _children(), set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, deadline: float) -> str:
    """The page at ``url``, retried while the server is starting, until ``deadline``."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=max(1.0, deadline - time.time())) as r:
                assert r.status == 200
                return r.read().decode()
        except (urllib.error.URLError, ConnectionError):
            if time.time() > deadline:
                raise
            time.sleep(0.25)


# --------------------------------------------------------------------------------------------
# The page's kernel, over Voila's websocket (the v1 kernel protocol)


def _ws_message(msg_type: str, content: dict, metadata: dict | None = None) -> tuple[str, bytes]:
    from jupyter_server.services.kernels.connection.base import serialize_msg_to_ws_v1

    msg_id = uuid.uuid4().hex
    msg = {"header": {"msg_id": msg_id, "msg_type": msg_type, "username": "test",
                      "session": "lecopt-test", "date": "", "version": "5.3"},
           "parent_header": {}, "metadata": metadata or {}, "content": content}
    return msg_id, serialize_msg_to_ws_v1(msg, "shell", pack=lambda m: json.dumps(m).encode())


def _ws_receive(ws) -> dict:
    from jupyter_server.services.kernels.connection.base import deserialize_msg_from_ws_v1

    _, parts = deserialize_msg_from_ws_v1(ws.recv())
    header, parent, _, content = (json.loads(p) for p in parts[:4])
    return {"header": header, "parent_header": parent, "content": content}


def _widget_states(port: int, kernel_id: str, timeout: float = 30.0) -> dict[str, dict]:
    """All widget models of the kernel: the widget control comm's ``request_states``."""
    import websocket

    ws = websocket.create_connection(
        f"ws://127.0.0.1:{port}/api/kernels/{kernel_id}/channels", timeout=timeout,
        subprotocols=[WS_PROTOCOL])
    try:
        comm_id = uuid.uuid4().hex
        open_id, msg = _ws_message("comm_open", {"comm_id": comm_id, "data": {},
                                                 "target_name": "jupyter.widget.control"},
                                   {"version": "1.0.0"})
        ws.send_binary(msg)
        deadline = time.time() + timeout
        # The request goes once the kernel has opened the comm (idle after the comm_open).
        while time.time() < deadline:
            m = _ws_receive(ws)
            if (m["header"]["msg_type"] == "status" and m["parent_header"].get("msg_id") == open_id
                    and m["content"]["execution_state"] == "idle"):
                break
        _, msg = _ws_message("comm_msg", {"comm_id": comm_id, "data": {"method": "request_states"}})
        ws.send_binary(msg)
        while time.time() < deadline:
            m = _ws_receive(ws)
            data = m["content"].get("data", {})
            if m["header"]["msg_type"] == "comm_msg" and data.get("method") == "update_states":
                return data["states"]
        raise TimeoutError("the kernel sent no widget states")
    finally:
        ws.close()


# --------------------------------------------------------------------------------------------
# The server


@needs_server
@needs_proc
def test_app_serves_every_explorer_and_stops_cleanly(tmp_path):
    port = _free_port()
    log = tmp_path / "app.log"
    env = dict(os.environ, JAX_PLATFORMS="cpu", LECOPT_NO_PROGRESS="1")
    start = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lecopt", "app", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        page = _get(f"http://127.0.0.1:{port}/", start + PAGE_TIMEOUT_S)
        assert f"http://127.0.0.1:{port}/" in log.read_text()

        # One widget view per explorer in the page, each a model of the page's kernel.
        views = re.findall(r'widget-view\+json": \{"model_id": "([0-9a-f]+)"', page)
        assert len(views) == 3, "expected the paths, schedule and BatchNorm explorers"
        kernel_id = re.search(r'"kernelId": "([0-9a-f-]+)"', page).group(1)
        states = _widget_states(port, kernel_id)
        assert all(states[v]["model_name"] == "VBoxModel" for v in views)

        def models(name: str) -> list[dict]:
            return [s["state"] for s in states.values() if s["model_name"] == name]

        labels = [s["_options_labels"] for s in models("ToggleButtonsModel")]
        assert [label for label, _ in widgets.EXAMPLES.values()] in [list(x) for x in labels]
        dropdowns = [list(s["_options_labels"]) for s in models("DropdownModel")]
        assert ["quadratic ravine", "Styblinski-Tang", "saddle", "Rosenbrock"] in dropdowns
        assert list(widgets.SCHEDULES) in dropdowns
        assert "offset c" in [s["description"] for s in models("FloatLogSliderModel")]
        assert len(models("ImageModel")) == 3

        # A second server on the same port says which port is busy.
        second = subprocess.run([sys.executable, "-m", "lecopt", "app", "--port", str(port)],
                                capture_output=True, text=True, env=env, timeout=60)
        assert second.returncode == 1 and f"port {port} on 127.0.0.1 is busy" in second.stderr

        started = _descendants(proc.pid)
        assert any("ipykernel" in _cmdline(p) for p in started), "no kernel ran the page"
    finally:
        started = _descendants(proc.pid) if proc.poll() is None else set()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            for p in started:
                if _alive(p):
                    os.kill(p, signal.SIGKILL)
            raise
    assert code == 0, log.read_text()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in started):
        time.sleep(0.1)
    left = [(p, _cmdline(p)) for p in started if _alive(p)]
    assert not left, f"left behind: {left}"
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # the process group is empty


def test_app_without_the_server_says_how_to_install_it(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "voila" else real(name, *a))
    assert cli.main(["app"]) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err == "lecopt app needs the web server: pip install " \
                                        "'lecopt[app]'\n"


def test_free_port_steps_past_a_busy_one():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        port = app.free_port("127.0.0.1", taken)
        assert port != taken
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # really free


def test_the_app_notebook_ships_with_the_package():
    import nbformat

    nb = nbformat.read(app.NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for explorer in ("explore_paths", "explore_schedules", "explore_batchnorm_offset"):
        assert f"widgets.{explorer}(" in code
    assert all(c.outputs == [] for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("argv, match", [
    (["app", "--port", "0"], "'0' is out of range"),
    (["app", "--port", "http"], "'http' is not a port number"),
])
def test_app_options_are_checked(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and match in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# The explorers: a control moved as the browser moves it (a comm update of its state)


def _paths(panel) -> dict[str, np.ndarray]:
    return {line.get_gid()[len("path:"):]: np.column_stack([line.get_xdata(), line.get_ydata()])
            for line in panel.figure.axes[0].lines
            if (line.get_gid() or "").startswith("path:")}


def _click(panel, control: str, value) -> None:
    w = panel._widgets[control]
    index = [v for _, v in w.options].index(value) if hasattr(w, "options") else None
    w.set_state({"index": index} if index is not None else {"value": value})


def _expected(tx, landscape: str, x0, steps: int) -> np.ndarray:
    record = landscapes.LANDSCAPES[landscape]
    return np.asarray(landscapes.trajectory(tx, record.fn, jnp.asarray(x0), steps))


def test_examples_and_sliders_redraw_the_paths():
    panel = widgets.explore_paths(interactive=True)
    assert panel.values["example"] == "escape"  # the default settings are the first example
    ends = {k: v[-1] for k, v in _paths(panel).items()}
    # The lecture's picture: GD stays in the local minimum, momentum reaches the global one
    # (roots of 4x^3 - 32x + 5).
    roots = np.sort(np.roots([4.0, 0.0, -32.0, 5.0]).real)
    np.testing.assert_allclose(ends["gd"], [roots[2]] * 2, atol=1e-3)
    np.testing.assert_allclose(ends["momentum"], [roots[0]] * 2, atol=1e-3)
    png = panel.png

    _click(panel, "example", "ravine")
    s = landscapes.LANDSCAPES["quadratic"].suggested
    paths = _paths(panel)
    assert sorted(paths) == ["gd", "momentum"] and panel._image.value == panel.png != png
    np.testing.assert_allclose(paths["gd"], _expected(lecopt.sgd(s["learning_rate"]), "quadratic",
                                                      s["x0"], s["num_steps"]), rtol=1e-6)
    np.testing.assert_allclose(
        paths["momentum"], _expected(lecopt.sgd(s["learning_rate"], momentum=s["momentum"]),
                                     "quadratic", s["x0"], s["num_steps"]), rtol=1e-6, atol=1e-7)

    _click(panel, "learning_rate", 0.05)
    _click(panel, "momentum", 0.8)
    assert panel.values["example"] is None  # moved away: the example can be clicked again
    paths = _paths(panel)
    np.testing.assert_allclose(paths["momentum"], _expected(lecopt.sgd(0.05, momentum=0.8),
                                                            "quadratic", s["x0"], s["num_steps"]),
                               rtol=1e-6, atol=1e-7)

    _click(panel, "example", "saddle")
    s = landscapes.LANDSCAPES["saddle"].suggested
    paths = _paths(panel)
    assert sorted(paths) == ["adagrad", "adam", "gd", "momentum", "rmsprop"]
    assert (panel._widgets["x1"].min, panel._widgets["x1"].max) == (-2.0, 2.0)
    np.testing.assert_allclose(
        paths["adam"], _expected(lecopt.adam(s["learning_rate"], b1=s["momentum"]), "saddle",
                                 s["x0"], s["num_steps"]), rtol=1e-6, atol=1e-7)


def test_schedule_explorer_redraws_the_chosen_schedule():
    panel = widgets.explore_schedules(interactive=True)
    _click(panel, "kind", "sgdr")
    _click(panel, "step_size", 300)
    (line,) = panel.figure.axes[0].lines
    t = np.arange(2000)
    expected = jax.vmap(schedules.sgdr(6e-3, 1e-3, 300, period_mult=2))(jnp.asarray(t))
    np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-6)
    # Cosine warm restarts: the peak at t = 0, 300 and 300 + 600.
    np.testing.assert_allclose(line.get_ydata()[[0, 300, 900]], 6e-3, rtol=1e-6)


def test_batchnorm_offset_slider_moves_the_offset():
    panel = widgets.explore_batchnorm_offset(interactive=True)
    _click(panel, "offset", 1e4)
    assert panel.values["offset"] == pytest.approx(1e4)
    marker = panel.figure.axes[1].lines[-1]
    assert marker.get_xdata()[0] == pytest.approx(1e4)
    assert panel.figure.axes[0].get_title().startswith("Offset c = 1e+04")


def test_batchnorm_offset_explorer_draws_given_curves():
    offsets = np.array([1.0, 10.0, 100.0])
    curves = {"a": [1e-7, 1e-5, 1e-3], "b": [1e-7, 1e-7, 1e-7], "c": [2e-7, 2e-7, 2e-7]}
    panel = widgets.explore_batchnorm_offset(curves=curves, offsets=offsets,
                                             interactive=False)
    right = panel.figure.axes[1]
    drawn = {ln.get_label(): ln.get_ydata() for ln in right.lines if ln.get_label() in curves}
    assert set(drawn) == set(curves)
    for name, values in curves.items():
        np.testing.assert_allclose(drawn[name], values)
    with pytest.raises(ValueError, match="offsets="):
        widgets.explore_batchnorm_offset(curves=curves, interactive=False)


@pytest.mark.parametrize("make, match", [
    (lambda: widgets.draw_schedule("step_decay", 1e-3, 6e-3, 200), "kind='step_decay'"),
    (lambda: widgets.explore_schedules("step_decay"), "value='step_decay'"),
    (lambda: widgets.buttons(["a", "b"], "z"), "value='z'"),
    (lambda: widgets.buttons([]), "options must not be empty"),
])
def test_explorer_arguments_are_checked(make, match):
    with pytest.raises(ValueError, match=match):
        make()
