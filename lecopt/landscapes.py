"""Two-dimensional test functions of the lecture, optimizer trajectories on them, contour plots.

Every landscape is a pure, jittable ``f(x) -> scalar`` for a parameter vector ``x`` of shape
(2,) (:func:`styblinski_tang` takes any length). :data:`LANDSCAPES` maps each name to a
:class:`Landscape` record: its minima, a plotting window, a start point, and the ``suggested``
settings with which the lecture's experiment on it shows what the lecture says.

:func:`trajectory` runs any optax ``GradientTransformation`` (lecopt's included) on a landscape
as one ``lax.scan`` under ``jit``; the optimizer is an argument of the compiled program, so a
lecopt optimizer with a new learning rate or momentum (same structure) reuses it.

Example:
  >>> from lecopt import landscapes, optimizers
  >>> st = landscapes.LANDSCAPES["styblinski_tang"]
  >>> s = st.suggested
  >>> gd = landscapes.trajectory(optimizers.sgd(s["learning_rate"]), st.fn, s["x0"],
  ...                            s["num_steps"])
  >>> mom = landscapes.trajectory(optimizers.sgd(s["learning_rate"], momentum=s["momentum"]),
  ...                             st.fn, s["x0"], s["num_steps"])
  >>> [round(float(v), 2) for v in gd[-1]], [round(float(v), 2) for v in mom[-1]]
  ([2.75, 2.75], [-2.9, -2.9])

GD stops in the local minimum (2.75, 2.75); momentum rolls through to the global one.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lecopt import partition
from lecopt._checks import check_int, check_range

__all__ = [
    "Landscape",
    "LANDSCAPES",
    "quadratic",
    "make_quadratic",
    "styblinski_tang",
    "saddle",
    "rosenbrock",
    "trajectory",
    "contour",
]

Window = tuple[tuple[float, float], tuple[float, float]]


def _vector(x: Any, name: str, size: int | None = 2) -> jax.Array:
    """``x`` as a floating 1-D array; the shape is static, so this check also holds under jit."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    if x.ndim != 1 or (size is not None and x.shape[0] != size) or x.shape[0] == 0:
        want = f"({size},)" if size is not None else "(d,) with d >= 1"
        raise ValueError(f"{name}: x must have shape {want}, got shape {x.shape}")
    return x


# ----------------------------------------------------------------------------- landscapes


def quadratic(x: Any, a: float = 1.0, b: float = 20.0) -> jax.Array:
    """A poorly conditioned quadratic ravine: ``f(x) = (a x1^2 + b x2^2) / 2``.

    The Hessian is ``diag(a, b)``, its condition number ``b / a`` (20 by default); the minimum
    is ``f(0, 0) = 0``. Gradient descent with learning rate ``alpha`` multiplies ``x1`` by
    ``1 - alpha a`` and ``x2`` by ``1 - alpha b`` at every step: for ``1/b < alpha < 2/b`` the
    steep coordinate ``x2`` flips sign every step (the zig-zag across the ravine) while ``x1``
    creeps along its floor; no ``alpha`` contracts faster than ``(b - a) / (b + a)`` (0.905
    here). Momentum damps the zig-zag and travels the floor faster (see
    ``LANDSCAPES["quadratic"].suggested``).

    Args:
      x: the point, shape (2,).
      a: curvature along ``x1`` (the flat axis).
      b: curvature along ``x2`` (the steep axis).

    Returns:
      The scalar ``f(x)``.

    Example:
      >>> float(quadratic(jnp.array([1.0, 1.0])))  # 0.5 * (1 + 20)
      10.5
    """
    x = _vector(x, "quadratic")
    return 0.5 * (a * x[0] ** 2 + b * x[1] ** 2)


@functools.lru_cache(maxsize=64)
def make_quadratic(a: float = 1.0, b: float = 20.0) -> Callable[[Any], jax.Array]:
    """:func:`quadratic` with curvatures ``a`` and ``b`` fixed (condition number ``b / a``).

    The same ``(a, b)`` returns the same function object, so :func:`trajectory` (which treats
    ``fn`` as static) compiles once per ravine, not once per call.

    Args:
      a: curvature along ``x1``, > 0.
      b: curvature along ``x2``, > 0.

    Returns:
      ``f(x) = (a x1^2 + b x2^2) / 2``.

    Example:
      >>> steep = make_quadratic(1.0, 100.0)  # condition number 100
    """
    check_range("a", a, 0.0, lo_open=True)
    check_range("b", b, 0.0, lo_open=True)
    a, b = float(a), float(b)

    def f(x: Any) -> jax.Array:
        return quadratic(x, a, b)

    f.__name__ = f.__qualname__ = f"quadratic_a{a:g}_b{b:g}"
    f.__doc__ = f"quadratic(x, a={a:g}, b={b:g}): condition number {b / a:g}."
    return f


