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

Schedules combine: :func:`join` puts schedules one after another (each piece restarts its own
step at its boundary) and :func:`warmup` prefixes a linear warm-up; the result is again a pytree
of numbers, also when joins are nested. :func:`one_cycle` and :func:`one_cycle_momentum` are
PyTorch ``OneCycleLR``'s rate and momentum, and :func:`one_cycle_from_range_test` derives them
from the learning-rate range test's suggestion.

Symbols: ``t`` the step, ``alpha_0`` / ``alpha_tau`` the rates at the ends of the linear decay,
``tau`` its length, ``s`` the half-cycle length of cyclical rates, ``T_i`` the length of the
i-th cosine cycle.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

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
    "join",
    "warmup",
    "one_cycle",
    "one_cycle_momentum",
    "one_cycle_from_range_test",
    "OneCycle",
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
      >>> lecopt.schedules.constant(0.1)(7)
      Array(0.1, dtype=float32)
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
      Array(0.07525, dtype=float32)
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
      >>> f(2000)   # the top of the first cycle
      Array(0.006, dtype=float32)

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
      >>> f(10), f(30)
      (Array(0.1, dtype=float32), Array(0.05, dtype=float32))
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
      >>> f(50)
      Array(0.05, dtype=float32)
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
      >>> f(121), f(364)   # restarts
      (Array(0.1, dtype=float32), Array(0.1, dtype=float32))

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
      >>> f(jnp.array([0, 1, 99]))   # the LR range test's grid: its ends exact
      Array([1.0000000e-07, 1.2045035e-07, 1.0000000e+01], dtype=float32)
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
      >>> lecopt.schedules.linear_range(0.0, 1.0, 5)(jnp.arange(5))
      Array([0.  , 0.25, 0.5 , 0.75, 1.  ], dtype=float32)
    """
    _check_rates(start=start, stop=stop)
    _check_min_num_steps("num_steps", num_steps, 2)
    return Partial(_linear_range, _num(start), _num(stop), _count(num_steps))


# --------------------------------------------------------------------------------------------
# Joined schedules: pieces one after another


def _stack(values: Sequence[Any]) -> Any:
    """One leaf of every piece of a kind along a new first axis.

    Concrete numbers become one NumPy array (float64 numbers stay float64 for x64 and the joined
    schedule is one argument per leaf however many pieces); traced ones a JAX array.
    """
    if any(isinstance(v, jax.core.Tracer) for v in values):
        return jnp.stack([jnp.asarray(v) for v in values])
    return np.stack([np.asarray(v) for v in values])


def _group_by_kind(pieces: Sequence[Any]) -> tuple[tuple[Any, ...], list[int], list[int]]:
    """Pieces of one tree structure (the same function with the same kinds of numbers) are one
    *kind*: a single schedule of that structure whose leaves hold every member's numbers along a
    first axis. Returns the kinds, the kind of every piece and its row within its kind."""
    structures: list[Any] = []
    members: list[list[list[Any]]] = []
    kind_of, row_of = [], []
    for piece in pieces:
        leaves, treedef = jax.tree.flatten(piece)
        if treedef not in structures:
            structures.append(treedef)
            members.append([])
        k = structures.index(treedef)
        kind_of.append(k)
        row_of.append(len(members[k]))
        members[k].append(leaves)
    kinds = tuple(
        jax.tree.unflatten(treedef, [_stack(column) for column in zip(*rows)])
        for treedef, rows in zip(structures, members)
    )
    return kinds, kind_of, row_of


def _member(kind: Any, row: jax.Array, local_step: jax.Array) -> jax.Array:
    # The row is in range by construction: no wrap-around of negative indices to compile.
    piece = jax.tree.map(lambda leaf: jax.lax.dynamic_index_in_dim(leaf, row, keepdims=False),
                         kind)
    return jnp.asarray(piece(local_step), _fdt())


def _join_scalar(kinds, starts, kind_of, row_of, step):
    t = jnp.asarray(step)
    starts = jnp.asarray(starts)
    i = _piece_index(t, starts)
    local = t - jax.lax.dynamic_index_in_dim(starts, i, keepdims=False).astype(t.dtype)
    if len(kinds) == 1:
        return _member(kinds[0], i, local)
    # Only the chosen kind's function runs (lax.switch); under vmap over steps or over
    # schedules the index is batched and switch becomes a select of every kind's value.
    branches = [functools.partial(_member, kind) for kind in kinds]
    return jax.lax.switch(jnp.asarray(kind_of)[i], branches, jnp.asarray(row_of)[i], local)


@jax.jit
def _join(kinds, starts, kind_of, row_of, step):
    t = jnp.asarray(step)
    one = functools.partial(_join_scalar, kinds, starts, kind_of, row_of)
    if t.ndim == 0:
        return one(t)
    return jax.vmap(one)(t.reshape(-1)).reshape(t.shape)


_TREE_PIECES = 16


def _piece_index(t: jax.Array, starts: jax.Array) -> jax.Array:
    """The piece of step ``t``: the last one whose start is <= t (``starts[0] == 0``).

    Up to 16 pieces, a balanced tree of compares and selects unrolled at trace time
    (``ceil(log2(pieces))`` deep, one integer compare per boundary): it fuses with the piece's
    arithmetic into one kernel of the caller's compiled loop, where a ``searchsorted`` is a
    kernel of its own, which costs more than the compares on a CPU. Beyond that, an unrolled
    binary search (``log2(pieces)`` compares). The fused step still costs more than the piece
    alone: the piece's arithmetic cannot start before the compares have chosen its row and its
    numbers are read (``lecopt bench --only schedules`` times each part).
    """
    n = starts.shape[0]
    if n > _TREE_PIECES:
        return jnp.searchsorted(starts[1:], t, side="right", method="scan_unrolled")

    # Measured slower in a compiled loop on a CPU (8 cosines): each number chosen by this tree
    # of selects instead of read at the row, one-hot masks, a sum of compares, a binary search
    # that reads its probes, lax.switch over the pieces (a conditional is a kernel of its own).
    def tree(lo: int, hi: int) -> jax.Array:
        if hi - lo == 1:
            return jnp.asarray(lo, jnp.int32)
        mid = (lo + hi) // 2
        return jnp.where(t >= starts[mid], tree(mid, hi), tree(lo, mid))

    return tree(0, n)


def _check_boundaries(boundaries: Any, num_schedules: int) -> Any:
    if isinstance(boundaries, int | float | np.number) or not hasattr(boundaries, "__len__"):
        raise TypeError(
            f"boundaries={boundaries!r}: expected a sequence of increasing positive integers"
        )
    if len(boundaries) != num_schedules - 1:
        raise ValueError(
            f"boundaries={boundaries!r} has {len(boundaries)} entries; with {num_schedules} "
            f"schedules boundaries must have len(schedules) - 1 = {num_schedules - 1}"
        )
    if any(isinstance(b, jax.core.Tracer) for b in boundaries):
        return jnp.concatenate([jnp.zeros(1, _idt()), jnp.stack(list(boundaries)).astype(_idt())])
    arr = np.asarray(boundaries, dtype=np.float64).reshape(-1)
    if arr.size:
        check_positive_int("boundaries", arr)
        if np.any(np.diff(arr) <= 0):
            raise ValueError(
                f"boundaries={boundaries!r} is not increasing; boundaries must be strictly "
                "increasing positive integers"
            )
    return np.concatenate([[0], arr]).astype(np.int64)


def join(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Schedules one after another, each restarting its own step at its boundary::

        f(t) = f_i(t - b_i)   for b_i <= t < b_{i+1},   b_0 = 0, b_n = infinity

    as ``optax.join_schedules``, but a pytree of all the pieces' numbers (a new value, or pieces
    of one kind in another order, runs through the program already compiled; ``vmap`` maps over
    a batch of joined schedules) and with one piece evaluated per step: the piece is found by a
    binary search over the boundaries (``ceil(log2(pieces))`` compares deep, unrolled into the
    compiled program; see ``_piece_index``) and pieces of the same kind (the same factory) are
    stored as one schedule whose numbers are stacked, so the chosen piece's numbers are read by
    index and its function runs once. Pieces of different kinds are chosen by
    ``lax.switch``, which runs only the chosen branch on the device; under ``vmap`` (over a batch of
    steps, e.g. :func:`plot`, or of schedules) ``switch`` becomes a select and every *kind* (not
    every piece) is evaluated. At a boundary the new piece starts at its own step 0, so the value
    there is the piece's first value exactly. A joined schedule can be a piece of another join.

    Args:
      schedules: the pieces, a non-empty sequence of schedules (lecopt schedules, joins, or any
        function of the step: a plain function is part of the compiled program, not data).
      boundaries: ``b_1 < ... < b_{n-1}``, increasing positive integers, one fewer than the
        pieces: piece ``i`` starts at step ``b_i``.

    Returns:
      The schedule.

    Example:
      >>> f = lecopt.schedules.join(
      ...     [lecopt.schedules.linear_decay(0.0, 0.1, 5), lecopt.schedules.constant(0.1),
      ...      lecopt.schedules.cosine_annealing(0.1, 0.0, 10)], boundaries=[5, 10])
      >>> [round(float(v), 4) for v in f(jnp.array([0, 4, 5, 10, 15, 20, 30]))]
      [0.0, 0.08, 0.1, 0.1, 0.05, 0.0, 0.0]
    """
    if callable(schedules) or not isinstance(schedules, Sequence) or len(schedules) == 0:
        raise TypeError(f"schedules={schedules!r}: expected a non-empty list of schedules")
    for k, piece in enumerate(schedules):
        if not callable(piece):
            raise TypeError(f"schedules[{k}]={piece!r}: expected a function of the step")
    starts = _check_boundaries(boundaries, len(schedules))
    pieces = [p if isinstance(p, Partial) else Partial(p) for p in schedules]
    kinds, kind_of, row_of = _group_by_kind(pieces)
    if len(kinds) == 1:  # the row of a piece is its index: no tables to carry
        return Partial(_join, kinds, starts, None, None)
    return Partial(_join, kinds, starts, np.asarray(kind_of), np.asarray(row_of))


