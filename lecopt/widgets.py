"""Interactive figures for the notebooks: the lecture's app as ipywidgets controls.

A :class:`Panel` couples a drawing function ``draw(**values) -> matplotlib Figure`` with
controls (sliders, dropdowns); moving a control redraws the figure. It degrades gracefully:

- In a Jupyter frontend with a widget manager (JupyterLab, Notebook 7, VS Code) the panel is a
  live widget.
- Without one (headless execution by nbclient or nbconvert, GitHub, nbviewer) the same output
  carries a static PNG of the figure at the initial settings: the panel's display bundle holds
  both the widget view and ``image/png``, and every frontend picks the richest type it can
  render.
- Without ipywidgets, or with ``interactive=False`` or the environment variable
  ``LECOPT_WIDGETS=0``, it is a plain static figure.

The explorers of the lecture's app (notebooks 01-04, and the page that ``lecopt app`` serves):

- :func:`explore_paths`: test function, start point, learning rate, momentum and optimizers;
  the optimization paths redraw. Its :data:`EXAMPLES` buttons load the lecture's predefined
  examples (momentum escaping Styblinski-Tang's local minimum, the ravine, the saddle race).
- :func:`explore_schedules`: a learning-rate schedule and its parameters.
- :func:`explore_batchnorm_offset`: BatchNorm's batch variance against an offset of the inputs.

Example:
  >>> from lecopt import widgets
  >>> panel = widgets.explore_paths("styblinski_tang", optimizers=("gd", "momentum"),
  ...                                interactive=False)  # in a notebook: the live panel
  >>> panel.png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"  # its static figure
  True
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from lecopt import landscapes, registry, schedules

__all__ = [
    "Control",
    "Panel",
    "slider",
    "log_slider",
    "int_slider",
    "dropdown",
    "select_multiple",
    "buttons",
    "show",
    "widgets_available",
    "figure_png",
    "OPTIMIZERS",
    "make_optimizer",
    "EXAMPLES",
    "draw_paths",
    "explore_paths",
    "SCHEDULES",
    "draw_schedule",
    "explore_schedules",
    "draw_batchnorm_offset",
    "explore_batchnorm_offset",
]

# --------------------------------------------------------------------------------------------
# Controls


@dataclasses.dataclass(frozen=True)
class Control:
    """A control's description, independent of ipywidgets (so static mode needs no widgets).

    Attributes:
      kind: ``"float"``, ``"log"`` (log-scale float), ``"int"``, ``"choice"``, ``"multi"`` or
        ``"buttons"`` (a row of toggle buttons, one of them selected).
      value: the initial value (a tuple for ``"multi"``).
      lo, hi, step: the slider's range and step (for ``"log"``: the values, not exponents).
      options: ``(label, value)`` pairs of a dropdown or multiple selection.
      label: the text beside the control; None uses the argument's name.
    """

    kind: str
    value: Any
    lo: float | None = None
    hi: float | None = None
    step: float | None = None
    options: tuple[tuple[str, Any], ...] = ()
    label: str | None = None

    def make_widget(self, name: str) -> Any:
        """The ipywidgets widget for this control (``continuous_update`` off: redraw on release)."""
        import ipywidgets as W

        style = {"description_width": "initial"}
        layout = W.Layout(width="320px")
        common = {"description": self.label or name, "style": style, "layout": layout}
        if self.kind == "float":
            return W.FloatSlider(value=self.value, min=self.lo, max=self.hi, step=self.step,
                                 continuous_update=False, readout_format=".3g", **common)
        if self.kind == "log":
            return W.FloatLogSlider(value=self.value, min=math.log10(self.lo),
                                    max=math.log10(self.hi), step=self.step,
                                    continuous_update=False, readout_format=".3g", **common)
        if self.kind == "int":
            return W.IntSlider(value=self.value, min=self.lo, max=self.hi, step=self.step,
                               continuous_update=False, **common)
        if self.kind == "choice":
            return W.Dropdown(options=list(self.options), value=self.value, **common)
        if self.kind == "multi":
            return W.SelectMultiple(options=list(self.options), value=tuple(self.value),
                                    rows=min(len(self.options), 6), **common)
        if self.kind == "buttons":
            # A whole row above the grid of sliders: the labels are sentences.
            return W.ToggleButtons(options=list(self.options), value=self.value,
                                   description=self.label or name,
                                   style={"description_width": "initial", "button_width": "auto"})
        raise ValueError(f"kind={self.kind!r} is not a known control kind")


def _check_within(name: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ValueError(f"{name}: value={value!r} must lie in [lo, hi] = [{lo!r}, {hi!r}]")


def slider(lo: float, hi: float, value: float, step: float | None = None, *,
           label: str | None = None) -> Control:
    """A float slider from ``lo`` to ``hi`` starting at ``value`` (default step: range/100)."""
    _check_within("slider", value, lo, hi)
    return Control("float", float(value), float(lo), float(hi),
                   float(step) if step else (hi - lo) / 100.0, label=label)


def log_slider(lo: float, hi: float, value: float, *, steps_per_decade: int = 20,
               label: str | None = None) -> Control:
    """A float slider on a log scale (learning rates): ``lo`` > 0 to ``hi``."""
    if not lo > 0:
        raise ValueError(f"log_slider: lo={lo!r} must be > 0")
    _check_within("log_slider", value, lo, hi)
    return Control("log", float(value), float(lo), float(hi), 1.0 / steps_per_decade,
                   label=label)


def int_slider(lo: int, hi: int, value: int, step: int = 1, *,
               label: str | None = None) -> Control:
    """An integer slider from ``lo`` to ``hi``."""
    _check_within("int_slider", value, lo, hi)
    return Control("int", int(value), int(lo), int(hi), int(step), label=label)


def _pairs(options: Sequence[Any] | Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    if isinstance(options, Mapping):
        return tuple((str(k), v) for k, v in options.items())
    return tuple((str(o), o) for o in options)


def dropdown(options: Sequence[Any] | Mapping[str, Any], value: Any = None, *,
             label: str | None = None) -> Control:
    """A dropdown; ``options`` is a list of values or a mapping label -> value."""
    pairs = _pairs(options)
    if not pairs:
        raise ValueError("dropdown: options must not be empty")
    values = [v for _, v in pairs]
    value = values[0] if value is None else value
    if value not in values:
        raise ValueError(f"dropdown: value={value!r} is not one of the options {values!r}")
    return Control("choice", value, options=pairs, label=label)


def select_multiple(options: Sequence[Any] | Mapping[str, Any], value: Sequence[Any], *,
                    label: str | None = None) -> Control:
    """A list from which several entries can be selected (ctrl/shift-click)."""
    pairs = _pairs(options)
    values = [v for _, v in pairs]
    bad = [v for v in value if v not in values]
    if bad:
        raise ValueError(f"select_multiple: values {bad!r} are not among the options {values!r}")
    return Control("multi", tuple(value), options=pairs, label=label)


def buttons(options: Sequence[Any] | Mapping[str, Any], value: Any = None, *,
            label: str | None = None) -> Control:
    """A row of toggle buttons (one click chooses); ``value=None``: none selected yet."""
    pairs = _pairs(options)
    if not pairs:
        raise ValueError("buttons: options must not be empty")
    if value is not None and value not in [v for _, v in pairs]:
        raise ValueError(f"buttons: value={value!r} is not one of the options "
                         f"{[v for _, v in pairs]!r}")
    return Control("buttons", value, options=pairs, label=label)


# --------------------------------------------------------------------------------------------
# Panel


def widgets_available() -> bool:
    """Whether a live widget can be made: ipywidgets importable and an IPython kernel running.

    ``LECOPT_WIDGETS=0`` in the environment forces static figures.
    """
    if os.environ.get("LECOPT_WIDGETS", "1") == "0":
        return False
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def figure_png(fig: Any, dpi: int = 90) -> bytes:
    """Renders a matplotlib figure to PNG bytes and closes it (it is then shown only once):
    :func:`lecopt.train.figure_png` at the panels' resolution."""
    from lecopt.train import figure_png as render

    return render(fig, dpi)