def styblinski_tang(x: Any) -> jax.Array:
    """Styblinski-Tang: ``f(x) = 1/2 sum_i (x_i^4 - 16 x_i^2 + 5 x_i)``, for any dimension d.

    The sum is separable: each coordinate sees the same double well, whose stationary points
    are the roots of ``4 x^3 - 32 x + 5 = 0``: the global minimum ``x = -2.903534``, a local
    maximum ``x = 0.156731`` and a local minimum ``x = 2.746803``. So the global minimum is
    ``x_i = -2.903534`` for all i with value ``-39.166166 d``; every other corner mixing the two
    minima is a local minimum (in 2-D: (2.75, 2.75) with value -50.06 is the worst).

    Args:
      x: the point, shape (d,), d >= 1.

    Returns:
      The scalar ``f(x)``.

    Example:
      >>> round(float(styblinski_tang(jnp.full(2, -2.903534))), 3)
      -78.332
    """
    x = _vector(x, "styblinski_tang", size=None)
    return 0.5 * jnp.sum(x**4 - 16.0 * x**2 + 5.0 * x)


def saddle(x: Any) -> jax.Array:
    """A saddle point that can be escaped: ``f(x) = x1^2 - x2^2 + x2^4 / 4``.

    Near the origin it is the classic saddle ``x1^2 - x2^2`` (Hessian ``diag(2, -2)``); the
    quartic term bounds it from below, so an optimizer that leaves the saddle along ``x2``
    settles in one of the two global minima ``(0, +-sqrt(2))`` with value -1 instead of running
    off to minus infinity. Started on the ridge ``x2 = 0`` exactly, gradient descent converges
    to the saddle; started a hair off it, it leaves only slowly (``x2`` grows by ``1 + 2 alpha``
    per step), which is where adaptive learning rates help.

    Args:
      x: the point, shape (2,).

    Returns:
      The scalar ``f(x)``.

    Example:
      >>> round(float(saddle(jnp.array([0.0, 2.0**0.5]))), 4)
      -1.0
    """
    x = _vector(x, "saddle")
    return x[0] ** 2 - x[1] ** 2 + 0.25 * x[1] ** 4


def rosenbrock(x: Any, a: float = 1.0, b: float = 100.0) -> jax.Array:
    """Rosenbrock's banana valley: ``f(x) = (a - x1)^2 + b (x2 - x1^2)^2``.

    The minimum ``f(a, a^2) = 0`` lies at the end of a long, curved, flat-bottomed valley.

    Args:
      x: the point, shape (2,).
      a: position of the minimum along ``x1``.
      b: steepness of the valley walls.

    Returns:
      The scalar ``f(x)``.

    Example:
      >>> float(rosenbrock(jnp.array([1.0, 1.0])))
      0.0
    """
    x = _vector(x, "rosenbrock")
    return (a - x[0]) ** 2 + b * (x[1] - x[0] ** 2) ** 2


# ----------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True, eq=False)
class Landscape:
    """Metadata of a 2-D test function.

    Attributes:
      name: the key in :data:`LANDSCAPES`.
      fn: the function ``f(x) -> scalar``.
      formula: ``f`` in plain text.
      minimizers: the global minimizers, one (x1, x2) tuple each.
      minimum: the global minimum value.
      local_minimizers: the other (non-global) local minimizers.
      saddle_points: stationary points that are saddles.
      window: ((x1_min, x1_max), (x2_min, x2_max)) for plots.
      start: a default start point.
      suggested: settings of the lecture's experiment on this landscape (read-only mapping;
        keys such as ``x0``, ``learning_rate``, ``momentum``, ``num_steps``, ``note``).
    """

    name: str
    fn: Callable[[Any], jax.Array]
    formula: str
    minimizers: tuple[tuple[float, ...], ...]
    minimum: float
    local_minimizers: tuple[tuple[float, ...], ...]
    saddle_points: tuple[tuple[float, ...], ...]
    window: Window
    start: tuple[float, ...]
    suggested: Mapping[str, Any]