def warmup(
    peak: Numeric, warmup_steps: Numeric, then: Schedule, init_value: Numeric = 0.0
) -> Schedule:
    """A linear warm-up from ``init_value`` to ``peak`` in ``warmup_steps`` steps, then ``then``::

        f(t) = init + (peak - init) t / W   for t < W,   f(t) = then(t - W)   for t >= W

    (:func:`join` of :func:`linear_decay` and ``then``); ``then`` usually starts at ``peak``,
    e.g. ``sgdr(peak, ...)`` or ``cosine_annealing(peak, ...)``, as optax's
    ``warmup_cosine_decay_schedule``.

    Args:
      peak: the rate reached at step ``W``, >= 0.
      warmup_steps: ``W``, a positive integer.
      then: the schedule that follows, with its own step counted from ``W``.
      init_value: the rate at step 0, >= 0.

    Returns:
      The schedule.

    Example:
      >>> f = lecopt.schedules.warmup(0.1, 4, lecopt.schedules.sgdr(0.1, 0.0, 10))
      >>> [round(float(v), 4) for v in f(jnp.array([0, 1, 2, 3, 4, 9, 14]))]
      [0.0, 0.025, 0.05, 0.075, 0.1, 0.05, 0.1]
    """
    check_positive_int("warmup_steps", warmup_steps)
    if not callable(then):
        raise TypeError(f"then={then!r}: expected a function of the step")
    return join([linear_decay(init_value, peak, warmup_steps), then], [_count(warmup_steps)])