class Panel:
    """A figure ``draw(**values)`` with controls; displays as a live widget or a static PNG.

    Attributes:
      values: the current control values.
      png: the PNG bytes of the figure currently shown.
      figure: the matplotlib Figure currently shown (closed to pyplot; its artists hold the
        data drawn, e.g. ``figure.axes[0].lines``).
      widget: the ipywidgets container, or None in static mode.
    """

    def __init__(
        self,
        draw: Callable[..., Any],
        controls: Mapping[str, Control],
        *,
        interactive: bool | None = None,
        on_change: Callable[[str, Any, Panel], None] | None = None,
        dpi: int = 90,
    ) -> None:
        if not callable(draw):
            raise TypeError(f"draw: expected a function returning a Figure, got {draw!r}")
        for name, control in controls.items():
            if not isinstance(control, Control):
                raise TypeError(f"controls[{name!r}]: expected a Control (slider, dropdown, ...),"
                                f" got {control!r}")
        self._draw = draw
        self._controls = dict(controls)
        self._on_change = on_change
        self._dpi = dpi
        self._holding = False
        self.values: dict[str, Any] = {k: c.value for k, c in self._controls.items()}
        self.png: bytes = self._render()
        live = widgets_available() if interactive is None else bool(interactive)
        self.widget = self._build() if live else None

    # The figure --------------------------------------------------------------------------------

    def _render(self) -> bytes:
        figure = self._draw(**self.values)
        png = figure_png(figure, dpi=self._dpi)
        self.figure = figure
        return png

    def _build(self) -> Any:
        import ipywidgets as W

        self._widgets = {k: c.make_widget(k) for k, c in self._controls.items()}
        # At its own size (not stretched to the page's width), shrunk only to fit.
        self._image = W.Image(value=self.png, format="png",
                              layout=W.Layout(align_self="flex-start", max_width="100%"))
        self._status = W.HTML()
        for name, w in self._widgets.items():
            w.observe(lambda change, name=name: self._changed(name, change["new"]), names="value")
        rows = [w for k, w in self._widgets.items() if self._controls[k].kind == "buttons"]
        grid = [w for k, w in self._widgets.items() if self._controls[k].kind != "buttons"]
        controls = W.GridBox(grid, layout=W.Layout(grid_template_columns="repeat(3, 330px)"))
        return W.VBox([*rows, controls, self._status, self._image])

    def _changed(self, name: str, value: Any) -> None:
        self.values[name] = value
        if self._holding:
            return
        if self._on_change is not None:
            self._holding = True
            try:
                self._on_change(name, value, self)
            finally:
                self._holding = False
        self.redraw()

    def redraw(self) -> None:
        """Draws the figure again with the current values (a failed draw shows its error)."""
        try:
            self.png = self._render()
        except Exception as e:  # shown beside the controls, the panel stays usable
            if self.widget is None:
                raise
            self._status.value = f"<b style='color:#b00'>{type(e).__name__}: {e}</b>"
            return
        if self.widget is not None:
            self._status.value = ""
            self._image.value = self.png

    def set(self, **values: Any) -> None:
        """Sets controls (as if moved by hand) and redraws once.

        Called from an ``on_change`` hook it only sets: the redraw follows the hook.
        """
        unknown = set(values) - set(self._controls)
        if unknown:
            raise ValueError(f"unknown controls {sorted(unknown)}; known: {sorted(self._controls)}")
        inside_hook = self._holding
        self._holding = True
        try:
            for name, value in values.items():
                if self.widget is not None:
                    self._widgets[name].value = value
                    value = self._widgets[name].value  # as the widget clipped it
                self.values[name] = value
        finally:
            self._holding = inside_hook
        if not inside_hook:
            self.redraw()

    def set_range(self, name: str, lo: float, hi: float) -> None:
        """Changes a slider's range (widgets only; the value is clipped into it)."""
        if self.widget is None:
            return
        w = self._widgets[name]
        kind = self._controls[name].kind
        if kind == "log":
            lo, hi = math.log10(lo), math.log10(hi)
        # Widen first so that neither bound ever crosses the other.
        w.max = max(w.max, hi)
        w.min = min(w.min, lo)
        w.min = lo
        w.max = hi
        if kind == "float":
            w.step = (hi - lo) / 100.0
        self.values[name] = w.value

    # Display -----------------------------------------------------------------------------------

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        data: dict[str, Any] = {"image/png": self.png, "text/plain": "<lecopt figure>"}
        if self.widget is not None:
            # The widget view first; frontends without a widget manager fall back to the PNG.
            data.update(self.widget._repr_mimebundle_() or {})
            data["text/plain"] = "<lecopt interactive figure (static PNG without widgets)>"
        return data

    def display(self) -> None:
        """Displays the panel (useful when it is not the last expression of a cell)."""
        from IPython.display import display

        display(self)