def _styblinski_tang_critical_points() -> tuple[float, float, float]:
    # Roots of f1'(x) = (4 x^3 - 32 x + 5) / 2, sorted: global min, local max, local min.
    roots = np.sort(np.roots([4.0, 0.0, -32.0, 5.0]).real)
    return float(roots[0]), float(roots[1]), float(roots[2])


_ST_MIN, _ST_MAX, _ST_LOCAL = _styblinski_tang_critical_points()


def _st1(x: float) -> float:
    return 0.5 * (x**4 - 16.0 * x**2 + 5.0 * x)


def _frozen(**kwargs: Any) -> Mapping[str, Any]:
    return types.MappingProxyType(dict(kwargs))


LANDSCAPES: Mapping[str, Landscape] = types.MappingProxyType(
    {
        "quadratic": Landscape(
            name="quadratic",
            fn=quadratic,
            formula="(x1^2 + 20 x2^2) / 2",
            minimizers=((0.0, 0.0),),
            minimum=0.0,
            local_minimizers=(),
            saddle_points=(),
            window=((-10.0, 10.0), (-3.0, 3.0)),
            start=(-9.0, 2.0),
            suggested=_frozen(
                x0=(-9.0, 2.0),
                learning_rate=0.09,
                momentum=0.5,
                num_steps=40,
                note=(
                    "Same learning rate 0.09 for both: plain GD (factor -0.8 per step on x2) "
                    "zig-zags across the ravine at every step and crawls along x1 (factor "
                    "0.91); with momentum 0.5 both directions contract by sqrt(0.5) = 0.71 per "
                    "step, the zig-zag is damped and f falls below 1e-3 within 20 steps "
                    "(GD: about 0.94)."
                ),
            ),
        ),
        "styblinski_tang": Landscape(
            name="styblinski_tang",
            fn=styblinski_tang,
            formula="(1/2) sum_i (x_i^4 - 16 x_i^2 + 5 x_i)",
            minimizers=((_ST_MIN, _ST_MIN),),
            minimum=2 * _st1(_ST_MIN),
            local_minimizers=((_ST_LOCAL, _ST_LOCAL), (_ST_MIN, _ST_LOCAL), (_ST_LOCAL, _ST_MIN)),
            saddle_points=(
                (_ST_MAX, _ST_MIN),
                (_ST_MIN, _ST_MAX),
                (_ST_MAX, _ST_LOCAL),
                (_ST_LOCAL, _ST_MAX),
            ),
            window=((-5.0, 5.0), (-5.0, 5.0)),
            start=(4.6, 4.4),
            suggested=_frozen(
                x0=(4.6, 4.4),
                learning_rate=0.01,
                momentum=0.9,
                num_steps=300,
                note=(
                    "From x0 on the outer wall of the basin of the local minimum "
                    "(2.7468, 2.7468): plain GD (sgd(0.01)) settles there within 50 steps; SGD "
                    "with momentum (sgd(0.01, momentum=0.9)) carries enough velocity over the "
                    "ridge at x_i = 0.1567 and reaches the global minimum (-2.9035, -2.9035) "
                    "to 1e-4 within 300 steps. The same outcome holds for learning rates "
                    "0.007-0.013 with momentum 0.85-0.92 from this start; momentum 0.95 "
                    "overshoots the global basin and may end in another minimum."
                ),
            ),
        ),
        "saddle": Landscape(
            name="saddle",
            fn=saddle,
            formula="x1^2 - x2^2 + x2^4 / 4",
            minimizers=((0.0, float(np.sqrt(2.0))), (0.0, -float(np.sqrt(2.0)))),
            minimum=-1.0,
            local_minimizers=(),
            saddle_points=((0.0, 0.0),),
            window=((-2.0, 2.0), (-2.0, 2.0)),
            start=(1.5, 1e-3),
            suggested=_frozen(
                x0=(1.5, 1e-3),
                learning_rate=0.05,
                momentum=0.9,
                num_steps=60,
                note=(
                    "Started 1e-3 off the ridge x2 = 0, 60 steps at learning rate 0.05: plain "
                    "GD has barely left the saddle (x2 = 0.3, f = -0.09; x2 grows only by a "
                    "factor 1.1 per step), rmsprop(0.05) reaches the minimum (0, 1.414) in about "
                    "30 steps (its step does not shrink with the gradient), sgd(0.05, "
                    "momentum=0.9) gets to f = -0.98 and adagrad(0.1) to f = -0.83."
                ),
            ),
        ),
        "rosenbrock": Landscape(
            name="rosenbrock",
            fn=rosenbrock,
            formula="(1 - x1)^2 + 100 (x2 - x1^2)^2",
            minimizers=((1.0, 1.0),),
            minimum=0.0,
            local_minimizers=(),
            saddle_points=(),
            window=((-2.0, 2.0), (-1.0, 3.0)),
            start=(-1.2, 1.0),
            suggested=_frozen(
                x0=(-1.2, 1.0),
                learning_rate=1e-3,
                momentum=0.9,
                num_steps=2000,
                note=(
                    "The classic start (-1.2, 1): GD with learning rate 1e-3 follows the "
                    "valley slowly; momentum 0.9 at the same rate gets much closer to (1, 1) "
                    "in the same number of steps."
                ),
            ),
        ),
    }
)
"""Name -> :class:`Landscape` for the four test functions."""