# --------------------------------------------------------------------------------------------
# One-cycle (Smith 2018, PyTorch's OneCycleLR)


def _anneal(kind: str, v0, v1, t, start, end):
    """From ``v0`` at step ``start`` to ``v1`` at step ``end`` (t clipped to the phase)."""
    t = jnp.clip(t, start, end)
    if kind == "cos":
        # PyTorch's v1 + (v0 - v1)/2 (1 + cos(pi pct)), with the precise cosine weight.
        return _lerp(v1, v0, _cosine_weight(t - start, end - t, end - start))
    return _lerp(v0, v1, _fraction(t - start, end - start))


def _phases(anneal: str, three_phase: bool, values, pct_start, total_steps, step):
    """PyTorch's phases: two ending at ``pct T - 1`` and ``T - 1`` through the values
    ``(a, b, d)``, or three ending at ``pct T - 1``, ``2 pct T - 2`` and ``T - 1`` through
    ``(a, b, c, d)``; a step belongs to the first phase whose end it does not pass."""
    a, b, c, d = (_f(v) for v in values)
    total = _f(total_steps)
    last = total - 1
    t = jnp.clip(_t(step), 0, last)
    e1 = _f(pct_start) * total - 1
    if three_phase:
        e2 = 2 * _f(pct_start) * total - 2
        rest = jnp.where(
            t <= e2, _anneal(anneal, b, c, t, e1, e2), _anneal(anneal, c, d, t, e2, last)
        )
    else:
        rest = _anneal(anneal, b, d, t, e1, last)
    return jnp.where(t <= e1, _anneal(anneal, a, b, t, 0.0, e1), rest)