def show(draw: Callable[..., Any], controls: Mapping[str, Control], *,
         interactive: bool | None = None,
         on_change: Callable[[str, Any, Panel], None] | None = None) -> Panel:
    """``draw(**values)`` with ``controls``: a :class:`Panel` (live widget or static PNG).

    Args:
      draw: returns a matplotlib Figure for the control values, passed by name.
      controls: name -> :class:`Control` (:func:`slider`, :func:`log_slider`, ...).
      interactive: True: a live widget (static PNG as fallback in the same output); False: only
        the static figure; None: live when :func:`widgets_available`.
      on_change: ``on_change(name, value, panel)`` runs before the redraw when a control moves;
        it may call ``panel.set(...)`` to adjust other controls (no redraw in between).

    Returns:
      The panel; as the last expression of a cell it displays itself.

    Example:
      >>> import matplotlib.pyplot as plt
      >>> def draw(a):
      ...     fig, ax = plt.subplots()
      ...     ax.plot([0, 1], [0, a])
      ...     return fig
      >>> panel = show(draw, {"a": slider(0.0, 1.0, 0.5)}, interactive=False)
      >>> panel.values
      {'a': 0.5}
    """
    return Panel(draw, controls, interactive=interactive, on_change=on_change)


# --------------------------------------------------------------------------------------------
# The path explorer


