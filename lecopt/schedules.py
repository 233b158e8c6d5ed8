"""Learning-rate schedules ``alpha_t = f(t)``, pure functions of the step (lecture: Learning Rates).

Every factory returns a :class:`jax.tree_util.Partial` of a module-level function whose
arguments are the schedule's numbers, so a schedule is a pytree whose leaves are its
hyperparameters: passed into a jitted function as an argument, a new value runs through the
program already compiled, and ``jax.vmap`` maps over a batch of schedules. Call it as
``schedule(t)`` with a Python int, a (traced) int32 scalar or an array of steps; the result has
JAX's default float dtype (float32, or float64 under ``jax_enable_x64``) and the shape of ``t``.

Used as the ``learning_rate`` of a lecopt or optax optimizer, the k-th update (k = 0, 1, ...)
uses ``f(k)``. The module-level functions are jitted, so that a schedule called eagerly (in a
Python loop, by :func:`plot`) compiles once per shape instead of dispatching op by op; inside
a jitted program they are inlined.

Symbols: ``t`` the step, ``alpha_0`` / ``alpha_tau`` the rates at the ends of the linear decay,
``tau`` its length, ``s`` the half-cycle length of cyclical rates, ``T_i`` the length of the
i-th cosine cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from lecopt._checks import check_positive_int, check_range, concrete_values

__all__ = [
    "Schedule",
    "constant",
    "linear_decay",
    "triangular",
    "triangular2",
    "exp_range",
    "cosine_annealing",
    "sgdr",
    "exponential_range",
    "linear_range",
    "plot",
]

Schedule = Callable[[Any], jax.Array]
Numeric = float | int | jax.Array


# --------------------------------------------------------------------------------------------
# Shared helpers


def _fdt() -> Any:
    # Read at call time, so one schedule follows the x64 flag in force where it is evaluated.
    return jnp.result_type(float)


def _idt() -> Any:
    return jnp.result_type(int)


def _f(x: Any) -> jax.Array:
    return jnp.asarray(x, dtype=_fdt())


def _t(step: Any) -> jax.Array:
    """The step as a float of the default dtype (integers are exact below 2**24 in float32)."""
    return jnp.asarray(step).astype(_fdt())


def _lerp(lo: jax.Array, hi: jax.Array, w: jax.Array) -> jax.Array:
    # (1 - w) lo + w hi rather than lo + w (hi - lo): w = 0 gives lo and w = 1 gives hi
    # exactly, so every schedule hits its end values bit for bit.
    return (1 - w) * lo + w * hi


def _fraction(t: jax.Array, total: jax.Array) -> jax.Array:
    """``clip(t / total, 0, 1)`` with both ends pinned: XLA turns a division by a constant into a
    multiplication by its rounded reciprocal, so ``total / total`` need not come out as 1."""
    return jnp.where(t >= total, 1.0, jnp.where(t <= 0, 0.0, jnp.clip(t / total, 0, 1)))


def _num(x: Any) -> Any:
    # Python numbers become Python floats so that 3 and 3.0 make the same pytree leaf type
    # (same compiled program); arrays are kept as they are (possibly traced).
    if isinstance(x, int | float | np.number) and not isinstance(x, bool):
        return float(x)
    return x


def _count(x: Any) -> Any:
    # Step counts that arrive as integral Python floats (e.g. 100.0) become ints.
    if isinstance(x, int | float | np.number) and not isinstance(x, bool):
        return int(x)
    return x


def _check_min_num_steps(name: str, value: Any, least: int) -> None:
    check_positive_int(name, value)
    arr = concrete_values(value)
    if arr is not None and np.any(arr < least):
        raise ValueError(f"{name}={value!r} is out of range; {name} must be an integer >= {least}")


def _check_order(lo_name: str, lo: Any, hi_name: str, hi: Any) -> None:
    a, b = concrete_values(lo), concrete_values(hi)
    if a is not None and b is not None and np.any(a > b):
        raise ValueError(
            f"{lo_name}={lo!r} is greater than {hi_name}={hi!r}; {lo_name} must be <= {hi_name}"
        )


def _check_rates(**rates: Any) -> None:
    for name, value in rates.items():
        check_range(name, value, 0.0)


# --------------------------------------------------------------------------------------------
# constant and linear decay


@jax.jit
def _constant(value, step):
    return jnp.broadcast_to(_f(value), jnp.shape(step))


def constant(value: Numeric) -> Schedule:
    """The constant schedule ``alpha_t = value``.

    Args:
      value: the rate, >= 0 and finite.

    Returns:
      A schedule ``t -> value`` (shaped like ``t``).

    Example:
      >>> lecopt.schedules.constant(0.1)(7)   # Array(0.1, dtype=float32)
    """
    check_range("value", value, 0.0)
    return Partial(_constant, _num(value))


@jax.jit
def _linear_decay(init_value, end_value, transition_steps, step):
    return _lerp(_f(init_value), _f(end_value), _fraction(_t(step), _f(transition_steps)))


def linear_decay(init_value: Numeric, end_value: Numeric, transition_steps: Numeric) -> Schedule:
    """Linear decay to a floor (the lecture's schedule)::

        alpha_t = (1 - t/tau) alpha_0 + (t/tau) alpha_tau   for t <= tau
        alpha_t = alpha_tau                                 for t > tau

    Args:
      init_value: ``alpha_0`` >= 0.
      end_value: ``alpha_tau`` >= 0 (may exceed ``alpha_0``: a linear warm-up).
      transition_steps: ``tau`` > 0.

    Returns:
      The schedule; ``f(0) == alpha_0`` and ``f(t) == alpha_tau`` for ``t >= tau`` exactly.

    Example:
      >>> f = lecopt.schedules.linear_decay(0.1, 0.001, 4)
      >>> f(1)   # 3/4 * 0.1 + 1/4 * 0.001
    """
    _check_rates(init_value=init_value, end_value=end_value)
    check_range("transition_steps", transition_steps, 0.0, lo_open=True)
    return Partial(_linear_decay, _num(init_value), _num(end_value), _num(transition_steps))


# --------------------------------------------------------------------------------------------
# Cyclical learning rates (Smith 2017)


def _triangle(step_size, step):
    """Smith's cycle index and triangle height for step ``t`` and half-cycle ``s``.

    ``cycle = floor(1 + t/(2s))`` and ``max(0, 1 - x)`` with ``x = |t/s - 2 cycle + 1|``; the
    latter is computed from ``pos = mod(t, 2s)`` (the same number) because ``mod`` of integers
    is exact where ``t/s - 2 cycle`` would cancel at large ``t``.
    """
    t = _t(step)
    s = _f(step_size)
    pos = jnp.mod(t, 2 * s)
    # (t - pos) is a whole multiple of 2s: rounding the quotient is exact, where floor(t/(2s))
    # could land one low at a multiple (see _fraction).
    cycle = jnp.round((t - pos) / (2 * s)) + 1
    # 1 - x = 1 - |pos/s - 1| = (s - |pos - s|)/s, whose ends are pinned (see _fraction).
    return cycle, _fraction(s - jnp.abs(pos - s), s)


@jax.jit
def _triangular(base_lr, max_lr, step_size, step):
    _, h = _triangle(step_size, step)
    return _lerp(_f(base_lr), _f(max_lr), h)


@jax.jit
def _triangular2(base_lr, max_lr, step_size, step):
    cycle, h = _triangle(step_size, step)
    return _lerp(_f(base_lr), _f(max_lr), h * jnp.exp2(-(cycle - 1)))


@jax.jit
def _exp_range(base_lr, max_lr, step_size, gamma, step):
    _, h = _triangle(step_size, step)
    return _lerp(_f(base_lr), _f(max_lr), h * _f(gamma) ** _t(step))


def _check_cyclical(base_lr: Any, max_lr: Any, step_size: Any) -> None:
    _check_rates(base_lr=base_lr, max_lr=max_lr)
    _check_order("base_lr", base_lr, "max_lr", max_lr)
    check_range("step_size", step_size, 0.0, lo_open=True)


def triangular(base_lr: Numeric, max_lr: Numeric, step_size: Numeric) -> Schedule:
    """Smith's (2017) triangular cyclical learning rate::

        cycle = floor(1 + t / (2 s)),   x = |t/s - 2 cycle + 1|
        alpha_t = base + (max - base) max(0, 1 - x)

    The rate climbs linearly from ``base_lr`` to ``max_lr`` in ``s`` steps and back in ``s``
    more, forever (period ``2 s``).

    Args:
      base_lr: the lower bound, >= 0.
      max_lr: the upper bound, >= ``base_lr``.
      step_size: ``s`` > 0, the half-cycle length in steps (Smith: 2-10 epochs of iterations).

    Returns:
      The schedule; ``f(2 k s) == base_lr`` and ``f((2k+1) s) == max_lr`` exactly.

    Example:
      >>> f = lecopt.schedules.triangular(1e-3, 6e-3, 2000)
      >>> f(2000)   # 6e-3, the top of the first cycle

    Reference:
      Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017.
    """
    _check_cyclical(base_lr, max_lr, step_size)
    return Partial(_triangular, _num(base_lr), _num(max_lr), _num(step_size))


def triangular2(base_lr: Numeric, max_lr: Numeric, step_size: Numeric) -> Schedule:
    """Smith's "triangular2": the triangle whose amplitude is halved after every cycle::

        alpha_t = base + (max - base) max(0, 1 - x) 2**-(cycle - 1)

    with ``cycle`` and ``x`` as in :func:`triangular`.

    Args:
      base_lr: the lower bound, >= 0.
      max_lr: the first peak, >= ``base_lr``.
      step_size: ``s`` > 0, the half-cycle length in steps.

    Returns:
      The schedule.

    Example:
      >>> f = lecopt.schedules.triangular2(0.0, 0.1, 10)
      >>> f(10), f(30)   # 0.1, 0.05
    """
    _check_cyclical(base_lr, max_lr, step_size)
    return Partial(_triangular2, _num(base_lr), _num(max_lr), _num(step_size))


def exp_range(base_lr: Numeric, max_lr: Numeric, step_size: Numeric, gamma: Numeric) -> Schedule:
    """Smith's "exp_range": the triangle with amplitude scaled by ``gamma**t``::

        alpha_t = base + (max - base) max(0, 1 - x) gamma**t

    with ``cycle`` and ``x`` as in :func:`triangular` (``t`` counts steps, as PyTorch's
    ``CyclicLR(mode="exp_range")``).

    Args:
      base_lr: the lower bound, >= 0.
      max_lr: the upper bound, >= ``base_lr``.
      step_size: ``s`` > 0, the half-cycle length in steps.
      gamma: the per-step decay of the amplitude, in (0, 1].

    Returns:
      The schedule.

    Example:
      >>> f = lecopt.schedules.exp_range(1e-3, 6e-3, 2000, gamma=0.99994)
    """
    _check_cyclical(base_lr, max_lr, step_size)
    check_range("gamma", gamma, 0.0, 1.0, lo_open=True)
    return Partial(_exp_range, _num(base_lr), _num(max_lr), _num(step_size), _num(gamma))


# --------------------------------------------------------------------------------------------
# Cosine annealing and warm restarts (Loshchilov & Hutter 2017)


def _cosine_weight(t_cur: jax.Array, t_left: jax.Array, t_len: jax.Array) -> jax.Array:
    """``(1 + cos(pi t_cur / T)) / 2``: 1 at the start of a cycle, 0 at its end.

    Evaluated as ``1 - sin(pi/2 t_cur/T)**2`` in the first half and ``sin(pi/2 t_left/T)**2``
    (``t_left = T - t_cur``) in the second: the same number, but with full relative precision
    near the end of a long cycle, where ``1 + cos`` would cancel (in float32 already at
    ``T ~ 10**4``).
    """
    first_half = t_cur <= t_left
    # One sine serves both halves: cos(a)**2 = 1 - sin(a)**2 is well conditioned for a <= pi/4.
    s = jnp.sin((jnp.pi / 2) * (jnp.where(first_half, t_cur, t_left) / t_len)) ** 2
    return jnp.where(t_left <= 0, 0.0, jnp.where(first_half, 1 - s, s))


@jax.jit
def _cosine_annealing(max_lr, min_lr, period, step):
    period = _f(period)
    t = jnp.clip(_t(step), 0, period)
    return _lerp(_f(min_lr), _f(max_lr), _cosine_weight(t, period - t, period))


def cosine_annealing(max_lr: Numeric, min_lr: Numeric, period: Numeric) -> Schedule:
    """One cosine half-wave from ``max_lr`` down to ``min_lr``, then constant::

        alpha_t = min + (max - min) (1 + cos(pi t / T)) / 2   for t <= T,   min after.

    Args:
      max_lr: the starting rate, >= ``min_lr``.
      min_lr: the final rate, >= 0.
      period: ``T`` > 0, the number of steps of the descent.

    Returns:
      The schedule; ``f(0) == max_lr`` and ``f(t) == min_lr`` for ``t >= T`` exactly.

    Example:
      >>> f = lecopt.schedules.cosine_annealing(0.1, 0.0, 100)
      >>> f(50)   # 0.05
    """
    _check_rates(max_lr=max_lr, min_lr=min_lr)
    _check_order("min_lr", min_lr, "max_lr", max_lr)
    check_range("period", period, 0.0, lo_open=True)
    return Partial(_cosine_annealing, _num(max_lr), _num(min_lr), _num(period))


def _sat_mul(a: jax.Array, b: jax.Array, cap: int) -> jax.Array:
    """``min(a * b, cap)`` for integers ``a, b >= 0`` without overflowing."""
    over = a > cap // jnp.maximum(b, 1)
    return jnp.where(over, cap, a * b)


def _sat_pow(m: jax.Array, k: jax.Array, cap: int, bits: int) -> jax.Array:
    """``min(m**k, cap)`` for integers ``m >= 1`` and ``0 <= k < 2**bits`` by repeated squaring."""
    result = jnp.ones_like(k)
    base = m
    for b in range(bits):
        take = ((k >> b) & 1) == 1
        result = jnp.where(take, _sat_mul(result, base, cap), result)
        base = _sat_mul(base, base, cap)
    return result


def _cycle_starts_int(p, m, ks, cap, bits):
    """Exact starts ``S_k = p (m**k - 1)/(m - 1)`` of an integer ``m >= 2``, in integers.

    Saturated at ``cap``: a start beyond the integer range lies after every countable step.
    ``m**k`` itself may overflow where ``S_k`` does not, so ``S_k = p (m G_{k-1} + 1)`` with
    ``G_{k-1} = (m**(k-1) - 1)/(m - 1)``; and ``m**(k-1) > cap`` implies ``S_k > cap``.
    """
    prev = jnp.maximum(ks - 1, 0)
    pw = _sat_pow(m, prev, cap, bits)
    geo = jnp.where(pw >= cap, cap, _sat_mul(m, (pw - 1) // (m - 1), cap))
    geo = jnp.where(geo >= cap, cap, geo + 1)
    return jnp.where(ks <= 0, 0, _sat_mul(p, geo, cap))


def _cycle_starts_float(p, m, ks, cap):
    """Starts ``S_k = round(p (m**k - 1)/(m - 1))`` of a non-integer ``m > 1``.

    Written with ``expm1``/``log1p`` so that ``m`` close to 1 keeps full relative accuracy.
    """
    fdt = _fdt()
    s = jnp.round(p.astype(fdt) * jnp.expm1(ks.astype(fdt) * jnp.log1p(m - 1)) / (m - 1))
    too_big = ~(s < float(cap))  # also catches inf and nan
    return jnp.where(too_big, cap, jnp.where(too_big, 0, s).astype(_idt()))


def _sgdr_cycle(period, period_mult, step):
    """Cycle index ``i``, offset ``t - S_i`` and length ``T_i`` of step ``t`` (all integers).

    Cycle ``i`` starts at ``S_i = p (m**i - 1)/(m - 1)`` (``p i`` for ``m = 1``). The index is
    first estimated in closed form, ``floor(log(1 + t (m - 1)/p) / log m)``, which float
    rounding may put one off near a restart; it is then fixed by comparing ``t`` with the
    starts ``S_{k0} .. S_{k0+4}`` around it (``k0`` one below the estimate). For an integer
    ``m`` those starts are computed in integer arithmetic, so every restart falls exactly on
    its step for any ``t`` below the int maximum; for a non-integer ``m`` each start is rounded
    to the nearest step in the default float precision.
    """
    idt, fdt = _idt(), _fdt()
    cap = int(jnp.iinfo(idt).max)
    bits = 7  # the cycle index of an integer m >= 2 is below 64 for any int64 step

    t = jnp.asarray(step)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        t = jnp.floor(t)
    t = jnp.maximum(t.astype(idt), 0)
    p = jnp.maximum(jnp.round(jnp.asarray(period)).astype(idt), 1)
    m = _f(period_mult)

    # m == 1: plain periodic restarts.
    i_one = t // p
    off_one, len_one = t - i_one * p, p

    # m > 1: closed-form estimate, then the correction.
    m_safe = jnp.where(m > 1, m, 2.0)
    log_m = jnp.log1p(m_safe - 1)
    est = jnp.floor(jnp.log1p(t.astype(fdt) * (m_safe - 1) / p.astype(fdt)) / log_m)
    est = jnp.where(jnp.isfinite(est), est, 0.0)
    is_int = (m_safe == jnp.round(m_safe)) & (m_safe < 2.0**30)
    # An integer m's index is below 64; a non-integer m's may be as large as the step.
    hi = 2.0**30 if cap < 2**32 else 2.0**52  # keeps the cast to the int dtype in range
    est = jnp.clip(est, 0, jnp.where(is_int, 63.0, hi))
    k0 = jnp.maximum(est.astype(idt) - 1, 0)

    # The candidate cycles k0 .. k0+4 along a new last axis, in one vector operation.
    ks = k0[..., None] + jnp.arange(5, dtype=idt)
    m_int = jnp.clip(jnp.round(m_safe), 2, 2**30).astype(idt)
    starts = jnp.where(
        is_int,
        _cycle_starts_int(p, m_int, jnp.minimum(ks, 2**bits - 1), cap, bits),
        _cycle_starts_float(p, m_safe, ks, cap),
    )
    # A start saturated at the int maximum lies beyond every step that can be counted.
    later = starts[..., 1:4]
    j = jnp.sum((later <= t[..., None]) & (later < cap), axis=-1, dtype=idt)
    begin = jnp.take_along_axis(starts, j[..., None], axis=-1)[..., 0]
    end = jnp.take_along_axis(starts, j[..., None] + 1, axis=-1)[..., 0]
    off_geo, len_geo = t - begin, jnp.maximum(end - begin, 1)

    one = m <= 1
    return (
        jnp.where(one, i_one, k0 + j),
        jnp.where(one, off_one, off_geo),
        jnp.where(one, len_one, len_geo),
    )


@jax.jit
def _sgdr(max_lr, min_lr, period, period_mult, max_lr_decay, step):
    fdt = _fdt()
    i, offset, length = _sgdr_cycle(period, period_mult, step)
    peak = _f(max_lr) * _f(max_lr_decay) ** i.astype(fdt)
    w = _cosine_weight(offset.astype(fdt), (length - offset).astype(fdt), length.astype(fdt))
    return _lerp(_f(min_lr), peak, w)


def sgdr(
    max_lr: Numeric,
    min_lr: Numeric,
    period: Numeric,
    period_mult: Numeric = 1,
    max_lr_decay: Numeric = 1.0,
) -> Schedule:
    """Cosine annealing with warm restarts (SGDR), endless and O(1) per call.

    Cycle ``i = 0, 1, ...`` lasts ``T_i = p m**i`` steps (``p = period``, ``m = period_mult``)
    and starts at ``S_i = p (m**i - 1)/(m - 1)`` (``p i`` when ``m = 1``); within it, with
    ``t_cur = t - S_i``::

        alpha_t = min + (max_i - min) (1 + cos(pi t_cur / T_i)) / 2,   max_i = max * decay**i

    The cycle of a step is found in closed form from the geometric series and corrected in
    integer arithmetic, so each restart (``alpha_{S_i} = max_i``) lands exactly on its step at
    any step, with no loop over past cycles. For a non-integer ``m`` each start is rounded to
    the nearest step. If ``max_i`` decays below ``min_lr`` the cycle runs from ``max_i`` up to
    ``min_lr`` (the formula is used as written).

    Args:
      max_lr: the first peak, >= ``min_lr``.
      min_lr: the floor, >= 0.
      period: ``p``, the length of the first cycle, a positive integer number of steps.
      period_mult: ``m`` >= 1, the growth factor of the cycle length (PyTorch's ``T_mult``).
      max_lr_decay: in (0, 1], the factor applied to the peak after every restart.

    Returns:
      The schedule.

    Example:
      >>> f = lecopt.schedules.sgdr(0.1, 0.0, period=1, period_mult=3)
      >>> f(121), f(364)   # restarts: 0.1, 0.1

    Reference:
      Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017.
    """
    _check_rates(max_lr=max_lr, min_lr=min_lr)
    _check_order("min_lr", min_lr, "max_lr", max_lr)
    check_positive_int("period", period)
    check_range("period_mult", period_mult, 1.0)
    check_range("max_lr_decay", max_lr_decay, 0.0, 1.0, lo_open=True)
    return Partial(
        _sgdr,
        _num(max_lr),
        _num(min_lr),
        _count(period),
        _num(period_mult),
        _num(max_lr_decay),
    )


# --------------------------------------------------------------------------------------------
# Ranges for the learning-rate range test


def _range_fraction(num_steps, step):
    last = _f(num_steps) - 1
    t = jnp.clip(_t(step), 0, last)
    return _fraction(t, last), t, last


@jax.jit
def _exponential_range(start, stop, num_steps, step):
    f, t, last = _range_fraction(num_steps, step)
    start, stop = _f(start), _f(stop)
    value = start * (stop / start) ** f
    # Pin both ends: start * (stop / start) is not always stop in floating point.
    return jnp.where(t >= last, stop, jnp.where(t <= 0, start, value))


def exponential_range(start: Numeric, stop: Numeric, num_steps: Numeric) -> Schedule:
    """A geometric sweep from ``start`` to ``stop`` in ``num_steps`` points::

        alpha_t = start (stop / start)**(t / (n - 1)),   t = 0 .. n-1 (clamped outside)

    Args:
      start: the first rate, > 0.
      stop: the last rate, > 0.
      num_steps: ``n`` >= 2, the number of points.

    Returns:
      The schedule; ``f(0) == start`` and ``f(n - 1) == stop`` exactly.

    Example:
      >>> f = lecopt.schedules.exponential_range(1e-7, 10.0, 100)
      >>> f(jnp.arange(100))   # the LR range test's grid
    """
    check_range("start", start, 0.0, lo_open=True)
    check_range("stop", stop, 0.0, lo_open=True)
    _check_min_num_steps("num_steps", num_steps, 2)
    return Partial(_exponential_range, _num(start), _num(stop), _count(num_steps))


@jax.jit
def _linear_range(start, stop, num_steps, step):
    f, _, _ = _range_fraction(num_steps, step)
    return _lerp(_f(start), _f(stop), f)


def linear_range(start: Numeric, stop: Numeric, num_steps: Numeric) -> Schedule:
    """An arithmetic sweep from ``start`` to ``stop`` in ``num_steps`` points::

        alpha_t = start + (stop - start) t / (n - 1),   t = 0 .. n-1 (clamped outside)

    Args:
      start: the first rate, >= 0.
      stop: the last rate, >= 0.
      num_steps: ``n`` >= 2, the number of points.

    Returns:
      The schedule; both ends are exact.

    Example:
      >>> lecopt.schedules.linear_range(0.0, 1.0, 5)(jnp.arange(5))   # 0, .25, .5, .75, 1
    """
    _check_rates(start=start, stop=stop)
    _check_min_num_steps("num_steps", num_steps, 2)
    return Partial(_linear_range, _num(start), _num(stop), _count(num_steps))


# --------------------------------------------------------------------------------------------
# Plotting


def plot(schedule: Schedule, num_steps: int, ax: Any = None) -> Any:
    """Draws ``alpha_t`` for ``t = 0 .. num_steps - 1``.

    Args:
      schedule: any function of the step (a lecopt or optax schedule).
      num_steps: how many steps to draw, a positive integer.
      ax: a matplotlib ``Axes`` to draw into; a new figure is made when None.

    Returns:
      The ``Axes``.

    Example:
      >>> ax = lecopt.schedules.plot(lecopt.schedules.triangular2(1e-3, 6e-3, 200), 2000)
      >>> ax.figure.savefig("clr.png")
    """
    check_positive_int("num_steps", num_steps)
    if not callable(schedule):
        raise TypeError(f"schedule: expected a function of the step, got {schedule!r}")
    steps = jnp.arange(int(num_steps))
    values = np.asarray(jax.vmap(schedule)(steps))
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 3.5))
    name = getattr(getattr(schedule, "func", None), "__name__", "schedule").lstrip("_")
    ax.plot(np.asarray(steps), values, label=name)
    ax.set_xlabel("step t (number of updates)")
    ax.set_ylabel("learning rate alpha_t")
    ax.set_title(f"Learning-rate schedule: {name}")
    ax.legend()
    ax.grid(True, alpha=0.3)
    return ax
