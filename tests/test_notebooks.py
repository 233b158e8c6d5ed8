"""The notebooks: committed clean, and executed top to bottom in quick mode with nbclient.

Each notebook runs in a fresh ``python3`` kernel started with THIS interpreter (a temporary
kernel spec whose argv is ``sys.executable``, checked from inside the kernel), with
``LECOPT_QUICK=1``. The two cores run two notebooks at a time. Every notebook must run without
error and draw at least one figure (an ``image/png`` output). Its ``result(name, value)`` calls
print nothing (readers see no test hooks): with ``LECOPT_TEST_RESULTS=path`` in the kernel's
environment they append ``{name: [values]}`` JSON lines to that file, and the numbers are
compared here with a fresh lecopt computation, closed forms or NumPy re-implementations of the
lecture's formulas.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import nbformat
import numpy as np
import pytest

import lecopt
from lecopt import landscapes, schedules

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = [
    "01_momentum.ipynb",
    "02_learning_rates.ipynb",
    "03_adaptive_learning_rates.ipynb",
    "04_batch_normalization.ipynb",
]
CELL_TIMEOUT_S = 300
PARALLEL_KERNELS = 2
_PROBE = "import sys; print('KERNEL_EXECUTABLE=' + sys.executable)"


# --------------------------------------------------------------------------------------------
# Execution


def _kernel_env(results: Path) -> dict[str, str]:
    env = dict(os.environ)
    # conftest sets MPLBACKEND=Agg for this process; the kernel needs its inline backend to
    # turn figures into image/png outputs.
    env.pop("MPLBACKEND", None)
    env.update({"LECOPT_QUICK": "1", "LECOPT_NO_PROGRESS": "1", "JAX_PLATFORMS": "cpu",
                "PYDEVD_DISABLE_FILE_VALIDATION": "1", "LECOPT_TEST_RESULTS": str(results)})
    return env


def _kernel_spec_dir(root: Path) -> Path:
    """A kernel spec ``python3`` that starts ipykernel with this very interpreter."""
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (lecopt tests)",
        "language": "python",
    }))
    return root / "kernels"


async def _execute(name: str, kernel_dirs: Path, results: Path,
                   gate: asyncio.Semaphore) -> dict:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(_PROBE))
    km = AsyncKernelManager(kernel_name="python3",
                            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dirs)]))
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    async with gate:
        start = time.perf_counter()
        error = None
        try:
            # The client does not own a kernel manager it was given: it must shut it down.
            await client.async_execute(env=_kernel_env(results), cleanup_kc=True)
        except CellExecutionError as e:
            error = str(e)
        finally:
            if km.has_kernel:
                await km.shutdown_kernel(now=True)
        elapsed = time.perf_counter() - start
    return {"nb": nb, "error": error, "seconds": elapsed, "results": _results(results)}


async def _execute_all(kernel_dirs: Path, results_dir: Path) -> dict[str, dict]:
    gate = asyncio.Semaphore(PARALLEL_KERNELS)
    done = await asyncio.gather(*(_execute(n, kernel_dirs, results_dir / f"{n}.jsonl", gate)
                                  for n in NOTEBOOKS))
    return dict(zip(NOTEBOOKS, done))


def _stdout(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream"
                   and o.get("name") == "stdout")


def _results(path: Path) -> dict[str, np.ndarray]:
    """The numbers a notebook recorded: one ``{name: [values]}`` JSON object a line."""
    out: dict[str, np.ndarray] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            for name, values in json.loads(line).items():
                assert name not in out, f"{name} recorded twice"
                out[name] = np.asarray(values, dtype=np.float64)
    return out


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> dict[str, dict]:
    kernel_dirs = _kernel_spec_dir(tmp_path_factory.mktemp("jupyter"))
    start = time.perf_counter()
    runs = asyncio.run(_execute_all(kernel_dirs, tmp_path_factory.mktemp("results")))
    total = time.perf_counter() - start
    each = ", ".join(f"{n} {r['seconds']:.1f} s" for n, r in runs.items())
    print(f"\nnotebooks executed in {total:.1f} s: {each}")
    return runs


def _ok(executed: dict, name: str) -> dict[str, np.ndarray]:
    run = executed[name]
    assert run["error"] is None, f"{name} failed:\n{run['error']}"
    return run["results"]


# --------------------------------------------------------------------------------------------
# Committed state


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_no_outputs(name):
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{name} has no code cells"
    for i, cell in enumerate(code):
        assert cell.outputs == [], f"{name}: code cell {i} has outputs"
        assert cell.execution_count is None, f"{name}: code cell {i} has an execution count"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_honours_quick_mode(name):
    source = "\n".join(c.source for c in nbformat.read(NOTEBOOK_DIR / name, as_version=4).cells)
    assert 'os.environ.get("LECOPT_QUICK"' in source


# --------------------------------------------------------------------------------------------
# Execution: no error, a figure, the same interpreter


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_and_draws(executed, name):
    _ok(executed, name)
    nb = executed[name]["nb"]
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, f"{name} drew no figure"
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert "quick mode: True" in _stdout(nb)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_kernel_runs_this_interpreter(executed, name):
    out = _stdout(executed[name]["nb"])
    found = re.search(r"KERNEL_EXECUTABLE=(.*)", out)
    assert found, "the probe cell printed nothing"
    assert os.path.samefile(found.group(1).strip(), sys.executable)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_shows_no_test_hooks(executed, name):
    """The numbers the tests read reach them through the LECOPT_TEST_RESULTS file only: no
    output a reader sees carries them (the old ``RESULT name=value`` lines)."""
    run = executed[name]
    assert run["results"], f"{name} recorded no numbers"
    shown = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                      for c in run["nb"].cells for o in c.get("outputs", []))
    assert not re.search(r"^RESULT ", shown, re.MULTILINE)
    source = "\n".join(c.source for c in nbformat.read(NOTEBOOK_DIR / name, as_version=4).cells)
    assert "RESULT " not in source  # no print of the old hook lines


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_interactive_panels_carry_a_static_figure(executed, name):
    """Each notebook has a widget panel, and its output also holds a PNG of the figure, so it
    shows without a widget frontend (headless execution, GitHub, nbviewer)."""
    nb = executed[name]["nb"]
    panels = [o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])
              if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert panels, f"{name} shows no interactive controls"
    for data in panels:
        assert data.get("image/png")


# --------------------------------------------------------------------------------------------
# 01 momentum


def _traj(tx, name: str, x0=None, steps=None) -> np.ndarray:
    rec = landscapes.LANDSCAPES[name]
    s = rec.suggested
    return np.asarray(landscapes.trajectory(tx, rec.fn, s["x0"] if x0 is None else x0,
                                            s["num_steps"] if steps is None else steps))


def test_momentum_results(executed):
    r = _ok(executed, NOTEBOOKS[0])
    assert r["chain_vs_sgd_maxdiff"][0] == 0.0
    assert r["chain_vs_algorithm1_maxdiff"][0] < 1e-3
    # Terminal velocity: step / GD step = (1 - phi^(t+1)) / (1 - phi).
    np.testing.assert_allclose(r["terminal_velocity_ratio_phi0.9_t200"],
                               (1 - 0.9**201) / 0.1, rtol=1e-3)

    s = landscapes.LANDSCAPES["quadratic"].suggested
    f = landscapes.quadratic
    gd = _traj(lecopt.sgd(s["learning_rate"]), "quadratic")
    mom = _traj(lecopt.sgd(s["learning_rate"], momentum=s["momentum"]), "quadratic")
    np.testing.assert_allclose(r["quadratic_f20_gd"], f(gd[20]), rtol=1e-5)
    np.testing.assert_allclose(r["quadratic_f20_momentum"], f(mom[20]), rtol=1e-4, atol=1e-8)
    assert r["quadratic_f20_momentum"][0] < 1e-3 < r["quadratic_f20_gd"][0]

    s = landscapes.LANDSCAPES["styblinski_tang"].suggested
    gd = _traj(lecopt.sgd(s["learning_rate"]), "styblinski_tang")
    mom = _traj(lecopt.sgd(s["learning_rate"], momentum=s["momentum"]), "styblinski_tang")
    np.testing.assert_allclose(r["styblinski_tang_gd_end"], gd[-1], atol=1e-5)
    np.testing.assert_allclose(r["styblinski_tang_momentum_end"], mom[-1], atol=1e-5)
    # The lecture's picture: GD stays in the local minimum, momentum reaches the global one
    # (roots of 4x^3 - 32x + 5).
    roots = np.sort(np.roots([4.0, 0.0, -32.0, 5.0]).real)
    np.testing.assert_allclose(r["styblinski_tang_gd_end"], [roots[2]] * 2, atol=1e-3)
    np.testing.assert_allclose(r["styblinski_tang_momentum_end"], [roots[0]] * 2, atol=1e-3)

    assert r["nesterov_lookahead_maxdiff"][0] < 1e-4
    x0 = landscapes.LANDSCAPES["quadratic"].suggested["x0"]
    mom = _traj(lecopt.sgd(0.05, momentum=0.9), "quadratic", x0, 60)
    nag = _traj(lecopt.sgd(0.05, momentum=0.9, nesterov=True), "quadratic", x0, 60)
    np.testing.assert_allclose(r["ravine_overshoot_momentum"], mom[:, 0].max(), rtol=1e-5)
    np.testing.assert_allclose(r["ravine_overshoot_nesterov"], nag[:, 0].max(), rtol=1e-5)
    assert r["ravine_overshoot_nesterov"][0] < r["ravine_overshoot_momentum"][0]

    np.testing.assert_array_equal(r["mnist_momenta"], [0.0, 0.5, 0.9, 0.99])
    err = r["mnist_final_test_error"]
    assert err.shape == (4,) and np.all((err >= 0) & (err <= 1))
    assert err[2] < 0.5  # phi = 0.9 learned something in quick mode (chance: 0.9)
    loss = r["mnist_final_train_loss"]
    assert loss[2] < loss[0]  # the higher momentum, the faster SGD fits the training data


# --------------------------------------------------------------------------------------------
# 02 learning rates


def _smith(t, base, peak, s):
    """Smith (2017): cycle, x and the triangle height, as the paper writes them."""
    cycle = np.floor(1 + t / (2 * s))
    x = np.abs(t / s - 2 * cycle + 1)
    return cycle, base + (peak - base) * np.maximum(0, 1 - x), np.maximum(0, 1 - x)


def _sgdr(t, peak, low, period, mult):
    start, length = 0, period
    while t >= start + length:
        start, length = start + length, length * mult
    return low + (peak - low) * (1 + np.cos(np.pi * (t - start) / length)) / 2


def test_learning_rate_results(executed):
    r = _ok(executed, NOTEBOOKS[1])
    assert 1e-5 <= r["lr_range_suggestion"][0] <= 3.0
    k = np.array([0, 1, 99])
    np.testing.assert_allclose(r["lr_range_learning_rates_0_1_last"],
                               1e-5 * (3.0 / 1e-5) ** (k / 99), rtol=1e-5)
    np.testing.assert_allclose(r["lr_range_learning_rates_0_1_last"],
                               jax.vmap(schedules.exponential_range(1e-5, 3.0, 100))(k),
                               rtol=1e-6)

    t = np.arange(7)
    formula = np.where(t <= 4, (1 - t / 4) * 0.1 + (t / 4) * 0.01, 0.01)
    np.testing.assert_allclose(r["linear_decay_tau4"], formula, rtol=1e-6)
    np.testing.assert_allclose(r["linear_decay_tau4"],
                               jax.vmap(schedules.linear_decay(0.1, 0.01, 4))(jnp.arange(7)))

    steps = r["probe_steps"]
    np.testing.assert_array_equal(steps, [0, 100, 200, 300, 400, 500, 600, 1000, 1999])
    cycle, _, h = _smith(steps, 1e-3, 6e-3, 200)
    np.testing.assert_allclose(r["triangular2_probe"], 1e-3 + 5e-3 * h * 2.0 ** -(cycle - 1),
                               rtol=1e-5)
    np.testing.assert_allclose(r["exp_range_probe"], 1e-3 + 5e-3 * h * 0.999**steps, rtol=1e-5)
    np.testing.assert_allclose(r["sgdr_probe"],
                               [_sgdr(ti, 6e-3, 1e-4, 200, 2) for ti in steps], rtol=1e-5)
    np.testing.assert_allclose(
        r["sgdr_probe"],
        jax.vmap(schedules.sgdr(6e-3, 1e-4, 200, period_mult=2))(steps.astype(int)))

    # Warm-up + SGDR: the ramp 6e-3 t / 100, then SGDR on its own step t - 100.
    t = r["probe_join_steps"].astype(int)
    warm = [6e-3 * ti / 100 if ti < 100 else _sgdr(ti - 100, 6e-3, 1e-4, 300, 2) for ti in t]
    np.testing.assert_allclose(r["warmup_sgdr_probe"], warm, rtol=1e-5)
    # One-cycle from the suggestion: PyTorch's OneCycleLR formula in NumPy.
    from tests.test_schedules_join import one_cycle_reference

    assert r["one_cycle_max_lr"][0] == pytest.approx(r["lr_range_suggestion"][0], rel=1e-6)
    lrs, moms = one_cycle_reference(r["one_cycle_max_lr"][0], 2000, 0.3, 25.0, 1e4, "cos", False)
    np.testing.assert_allclose(r["one_cycle_probe"], lrs[t], rtol=1e-5)
    np.testing.assert_allclose(r["one_cycle_momentum_probe"], moms[t], rtol=1e-6)

    err = r["mnist_schedule_final_test_error"]
    assert err.shape == (5,) and np.all(err < 0.5)


# --------------------------------------------------------------------------------------------
# 03 adaptive learning rates


def test_adaptive_results(executed):
    r = _ok(executed, NOTEBOOKS[2])
    for name in ("adagrad", "rmsprop", "adam"):
        assert r[f"{name}_chain_vs_{name}_maxdiff"][0] == 0.0
    for box in ("adagrad_vs_algorithm3", "rmsprop_vs_algorithm4", "adam_vs_algorithm5"):
        assert r[f"{box}_maxdiff"][0] < 1e-4, box

    # Effective rates alpha / (beta + sqrt(r)) after 100 steps; gradient 1 at every step, and 1
    # at steps 0, 10, ..., 90 only.
    np.testing.assert_allclose(r["adagrad_rate_after_100_steps"],
                               [0.1 / (1e-7 + 10.0), 0.1 / (1e-7 + np.sqrt(10.0))], rtol=1e-5)
    r_every = 1 - 0.9**100
    r_rare = sum(0.1 * 0.9 ** (99 - k) for k in range(0, 100, 10))
    np.testing.assert_allclose(r["rmsprop_rate_after_100_steps"],
                               0.1 / (1e-6 + np.sqrt([r_every, r_rare])), rtol=1e-4)

    t = np.arange(1, 6)
    np.testing.assert_allclose(r["raw_first_moment_constant_gradient_2"], 2 * (1 - 0.9**t),
                               rtol=1e-5)
    np.testing.assert_allclose(r["corrected_first_moment_constant_gradient_2"], 2.0, rtol=1e-6)
    np.testing.assert_allclose(r["corrected_second_moment_constant_gradient_2"], 4.0, rtol=1e-4)

    sad = landscapes.LANDSCAPES["saddle"]
    x0 = sad.suggested["x0"]
    fresh = {
        "gradient": lecopt.sgd(0.05),
        "momentum": lecopt.sgd(0.05, momentum=0.9),
        "adagrad": lecopt.adagrad(0.1),
        "rmsprop": lecopt.rmsprop(0.05),
        "adam": lecopt.adam(0.05),
    }
    ends = {}
    for name, tx in fresh.items():
        ends[name] = float(sad.fn(landscapes.trajectory(tx, sad.fn, x0, 60)[-1]))
        np.testing.assert_allclose(r[f"saddle_f_end_{name}"], ends[name], rtol=1e-4, atol=1e-6)
    # The lecture's animation: every method leaves the saddle faster than plain SGD.
    assert all(ends[n] < ends["gradient"] - 0.5 for n in fresh if n != "gradient")

    err = r["mnist_optimizer_final_test_error"]
    assert err.shape == (4,) and np.all(err < 0.5)


# --------------------------------------------------------------------------------------------
# 04 batch normalization


def _variance_relerr(offset: float) -> dict[str, float]:
    """The notebook's experiment, computed afresh: Flax's fast variance against lecopt's."""
    import flax.linen as flax_nn

    from lecopt import nn

    rng = np.random.default_rng(0)
    rng.normal(3.0, 2.0, size=(64, 8))  # the notebook draws its first batch before the noise
    x = (offset + rng.standard_normal((256, 16)).astype(np.float32)).astype(np.float32)
    exact = x.astype(np.float64).var(axis=0)
    out = {}
    for name, module in (("flax", flax_nn.BatchNorm(momentum=0.0)),
                         ("lecopt", nn.BatchNorm(momentum=0.0))):
        v = module.init(jax.random.key(0), x, use_running_average=False)
        _, upd = jax.jit(lambda v, x, m=module: m.apply(
            v, x, use_running_average=False, mutable=["batch_stats"]))(v, x)
        out[name] = np.abs(np.asarray(upd["batch_stats"]["var"], np.float64) - exact).max() \
            / exact.max()
    return out