OPTIMIZERS = registry.OPTIMIZERS
"""Name -> :class:`lecopt.registry.OptimizerEntry` (the package's one table)."""

# The lecture's app draws SGD red and momentum blue on Styblinski-Tang.
_COLORS = {"gd": "tab:red", "momentum": "tab:blue", "nesterov": "tab:green",
           "adagrad": "tab:orange", "rmsprop": "tab:purple", "adam": "tab:brown"}


def make_optimizer(name: str, learning_rate: float, momentum: float = 0.9) -> Any:
    """The optimizer ``name`` of :data:`OPTIMIZERS` with the given rate and momentum ``phi``
    (Adam takes it as ``rho1``; Adagrad, RMSProp and gradient descent have none)."""
    return registry.make_optimizer(name, float(learning_rate), float(momentum))


def draw_paths(
    landscape: str = "styblinski_tang",
    optimizers: Sequence[str] = ("gd", "momentum"),
    x0: Sequence[float] | None = None,
    learning_rate: float | None = None,
    momentum: float | None = None,
    num_steps: int | None = None,
) -> Any:
    """Paths of several optimizers on a test function: contours + paths, and loss per step.

    Missing settings come from ``landscapes.LANDSCAPES[landscape].suggested``.

    Args:
      landscape: a key of :data:`lecopt.landscapes.LANDSCAPES`.
      optimizers: keys of :data:`OPTIMIZERS`.
      x0: the start point (x1, x2).
      learning_rate: ``alpha`` shared by all optimizers.
      momentum: ``phi`` (momentum, Nesterov; Adam's ``rho1``).
      num_steps: number of steps.

    Returns:
      The matplotlib Figure (left: paths on the contours, right: ``f(x_t) - f*`` per step).
    """
    import matplotlib.pyplot as plt

    if landscape not in landscapes.LANDSCAPES:
        raise ValueError(f"landscape={landscape!r} is unknown; choose from "
                         f"{sorted(landscapes.LANDSCAPES)}")
    record = landscapes.LANDSCAPES[landscape]
    s = record.suggested
    x0 = tuple(s["x0"]) if x0 is None else tuple(float(v) for v in x0)
    lr = s["learning_rate"] if learning_rate is None else learning_rate
    phi = s["momentum"] if momentum is None else momentum
    steps = s["num_steps"] if num_steps is None else int(num_steps)

    fig, (ax, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.3),
                                      gridspec_kw={"width_ratios": [1.25, 1]})
    landscapes.contour(record.fn, ax=ax, num=120, title=f"{landscape}: {record.formula}")
    (x_lo, x_hi), (y_lo, y_hi) = record.window
    ax.plot([x0[0]], [x0[1]], "ws", ms=7, mec="k", label="start", zorder=6)
    f_values = jax.jit(jax.vmap(record.fn))
    for name in optimizers:
        label = OPTIMIZERS[name].label if name in OPTIMIZERS else name
        path = np.asarray(landscapes.trajectory(make_optimizer(name, lr, phi), record.fn, x0,
                                                steps))
        finite = np.all(np.isfinite(path), axis=1)
        shown = path[finite]
        losses = np.asarray(f_values(path)) - record.minimum
        end = shown[-1]
        note = "diverged" if not finite.all() or np.any(np.abs(end) > 1e6) else (
            f"end ({end[0]:.3g}, {end[1]:.3g})")
        ax.plot(shown[:, 0], shown[:, 1], "o-", ms=2.5, lw=1.2, color=_COLORS.get(name),
                zorder=4, gid=f"path:{name}")  # gid: tests find each optimizer's path
        # float32 reaches f* exactly; a floor keeps those points on the log axis.
        ax_loss.plot(np.arange(len(losses)), np.where(finite, np.maximum(losses, 1e-12), np.nan),
                     color=_COLORS.get(name), label=f"{label}: {note}")
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    ax.legend(loc="upper left", fontsize="small", framealpha=0.85)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("iteration t (optimizer steps)")
    ax_loss.set_ylabel("f(x_t) - f* (log scale, floor 1e-12)")
    ax_loss.set_title(f"alpha = {lr:.3g}, phi = {phi:.3g}, from ({x0[0]:.3g}, {x0[1]:.3g})")
    ax_loss.grid(True, which="both", alpha=0.3)
    ax_loss.legend(fontsize="small")
    fig.tight_layout()
    return fig