@functools.cache
def _one_cycle_fn(anneal: str, three_phase: bool) -> Callable:
    # One module-level function per (anneal, three_phase): the choice is the program's
    # structure, the numbers are its arguments. Cached, so equal choices make equal pytrees.
    def one_cycle(max_lr, div_factor, final_div_factor, pct_start, total_steps, step):
        initial = _f(max_lr) / _f(div_factor)
        values = (initial, max_lr, initial, initial / _f(final_div_factor))
        return _phases(anneal, three_phase, values, pct_start, total_steps, step)

    return jax.jit(one_cycle)


@functools.cache
def _one_cycle_momentum_fn(anneal: str, three_phase: bool) -> Callable:
    def one_cycle_momentum(base_momentum, max_momentum, pct_start, total_steps, step):
        values = (max_momentum, base_momentum, max_momentum, max_momentum)
        return _phases(anneal, three_phase, values, pct_start, total_steps, step)

    return jax.jit(one_cycle_momentum)


def _check_one_cycle(total_steps, pct_start, anneal, three_phase) -> None:
    _check_min_num_steps("total_steps", total_steps, 2)
    if anneal not in ("cos", "linear"):
        raise ValueError(f"anneal={anneal!r} is not an annealing strategy; use 'cos' or 'linear'")
    if not isinstance(three_phase, bool):
        raise TypeError(f"three_phase={three_phase!r}: expected True or False")
    check_range("pct_start", pct_start, 0.0, 1.0, lo_open=True, hi_open=True)
    pct, total = concrete_values(pct_start), concrete_values(total_steps)
    if pct is None or total is None:
        return
    # Every phase must last more than zero steps: pct T - 1 > 0, and the next end beyond it.
    hi = (total + 1) / (2 * total) if three_phase else 1.0
    if np.any(pct * total <= 1) or np.any(pct >= hi):
        upper = "(T + 1)/(2 T)" if three_phase else "1"
        raise ValueError(
            f"pct_start={pct_start!r} with total_steps={total_steps!r} leaves a phase without "
            f"steps; pct_start must be in (1/T, {upper}) for T = total_steps"
        )


def one_cycle(
    max_lr: Numeric,
    total_steps: Numeric,
    pct_start: Numeric = 0.3,
    div_factor: Numeric = 25.0,
    final_div_factor: Numeric = 1e4,
    anneal: str = "cos",
    three_phase: bool = False,
) -> Schedule:
    """Smith's one-cycle policy as PyTorch's ``OneCycleLR`` defines it, value for value.

    With ``T = total_steps``, ``a_0 = max_lr / div_factor`` and
    ``a_min = a_0 / final_div_factor``, the rate rises from ``a_0`` to ``max_lr`` until step
    ``e_1 = pct_start T - 1`` and falls to ``a_min`` at step ``T - 1`` (``three_phase``: back to
    ``a_0`` at ``e_2 = 2 pct_start T - 2``, then to ``a_min`` at ``T - 1``). Within a phase from
    ``(s, v_s)`` to ``(e, v_e)``, with ``pct = (t - s)/(e - s)``::

        cos:     alpha_t = v_e + (v_s - v_e) (1 + cos(pi pct)) / 2
        linear:  alpha_t = v_s + (v_e - v_s) pct

    Steps past ``T - 1`` keep ``a_min`` (PyTorch raises there). The momentum that goes with it is
    :func:`one_cycle_momentum`.

    Args:
      max_lr: the peak rate, > 0 (the range test's suggestion: :func:`one_cycle_from_range_test`).
      total_steps: ``T``, the number of steps of the cycle, an integer >= 2.
      pct_start: the fraction of the steps spent rising, in ``(1/T, 1)`` (``(1/T, (T+1)/(2T))``
        for three phases).
      div_factor: ``max_lr / a_0``, > 0.
      final_div_factor: ``a_0 / a_min``, > 0.
      anneal: ``"cos"`` or ``"linear"``.
      three_phase: the original paper's symmetric cycle and a final annihilation phase, instead of
        fastai's two phases.

    Returns:
      The schedule; ``f(0) == a_0`` and ``f(T - 1) == a_min``: the annealing adds no rounding
      at the phases' ends.

    Example:
      >>> f = lecopt.schedules.one_cycle(0.1, 100)
      >>> [float(v) for v in f(jnp.array([0, 29, 99]))]
      [0.004000000189989805, 0.10000000149011612, 4.0000000467443897e-07]

    Reference:
      Smith & Topin, "Super-Convergence: Very Fast Training of Neural Networks Using Large
      Learning Rates", 2018; PyTorch ``torch.optim.lr_scheduler.OneCycleLR``.
    """
    check_range("max_lr", max_lr, 0.0, lo_open=True)
    check_range("div_factor", div_factor, 0.0, lo_open=True)
    check_range("final_div_factor", final_div_factor, 0.0, lo_open=True)
    _check_one_cycle(total_steps, pct_start, anneal, three_phase)
    return Partial(
        _one_cycle_fn(anneal, three_phase),
        _num(max_lr),
        _num(div_factor),
        _num(final_div_factor),
        _num(pct_start),
        _count(total_steps),
    )