def test_batch_normalization_results(executed):
    r = _ok(executed, NOTEBOOKS[3])
    assert r["bn_vs_numpy_maxdiff"][0] < 1e-5
    assert r["bn_running_mean_maxdiff"][0] < 1e-6
    assert r["bn_running_var_maxdiff"][0] < 1e-5

    flax_err, lecopt_err = r["variance_relerr_offset_1e3_flax_lecopt"]
    fresh = _variance_relerr(1e3)
    assert lecopt_err < 1e-5 and fresh["lecopt"] < 1e-5
    np.testing.assert_allclose(lecopt_err, fresh["lecopt"], atol=1e-6)
    # Catastrophic cancellation: the exact digits depend on the reduction order, the size not.
    assert flax_err > 1e-2 and fresh["flax"] > 1e-2
    nnx_flax_err, nnx_lecopt_err = r["variance_relerr_offset_1e3_nnx_flax_lecopt"]
    assert nnx_flax_err > 1e-2  # nnx.BatchNorm's default shares linen's cancellation
    assert nnx_lecopt_err == lecopt_err  # one implementation behind both lecopt modules

    loss = r["mnist_bn_final_train_loss"]
    assert loss[1] < loss[0]  # BatchNorm accelerated learning
    errors = r["bn_test_error_running_population"]
    assert np.all((errors >= 0) & (errors < 0.5))
    np.testing.assert_allclose(errors[0], r["mnist_bn_final_test_error"][1], atol=1e-6)