EXAMPLES: Mapping[str, tuple[str, Mapping[str, Any]]] = {
    "escape": ("Styblinski-Tang: momentum escapes the local minimum",
               {"landscape": "styblinski_tang", "optimizers": ("gd", "momentum")}),
    "ravine": ("the ravine: momentum damps the zig-zag",
               {"landscape": "quadratic", "optimizers": ("gd", "momentum")}),
    "saddle": ("the saddle race", {"landscape": "saddle",
                                   "optimizers": ("gd", "momentum", "adagrad", "rmsprop", "adam")}),
    "rosenbrock": ("Rosenbrock's valley",
                   {"landscape": "rosenbrock", "optimizers": ("gd", "momentum", "adam")}),
}
"""The lecture's predefined examples of :func:`explore_paths`: key -> (label, settings).

The settings name a test function and the optimizers drawn; start point, learning rate,
momentum and steps are the test function's ``suggested`` ones (see
:data:`lecopt.landscapes.LANDSCAPES`): e.g. on Styblinski-Tang ``sgd(0.01)`` stays in the local
minimum while ``sgd(0.01, momentum=0.9)`` reaches the global one; in the saddle race every
optimizer runs at ``alpha = 0.05``.
"""


def _suggested_settings(landscape: str) -> dict[str, Any]:
    sug = landscapes.LANDSCAPES[landscape].suggested
    return {"x1": float(sug["x0"][0]), "x2": float(sug["x0"][1]),
            "learning_rate": float(sug["learning_rate"]), "momentum": float(sug["momentum"]),
            "num_steps": int(sug["num_steps"])}