# ----------------------------------------------------------------------------- trajectories


@functools.partial(jax.jit, static_argnames=("static", "fn", "num_steps"))
def _trajectory(
    dynamic: list[Any], x0: jax.Array, *, static: partition.Structure, fn: Callable,
    num_steps: int
) -> jax.Array:
    optimizer = static.rebuild(dynamic)
    grad_fn = jax.grad(fn)

    def step(carry, _):
        x, state = carry
        updates, state = optimizer.update(grad_fn(x), state, x)
        x = optax.apply_updates(x, updates)
        return (x, state), x

    _, xs = jax.lax.scan(step, (x0, optimizer.init(x0)), None, length=num_steps)
    return jnp.concatenate([x0[None], xs], axis=0)


def trajectory(
    optimizer: optax.GradientTransformation,
    fn: Callable[[jax.Array], jax.Array],
    x0: Any,
    num_steps: int,
) -> jax.Array:
    """The iterates ``x_0, x_1, ..., x_T`` of ``optimizer`` minimizing ``fn`` from ``x0``.

    Each step takes the exact gradient ``g = grad fn(x_t)`` and applies
    ``updates, state = optimizer.update(g, state, x_t)``; ``x_{t+1} = x_t + updates``. All
    steps run as one ``lax.scan`` under ``jax.jit``.

    Compilation: ``fn`` and ``num_steps`` are static. The optimizer's numeric leaves (a lecopt
    optimizer's hyperparameters) are arguments of the compiled program, its other leaves
    static: ``lecopt.optimizers.sgd(0.01, momentum=0.9)`` and ``sgd(0.02, momentum=0.5)``
    share one compilation (as long as the numbers have the same type: Python numbers are
    weakly typed, so switching to JAX arrays compiles once more), and ``jax.vmap`` over a batch
    of learning rates works. An optax
    optimizer is a set of closures, so each new instance compiles anew (reuse the object).

    Args:
      optimizer: any ``optax.GradientTransformation`` (lecopt's, optax's, chains).
      fn: a scalar function of a vector, e.g. one of this module's landscapes; must be
        hashable (functions are; wrap parameters with :func:`make_quadratic` or a function
        defined once rather than a fresh ``lambda`` per call).
      x0: the start, shape (d,).
      num_steps: number of optimizer steps T >= 0.

    Returns:
      Array of shape (num_steps + 1, d): row t is ``x_t``, row 0 is ``x0``.

    Example:
      >>> from lecopt import optimizers
      >>> path = trajectory(optimizers.sgd(0.09), quadratic, (-9.0, 2.0), 40)
      >>> path.shape
      (41, 2)
    """
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            f"optimizer={optimizer!r} must be an optax.GradientTransformation (init, update)"
        )
    if not callable(fn):
        raise TypeError(f"fn={fn!r} must be a function x -> scalar")
    num_steps = check_int("num_steps", num_steps, minimum=0)
    x0 = _vector(x0, "trajectory", size=None)
    dynamic, static = partition.split(optimizer)
    return _trajectory(dynamic, x0, static=static, fn=fn, num_steps=num_steps)