# --------------------------------------------------------------------------------------------
# lecopt.widgets, the notebooks' interactive helper (in this process: no kernel, no frontend)


def _line_figure(a: float, kind: str = "sin"):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5))
    x = np.linspace(0, 1, 20)
    ax.plot(x, np.sin(a * x) if kind == "sin" else np.cos(a * x))
    return fig


def test_static_panel_is_a_png_without_widgets():
    from lecopt import widgets

    calls = []

    def draw(a, kind):
        calls.append((a, kind))
        return _line_figure(a, kind)

    panel = widgets.show(draw, {"a": widgets.slider(0.0, 5.0, 2.0),
                                "kind": widgets.dropdown(["sin", "cos"], "cos")},
                         interactive=False)
    bundle = panel._repr_mimebundle_()
    assert panel.widget is None and bundle["image/png"].startswith(b"\x89PNG")
    assert "application/vnd.jupyter.widget-view+json" not in bundle
    assert calls == [(2.0, "cos")]
    panel.set(a=3.0)
    assert calls[-1] == (3.0, "cos") and panel.values["a"] == 3.0


def test_live_panel_redraws_when_a_control_moves():
    from lecopt import widgets

    panel = widgets.show(_line_figure, {"a": widgets.log_slider(0.1, 10.0, 1.0)},
                         interactive=True)
    bundle = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "image/png" in bundle
    before = panel.png
    panel._widgets["a"].value = 5.0  # as a user moving the slider
    assert panel.values["a"] == pytest.approx(5.0) and panel.png != before
    assert panel._image.value == panel.png