def one_cycle_momentum(
    total_steps: Numeric,
    pct_start: Numeric = 0.3,
    base_momentum: Numeric = 0.85,
    max_momentum: Numeric = 0.95,
    anneal: str = "cos",
    three_phase: bool = False,
) -> Schedule:
    """The momentum of :func:`one_cycle`, cycled opposite to the rate (PyTorch's
    ``cycle_momentum``): from ``max_momentum`` down to ``base_momentum`` while the rate rises,
    back up to ``max_momentum`` while it falls (``three_phase``: and held there in the last
    phase), with the same phases and annealing as :func:`one_cycle`.

    Args:
      total_steps: ``T``, as for :func:`one_cycle`.
      pct_start: as for :func:`one_cycle`.
      base_momentum: the momentum at the rate's peak, in [0, 1].
      max_momentum: the momentum at the ends, in [``base_momentum``, 1].
      anneal: ``"cos"`` or ``"linear"``.
      three_phase: as for :func:`one_cycle`.

    Returns:
      The schedule (a momentum ``phi_t`` for the optimizers that take one as a schedule).

    Example:
      >>> m = lecopt.schedules.one_cycle_momentum(100)
      >>> [round(float(v), 4) for v in m(jnp.array([0, 29, 99]))]
      [0.95, 0.85, 0.95]
    """
    check_range("base_momentum", base_momentum, 0.0, 1.0)
    check_range("max_momentum", max_momentum, 0.0, 1.0)
    _check_order("base_momentum", base_momentum, "max_momentum", max_momentum)
    _check_one_cycle(total_steps, pct_start, anneal, three_phase)
    return Partial(
        _one_cycle_momentum_fn(anneal, three_phase),
        _num(base_momentum),
        _num(max_momentum),
        _num(pct_start),
        _count(total_steps),
    )


class OneCycle(NamedTuple):
    """A one-cycle plan: the rate and momentum schedules and the numbers that define them."""

    learning_rate: Schedule
    momentum: Schedule
    max_lr: float
    initial_lr: float
    min_lr: float
    peak_step: float


def one_cycle_from_range_test(
    suggestion: Numeric,
    total_steps: int,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    anneal: str = "cos",
    three_phase: bool = False,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
) -> OneCycle:
    """The one-cycle schedules that follow a learning-rate range test.

    Smith (2018) takes the peak of the cycle from the range test: a rate just below the one at
    which the loss stops falling. lecopt's ``lr_range_test(...).suggestion`` (the lowest point
    of the lag-free smoothed loss over 1.5, :func:`lecopt.lr_finder.lecopt_rule`) is such a
    rate, so it becomes ``max_lr`` and the cycle starts ``div_factor`` times lower, as fastai's
    ``fit_one_cycle(lr_max=...)`` after ``lr_find``.

    Args:
      suggestion: the suggested rate (a number or a scalar array), > 0.
      total_steps, pct_start, div_factor, final_div_factor, anneal, three_phase: as for
        :func:`one_cycle`.
      base_momentum, max_momentum: as for :func:`one_cycle_momentum`.

    Returns:
      A :class:`OneCycle` with ``learning_rate``, ``momentum`` and the numbers to print:
      ``max_lr``, ``initial_lr``, ``min_lr`` and ``peak_step`` (``pct_start T - 1``).

    Example:
      >>> plan = lecopt.schedules.one_cycle_from_range_test(0.3, 1000)
      >>> plan.initial_lr, plan.min_lr, plan.peak_step
      (0.012, 1.2e-06, 299.0)
    """
    max_lr = float(np.asarray(suggestion).reshape(()))
    learning_rate = one_cycle(
        max_lr, total_steps, pct_start, div_factor, final_div_factor, anneal, three_phase
    )
    momentum = one_cycle_momentum(
        total_steps, pct_start, base_momentum, max_momentum, anneal, three_phase
    )
    initial = max_lr / div_factor
    return OneCycle(
        learning_rate, momentum, max_lr, initial, initial / final_div_factor,
        pct_start * total_steps - 1,
    )


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
      >>> len(ax.lines[0].get_ydata()), ax.get_xlabel()
      (2000, 'step t (number of updates)')
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