def explore_paths(
    landscape: str = "styblinski_tang",
    optimizers: Sequence[str] = ("gd", "momentum"),
    *,
    x0: Sequence[float] | None = None,
    learning_rate: float | None = None,
    momentum: float | None = None,
    num_steps: int | None = None,
    examples: bool = True,
    interactive: bool | None = None,
) -> Panel:
    """The lecture's app: optimizer paths on a test function, with controls that redraw them.

    Controls: the lecture's examples (:data:`EXAMPLES`, one click each), test function
    (quadratic ravine, Styblinski-Tang, saddle, Rosenbrock), start point, learning rate,
    momentum, number of steps and the optimizers drawn. Choosing another test function moves the
    start point, rate, momentum and steps to its suggested settings; an example also chooses the
    optimizers. Without a widget frontend the output is the static figure of the initial
    settings.

    Args:
      landscape: initial test function, a key of :data:`lecopt.landscapes.LANDSCAPES`.
      optimizers: initial optimizers, keys of :data:`OPTIMIZERS`.
      x0, learning_rate, momentum, num_steps: initial settings (default: the suggested ones).
      examples: whether to show the buttons of :data:`EXAMPLES` above the controls.
      interactive: see :func:`show`.

    Returns:
      A :class:`Panel`; the path of optimizer ``name`` is the line with gid ``"path:name"`` in
      ``panel.figure.axes[0]``.
    """
    if landscape not in landscapes.LANDSCAPES:
        raise ValueError(f"landscape={landscape!r} is unknown; choose from "
                         f"{sorted(landscapes.LANDSCAPES)}")
    unknown = [o for o in optimizers if o not in OPTIMIZERS]
    if unknown:
        raise ValueError(f"optimizers {unknown!r} are unknown; choose from {sorted(OPTIMIZERS)}")
    record = landscapes.LANDSCAPES[landscape]
    s = record.suggested
    x0 = tuple(s["x0"]) if x0 is None else tuple(x0)
    (x_lo, x_hi), (y_lo, y_hi) = record.window
    controls = {
        "example": buttons({label: key for key, (label, _) in EXAMPLES.items()},
                           _matching_example(landscape, optimizers), label="lecture's examples"),
        "landscape": dropdown({"quadratic ravine": "quadratic",
                               "Styblinski-Tang": "styblinski_tang",
                               "saddle": "saddle", "Rosenbrock": "rosenbrock"}, landscape,
                              label="test function"),
        "optimizers": select_multiple({v.label: k for k, v in OPTIMIZERS.items()}, optimizers,
                                      label="optimizers"),
        "learning_rate": log_slider(1e-4, 1.0, learning_rate or s["learning_rate"],
                                    label="learning rate alpha"),
        "x1": slider(x_lo, x_hi, x0[0], label="start x1"),
        "x2": slider(y_lo, y_hi, x0[1], label="start x2"),
        "momentum": slider(0.0, 0.99, s["momentum"] if momentum is None else momentum, 0.01,
                           label="momentum phi"),
        "num_steps": int_slider(10, 3000, num_steps or s["num_steps"], 10,
                                label="steps"),
    }

    if not examples:
        del controls["example"]

    def draw(landscape, optimizers, learning_rate, x1, x2, momentum, num_steps, example=None):
        return draw_paths(landscape, optimizers, (x1, x2), learning_rate, momentum, num_steps)

    def load(panel: Panel, landscape: str, **settings: Any) -> None:
        (a_lo, a_hi), (b_lo, b_hi) = landscapes.LANDSCAPES[landscape].window
        panel.set_range("x1", a_lo, a_hi)
        panel.set_range("x2", b_lo, b_hi)
        panel.set(landscape=landscape, **_suggested_settings(landscape), **settings)

    def on_change(name: str, value: Any, panel: Panel) -> None:
        if name == "example":
            if value is not None:
                load(panel, **EXAMPLES[value][1])
            return
        if name == "landscape":
            load(panel, value)
        if examples:
            # Moved away from the example: its button can be clicked again to reload it.
            panel.set(example=None)

    return show(draw, controls, interactive=interactive, on_change=on_change)


def _matching_example(landscape: str, optimizers: Sequence[str]) -> str | None:
    for key, (_, settings) in EXAMPLES.items():
        if settings["landscape"] == landscape and tuple(settings["optimizers"]) == tuple(
                optimizers):
            return key
    return None


# --------------------------------------------------------------------------------------------
# The schedule explorer

SCHEDULES: Mapping[str, Callable[..., Any]] = {
    "linear_decay": lambda base_lr, max_lr, step_size, **_: schedules.linear_decay(
        max_lr, base_lr, step_size),
    "triangular": lambda base_lr, max_lr, step_size, **_: schedules.triangular(
        base_lr, max_lr, step_size),
    "triangular2": lambda base_lr, max_lr, step_size, **_: schedules.triangular2(
        base_lr, max_lr, step_size),
    "exp_range": lambda base_lr, max_lr, step_size, gamma, **_: schedules.exp_range(
        base_lr, max_lr, step_size, gamma),
    "cosine_annealing": lambda base_lr, max_lr, step_size, **_: schedules.cosine_annealing(
        max_lr, base_lr, step_size),
    "sgdr": lambda base_lr, max_lr, step_size, period_mult, max_lr_decay, **_: schedules.sgdr(
        max_lr, base_lr, step_size, period_mult, max_lr_decay),
}
"""Name -> ``make(base_lr, max_lr, step_size, gamma, period_mult, max_lr_decay)``: the schedules
of :mod:`lecopt.schedules` with the explorer's parameters (``base_lr`` is the floor, ``max_lr``
the peak, ``step_size`` the half-cycle, the decay length or the first period)."""