def test_live_panel_shows_a_failed_draw_instead_of_raising():
    from lecopt import widgets

    def draw(a):
        if a > 1:
            raise ValueError(f"a={a} too large")
        return _line_figure(a)

    panel = widgets.show(draw, {"a": widgets.slider(0.0, 2.0, 0.5)}, interactive=True)
    good = panel.png
    panel._widgets["a"].value = 1.5
    assert "too large" in panel._status.value and panel.png == good
    panel._widgets["a"].value = 0.7
    assert panel._status.value == "" and panel.png != good


def test_explorer_loads_the_suggested_settings_of_a_new_test_function():
    from lecopt import widgets

    panel = widgets.explore_paths("styblinski_tang", ("gd", "momentum"), interactive=True)
    rose = landscapes.LANDSCAPES["rosenbrock"]
    panel._widgets["landscape"].value = "rosenbrock"
    s = rose.suggested
    assert panel.values["x1"] == pytest.approx(s["x0"][0])
    assert panel.values["x2"] == pytest.approx(s["x0"][1])
    assert panel.values["learning_rate"] == pytest.approx(s["learning_rate"])
    assert panel.values["num_steps"] == s["num_steps"]
    (lo, hi), (lo2, hi2) = rose.window
    assert (panel._widgets["x1"].min, panel._widgets["x1"].max) == (lo, hi)
    assert (panel._widgets["x2"].min, panel._widgets["x2"].max) == (lo2, hi2)


def test_draw_paths_labels_the_lecture_outcome():
    from lecopt import widgets

    fig = widgets.draw_paths("styblinski_tang", ("gd", "momentum"))
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]  # the loss panel
    import matplotlib.pyplot as plt

    plt.close(fig)
    assert labels[0].startswith("gradient descent: end (2.75, 2.75)")
    assert labels[1].startswith("momentum: end (-2.9, -2.9)")


@pytest.mark.parametrize("make, match", [
    (lambda w: w.slider(0.0, 1.0, 2.0), "value=2.0"),
    (lambda w: w.log_slider(0.0, 1.0, 0.5), "lo=0.0"),
    (lambda w: w.dropdown(["a", "b"], "c"), "value='c'"),
    (lambda w: w.select_multiple(["a"], ["z"]), "'z'"),
    (lambda w: w.explore_paths("himmelblau"), "landscape='himmelblau'"),
    (lambda w: w.explore_paths(optimizers=("lbfgs",)), "lbfgs"),
    (lambda w: w.make_optimizer("lbfgs", 0.1), "optimizer='lbfgs'"),
])
def test_widget_arguments_are_checked(make, match):
    from lecopt import widgets

    with pytest.raises(ValueError, match=match):
        make(widgets)