# ----------------------------------------------------------------------------- plotting


def _lookup(fn: Callable) -> Landscape | None:
    for record in LANDSCAPES.values():
        if record.fn is fn:
            return record
    return None


def contour(
    fn: Callable[[jax.Array], jax.Array],
    ax: Any = None,
    window: Window | None = None,
    levels: int | Sequence[float] = 30,
    *,
    num: int = 200,
    filled: bool = True,
    mark_minima: bool = True,
    title: str | None = None,
) -> Any:
    """Draws the contour lines of a 2-D function, as the lecture's landscape figures.

    With an integer ``levels`` the levels are quantiles of ``fn`` over the window, so ravines
    and valleys get as many lines as the walls around them. Trajectories from
    :func:`trajectory` can then be drawn with ``ax.plot(path[:, 0], path[:, 1], "o-")``.

    Args:
      fn: ``f(x) -> scalar`` for x of shape (2,).
      ax: a matplotlib Axes; None creates a new figure.
      window: ((x1_min, x1_max), (x2_min, x2_max)); None uses the registered landscape's
        window (required for other functions).
      levels: number of contour levels, or the level values.
      num: grid points per axis.
      filled: filled contours with a colour bar (else lines only).
      mark_minima: mark the global minimizers of a registered landscape.
      title: the title; None uses the landscape's name and formula.

    Returns:
      The Axes.

    Example:
      >>> from lecopt import optimizers
      >>> ax = contour(styblinski_tang)
      >>> path = trajectory(optimizers.sgd(0.01, momentum=0.9), styblinski_tang, (4.6, 4.4), 300)
      >>> _ = ax.plot(path[:, 0], path[:, 1], "o-", ms=2, label="momentum 0.9")
      >>> ax.get_xlabel(), ax.get_ylabel()
      ('x1 (parameter, dimensionless)', 'x2 (parameter, dimensionless)')
    """
    import matplotlib.pyplot as plt

    record = _lookup(fn)
    if window is None:
        if record is None:
            raise ValueError(
                f"window=None needs a landscape of LANDSCAPES, got fn={fn!r}; pass "
                "window=((x1_min, x1_max), (x2_min, x2_max))"
            )
        window = record.window
    (x1_lo, x1_hi), (x2_lo, x2_hi) = window
    if not (x1_lo < x1_hi and x2_lo < x2_hi):
        raise ValueError(f"window={window!r} must be ((lo, hi), (lo, hi)) with lo < hi")
    num = check_int("num", num, minimum=2)
    g1, g2 = np.meshgrid(np.linspace(x1_lo, x1_hi, num), np.linspace(x2_lo, x2_hi, num))
    points = jnp.asarray(np.stack([g1.ravel(), g2.ravel()], axis=1), dtype=jnp.float32)
    values = np.asarray(jax.jit(jax.vmap(fn))(points)).reshape(g1.shape)

    if isinstance(levels, numbers.Integral) and not isinstance(levels, bool):
        if levels < 2:
            raise ValueError(f"levels={levels!r} must be >= 2 or a sequence of values")
        levels = np.unique(np.quantile(values, np.linspace(0.0, 1.0, int(levels))))
    else:
        levels = np.sort(np.asarray(levels, dtype=float))

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 5))
    if filled:
        filled_set = ax.contourf(g1, g2, values, levels=levels, cmap="viridis", alpha=0.85)
        ax.figure.colorbar(filled_set, ax=ax, label="f(x)")
    ax.contour(g1, g2, values, levels=levels, colors="k", linewidths=0.4, alpha=0.5)
    if mark_minima and record is not None:
        mins = np.asarray(record.minimizers)
        ax.plot(mins[:, 0], mins[:, 1], "k*", ms=12, label="global minimum", zorder=5)
        ax.legend(loc="upper left")
    ax.set_xlim(x1_lo, x1_hi)
    ax.set_ylim(x2_lo, x2_hi)
    ax.set_xlabel("x1 (parameter, dimensionless)")
    ax.set_ylabel("x2 (parameter, dimensionless)")
    if title is None:
        name = getattr(fn, "__name__", "f")
        title = f"{record.name}: f(x) = {record.formula}" if record else name
    ax.set_title(title)
    return ax