def draw_schedule(kind: str, base_lr: float, max_lr: float, step_size: int, gamma: float = 0.999,
                  period_mult: int = 2, max_lr_decay: float = 1.0,
                  num_steps: int = 2000) -> Any:
    """The learning rate ``alpha_t`` of schedule ``kind`` (a key of :data:`SCHEDULES`)."""
    import matplotlib.pyplot as plt

    if kind not in SCHEDULES:
        raise ValueError(f"kind={kind!r} is not a known schedule; choose from {sorted(SCHEDULES)}")
    schedule = SCHEDULES[kind](base_lr=base_lr, max_lr=max_lr, step_size=step_size, gamma=gamma,
                               period_mult=period_mult, max_lr_decay=max_lr_decay)
    fig, ax = plt.subplots(figsize=(9, 3.8))
    schedules.plot(schedule, num_steps, ax=ax)
    ax.set_title(f"{kind}: base_lr = {base_lr:.3g}, max_lr = {max_lr:.3g}, "
                 f"step_size = {step_size}")
    return fig


def explore_schedules(kind: str = "triangular2", *, interactive: bool | None = None) -> Panel:
    """The schedule explorer: a schedule of :data:`SCHEDULES` and its parameters.

    Args:
      kind: the schedule shown first.
      interactive: see :func:`show`.

    Returns:
      A :class:`Panel` drawing :func:`draw_schedule`.

    Example:
      In a notebook, or on the page of ``lecopt app``, the panel is live; here, its static
      figure:

      >>> panel = lecopt.widgets.explore_schedules("sgdr", interactive=False)
      >>> panel.values["kind"], panel.png[:4] == b"\\x89PNG"
      ('sgdr', True)
    """
    return show(draw_schedule, {
        "kind": dropdown(list(SCHEDULES), kind, label="schedule"),
        "base_lr": log_slider(1e-5, 1.0, 1e-3, label="base_lr (floor)"),
        "max_lr": log_slider(1e-5, 1.0, 6e-3, label="max_lr (peak)"),
        "step_size": int_slider(10, 2000, 200, 10, label="step_size / tau / T_0"),
        "gamma": slider(0.99, 1.0, 0.999, 0.0005, label="gamma (exp_range)"),
        "period_mult": int_slider(1, 3, 2, label="period_mult (sgdr)"),
        "max_lr_decay": slider(0.1, 1.0, 1.0, 0.05, label="max_lr_decay (sgdr)"),
        "num_steps": int_slider(100, 10000, 2000, 100, label="steps shown"),
    }, interactive=interactive)


# --------------------------------------------------------------------------------------------
# The BatchNorm offset explorer


@functools.lru_cache(maxsize=16)
def _batch_variance(module: Any) -> Callable[[Any], Any]:
    """The jitted batch variance and output of ``module`` (cached: a redraw does not recompile;
    Flax modules compare and hash by their fields)."""

    @jax.jit
    def batch_variance(x):
        # With momentum 0 the stored running variance is the batch variance itself.
        variables = module.init(jax.random.key(0), x, use_running_average=False)
        y, updates = module.apply(variables, x, use_running_average=False,
                                  mutable=["batch_stats"])
        return updates["batch_stats"]["var"], y
    return batch_variance


def _batchnorm_modules(epsilon: float) -> dict[str, Any]:
    import flax.linen as flax_nn

    from lecopt import nn

    return {"Flax (fast variance)": flax_nn.BatchNorm(momentum=0.0, epsilon=epsilon),
            "lecopt": nn.BatchNorm(momentum=0.0, epsilon=epsilon)}


def draw_batchnorm_offset(offset: float, epsilon: float, noise: Any,
                          curves: Mapping[str, Sequence[float]] | None = None,
                          offsets: Sequence[float] | None = None) -> Any:
    """BatchNorm on ``offset + noise`` in float32: Flax's fast variance against lecopt's.

    Left: the standard deviation of each unit's normalized output (ideal
    ``sigma_j / sqrt(sigma_j^2 + epsilon)``, about 1). Right (when given): ``curves``, the
    relative error of the batch variance at each of ``offsets``, and the current offset.
    """
    import matplotlib.pyplot as plt

    noise = np.asarray(noise, np.float32)
    x = (offset + noise).astype(np.float32)
    exact = x.astype(np.float64).var(axis=0)
    fig, axes = plt.subplots(1, 1 if curves is None else 2, figsize=(12, 4),
                             layout="constrained", squeeze=False)
    ax = axes[0, 0]
    units = np.arange(noise.shape[1])
    ideal = np.sqrt(exact / (exact + epsilon))
    for k, (name, module) in enumerate(_batchnorm_modules(epsilon).items()):
        _, y = _batch_variance(module)(x)
        std = np.asarray(y, np.float64).std(axis=0)
        ax.bar(units + (k - 0.5) * 0.4, std, width=0.4, color=["tab:red", "tab:blue"][k],
               label=f"{name}: worst unit off by {np.abs(std / ideal - 1).max():.2g}")
    ax.axhline(1.0, color="k", lw=1, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("unit j")
    ax.set_ylabel("std of the normalized output (log scale)")
    ax.set_title(f"Offset c = {offset:.3g}, epsilon = {epsilon:.1e}")
    ax.legend(fontsize="small")
    if curves is not None:
        ax2 = axes[0, 1]
        # The linen pair as on the left; further curves (e.g. the NNX modules) dashed.
        colors = ["tab:red", "tab:blue", "tab:orange", "tab:cyan"]
        for k, (name, curve) in enumerate(curves.items()):
            ax2.loglog(offsets, np.maximum(curve, 1e-9), "o-" if k < 2 else "x--",
                       color=colors[k] if k < len(colors) else f"C{k}", ms=3, label=name)
        ax2.axvline(offset, color="k", lw=1)
        ax2.set_xlabel("offset c")
        ax2.set_ylabel("relative error of the batch variance (floor 1e-9)")
        ax2.set_title("Variance error against offset (epsilon = 1e-5)")
        ax2.legend(fontsize="small")
        ax2.grid(True, which="both", alpha=0.3)
    return fig


def explore_batchnorm_offset(noise: Any = None, *, curves: Mapping[str, Sequence[float]]
                             | None = None, offsets: Sequence[float] | None = None,
                             interactive: bool | None = None) -> Panel:
    """The BatchNorm offset slider: move the offset ``c`` and ``epsilon`` of the inputs.

    Args:
      noise: the (batch, units) activations before the offset; default 256 x 16 standard
        normal samples (seed 0).
      curves: the right panel's relative errors of the batch variance, ``{name: one value per
        offset}`` (e.g. a notebook's own, with more modules); default: Flax's fast variance
        and lecopt's, measured on ``noise`` at 21 offsets from 1 to 1e5.
      offsets: the offsets of ``curves`` (required with them).
      interactive: see :func:`show`.

    Returns:
      A :class:`Panel` drawing :func:`draw_batchnorm_offset`.

    Example:
      In a notebook, or on the page of ``lecopt app``, the panel is live; here, its static
      figure:

      >>> panel = lecopt.widgets.explore_batchnorm_offset(interactive=False)
      >>> panel.png[:4] == b"\\x89PNG"
      True
    """
    if noise is None:
        noise = np.random.default_rng(0).standard_normal((256, 16)).astype(np.float32)
    noise = np.asarray(noise, np.float32)
    if curves is not None:
        if offsets is None or any(len(c) != len(offsets) for c in curves.values()):
            raise ValueError("curves: give offsets=, with one value of every curve per offset")
        return _offset_panel(noise, dict(curves), np.asarray(offsets), interactive)
    offsets = np.logspace(0, 5, 21)
    curves = {}
    for name, module in _batchnorm_modules(1e-5).items():
        batch_variance = _batch_variance(module)
        curve = []
        for c in offsets:
            x = (c + noise).astype(np.float32)
            exact = x.astype(np.float64).var(axis=0)
            v, _ = batch_variance(x)
            curve.append(np.abs(np.asarray(v, np.float64) - exact).max() / exact.max())
        curves[name] = curve
    return _offset_panel(noise, curves, offsets, interactive)


def _offset_panel(noise: np.ndarray, curves: dict, offsets: np.ndarray,
                  interactive: bool | None) -> Panel:
    def draw(offset, epsilon):
        return draw_batchnorm_offset(offset, epsilon, noise, curves, offsets)

    return show(draw, {
        "offset": log_slider(1.0, 1e5, 3e3, label="offset c"),
        "epsilon": log_slider(1e-8, 1e-1, 1e-5, label="epsilon"),
    }, interactive=interactive)
