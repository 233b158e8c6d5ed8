"""The lecture's optimization primitives as composable optax gradient transformations.

Each factory returns an :class:`optax.GradientTransformationExtraArgs` whose ``init`` and
``update`` are :class:`jax.tree_util.Partial` objects wrapping module-level functions. The
numeric hyperparameters are the Partials' arguments, so a transformation is a pytree whose
leaves are its numbers: pass it into a jitted function as an argument and a new learning rate
or momentum runs through the program already compiled; ``jax.vmap`` maps over a batch of them.
Structural choices (Nesterov or not, schedule or constant) pick the wrapped function and are
therefore static.

Symbols follow the lecture: ``alpha`` learning rate, ``phi`` momentum, ``rho`` decay rate,
``beta`` the small constant (``eps`` in code), ``nu`` velocity, ``r``/``s`` moments, ``t`` step.
The incoming updates ``u`` are the gradient estimate ``g_hat`` (or the output of the previous
transformation in a chain).

Precision: accumulated state (velocity, ``r``, ``s``) is kept in at least float32 and the
formulas are evaluated there; the outputs take the updates' dtype. For float32 and float64
params this changes nothing; for bfloat16 params it keeps Adam's ``1 - rho2 = 0.001`` from
rounding to zero (0.999 is 1.0 in bfloat16).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.tree_util import Partial

from lecopt._checks import check_range

__all__ = [
    "ScaleByLearningRateState",
    "MomentumState",
    "SumOfSquaresState",
    "RmsState",
    "AdamState",
    "scale_by_learning_rate",
    "scale_by_momentum",
    "scale_by_sum_of_squares",
    "scale_by_rms",
    "scale_by_adam",
    "add_decayed_weights",
    "bias_correction",
    "chain",
]

Params = Any
Updates = Any
ScalarOrSchedule = float | jax.Array | Callable[[jax.Array], jax.Array]


class ScaleByLearningRateState(NamedTuple):
    """State of :func:`scale_by_learning_rate`: the number of updates made so far (int32)."""

    count: jax.Array


class MomentumState(NamedTuple):
    """State of :func:`scale_by_momentum`.

    Attributes:
      velocity: ``nu``, shaped like the params (in at least float32: bfloat16 params keep a
        float32 velocity, as they keep float32 moments below).
      momentum: ``phi`` used by the latest update (a scalar); kept so that
        :func:`lecopt.lookahead_params` can form ``theta + phi * nu`` from the state alone.
    """

    velocity: Updates
    momentum: jax.Array


class SumOfSquaresState(NamedTuple):
    """State of :func:`scale_by_sum_of_squares`: ``r``, the accumulated squared gradients."""

    sum_of_squares: Updates


class RmsState(NamedTuple):
    """State of :func:`scale_by_rms`: ``r``, the moving average of squared gradients."""

    second_moment: Updates


class AdamState(NamedTuple):
    """State of :func:`scale_by_adam`: step ``t`` (int32) and the moments ``s`` and ``r``."""

    count: jax.Array
    first_moment: Updates
    second_moment: Updates


# --------------------------------------------------------------------------------------------
# Shared pieces: each lecture formula is written once.


def _as_partial(fn: Callable) -> Partial:
    # A plain function becomes static data of the Partial: a pytree with no leaves.
    return fn if isinstance(fn, Partial) else Partial(fn)


def _make(init_fn: Callable, update_fn: Callable, *hparams: Any) -> optax.GradientTransformation:
    return optax.GradientTransformationExtraArgs(Partial(init_fn), Partial(update_fn, *hparams))


def _like(hparam: Any, leaf: jax.Array) -> jax.Array:
    # Hyperparameters take the leaf's dtype, so an f32 array rate keeps bf16 params bf16.
    return jnp.asarray(hparam).astype(leaf.dtype)


def _wide(x: jax.Array) -> jax.Array:
    # Accumulated state (velocity, moments) is kept in at least float32: in bfloat16,
    # 0.999 rounds to 1 and Adam's second moment would never move off zero.
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _zeros_wide(params: Params) -> Updates:
    return jax.tree.map(
        lambda p: jnp.zeros(jnp.shape(p), jnp.promote_types(jnp.result_type(p), jnp.float32)),
        params,
    )


def _check_structure(name: str, updates: Updates, state_tree: Updates) -> None:
    ts, tu = jax.tree.structure(state_tree), jax.tree.structure(updates)
    if ts != tu:
        raise ValueError(
            f"{name}: the updates' pytree structure {tu} does not match the structure the state "
            f"was initialised with {ts}; call init with params shaped like the gradients"
        )


def _increment(count: jax.Array) -> jax.Array:
    # Saturates at the int32 maximum instead of wrapping to a negative step.
    return optax.safe_int32_increment(count)


def _ema(moment: Updates, u: Updates, decay: Any) -> Updates:
    """``m <- rho m + (1 - rho) u``: RMSProp's ``r`` and Adam's ``s`` and ``r``."""
    return jax.tree.map(
        lambda m, x: _like(decay, m) * m + (1 - _like(decay, m)) * _wide(x), moment, u
    )


def _square(u: Updates) -> Updates:
    return jax.tree.map(lambda x: _wide(x) * _wide(x), u)


def _divide_by_root(u: Updates, r: Updates, eps: Any) -> Updates:
    """``u / (beta + sqrt(r))``: the update of Adagrad and RMSProp (Algorithms 3 and 4)."""
    return jax.tree.map(
        lambda x, ri: (_wide(x) / (_like(eps, ri) + jnp.sqrt(ri))).astype(x.dtype), u, r
    )


def bias_correction(moment: Updates, decay: Any, count: jax.Array) -> Updates:
    """Adam's bias correction ``m_hat = m / (1 - rho**t)`` (Algorithm 5, lines 13-14).

    Args:
      moment: a pytree of moment estimates (``s`` or ``r``).
      decay: the moment's decay rate ``rho`` (a number or scalar array).
      count: the step ``t >= 1`` the moment has reached (int).

    Returns:
      The corrected moment, same structure and dtypes as ``moment``.

    Example:
      >>> lecopt.bias_correction(jnp.array([0.1]), 0.9, 1)  # (1 - 0.9) g with g = 1 -> 1.0
    """

    def correct(m: jax.Array) -> jax.Array:
        # The factor is computed once, as a scalar, in at least float32 (1 - 0.999**t is 0 in
        # bfloat16 for small t); the per-element work is then one multiplication, not a
        # division, which keeps Adam's update bound by memory rather than by the divider.
        wide = jnp.promote_types(m.dtype, jnp.float32)
        t = jnp.asarray(count).astype(wide)
        factor = 1 / (1 - jnp.asarray(decay).astype(wide) ** t)
        return (m * factor.astype(m.dtype)).astype(m.dtype)

    return jax.tree.map(correct, moment)


# --------------------------------------------------------------------------------------------
# scale_by_learning_rate


def _count_init(params: Params) -> ScaleByLearningRateState:
    del params
    return ScaleByLearningRateState(count=jnp.zeros([], jnp.int32))


def _scale_by_constant_update(learning_rate, updates, state, params=None, **extra):
    del params, extra
    updates = jax.tree.map(lambda u: -_like(learning_rate, u) * u, updates)
    return updates, ScaleByLearningRateState(count=_increment(state.count))


def _scale_by_schedule_update(schedule, updates, state, params=None, **extra):
    del params, extra
    alpha = schedule(state.count)
    updates = jax.tree.map(lambda u: -_like(alpha, u) * u, updates)
    return updates, ScaleByLearningRateState(count=_increment(state.count))


def scale_by_learning_rate(learning_rate: ScalarOrSchedule) -> optax.GradientTransformation:
    """Scales the updates by minus the learning rate: ``u <- -alpha_t u``.

    With a schedule, the k-th update (k = 0, 1, ...) uses ``alpha_k = learning_rate(k)``.
    Placed before :func:`scale_by_momentum` this puts ``alpha`` inside the velocity, exactly as
    the lecture's ``nu <- phi nu - alpha g`` (optax and PyTorch put it outside; the two agree
    only for a constant rate).

    Args:
      learning_rate: ``alpha``, a number >= 0, a JAX array, or a callable ``step -> alpha``
        (a :mod:`lecopt.schedules` schedule, an optax schedule, any function of the step).

    Returns:
      A transformation with state :class:`ScaleByLearningRateState` (an int32 step counter
      that saturates instead of overflowing).

    Example:
      >>> tx = lecopt.scale_by_learning_rate(lecopt.schedules.linear_decay(0.1, 0.01, 100))
    """
    if callable(learning_rate):
        return _make(_count_init, _scale_by_schedule_update, _as_partial(learning_rate))
    check_range("learning_rate", learning_rate, 0.0)
    return _make(_count_init, _scale_by_constant_update, learning_rate)


# --------------------------------------------------------------------------------------------
# scale_by_momentum


def _momentum_init(params: Params) -> MomentumState:
    # phi is kept in the default float dtype (float64 under x64), not the params' dtype.
    return MomentumState(
        velocity=_zeros_wide(params),
        momentum=jnp.zeros([], jnp.result_type(float)),
    )


def _momentum_step(momentum, updates, state):
    _check_structure("scale_by_momentum", updates, state.velocity)
    nu = jax.tree.map(lambda v, u: _like(momentum, v) * v + _wide(u), state.velocity, updates)
    phi = jnp.asarray(momentum, dtype=state.momentum.dtype)
    return nu, MomentumState(velocity=nu, momentum=phi)


def _momentum_update(momentum, updates, state, params=None, **extra):
    del params, extra
    nu, state = _momentum_step(momentum, updates, state)
    return jax.tree.map(lambda v, u: v.astype(u.dtype), nu, updates), state


def _nesterov_update(momentum, updates, state, params=None, **extra):
    del params, extra
    nu, state = _momentum_step(momentum, updates, state)
    # The look-ahead point theta + phi nu of Algorithm 2 moves by phi nu_new + u per step.
    return jax.tree.map(
        lambda v, u: (_like(momentum, v) * v + _wide(u)).astype(u.dtype), nu, updates
    ), state


def scale_by_momentum(momentum: float | jax.Array, nesterov: bool = False):
    """Momentum (Algorithm 1, line 6) or Nesterov momentum (Algorithm 2).

    ``nu <- phi nu + u`` and the output is ``nu``. With ``u = -alpha g`` (this placed after
    :func:`scale_by_learning_rate`) that is the lecture's velocity update exactly, and applying
    the output is ``theta <- theta + nu``.

    With ``nesterov=True`` the output is ``phi nu + u`` with the new ``nu``: the params you
    hold then play the role of Algorithm 2's look-ahead point ``theta + phi nu``, and the
    gradient is taken there, so no second evaluation point is needed. For Algorithm 2 done
    literally use ``nesterov=False`` and :func:`lecopt.lookahead_params`.

    Args:
      momentum: ``phi`` in [0, 1).
      nesterov: a Python bool (it chooses the program, so it cannot be traced).

    Returns:
      A transformation with state :class:`MomentumState`.

    Example:
      >>> tx = lecopt.chain(lecopt.scale_by_learning_rate(0.01), lecopt.scale_by_momentum(0.9))
    """
    check_range("momentum", momentum, 0.0, 1.0, hi_open=True)
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov={nesterov!r} must be a Python bool (True or False)")
    update = _nesterov_update if nesterov else _momentum_update
    return _make(_momentum_init, update, momentum)


# --------------------------------------------------------------------------------------------
# Adagrad and RMSProp


def _sum_of_squares_init(params: Params) -> SumOfSquaresState:
    return SumOfSquaresState(sum_of_squares=_zeros_wide(params))


def _sum_of_squares_update(eps, updates, state, params=None, **extra):
    del params, extra
    _check_structure("scale_by_sum_of_squares", updates, state.sum_of_squares)
    r = jax.tree.map(lambda ri, sq: ri + sq, state.sum_of_squares, _square(updates))
    return _divide_by_root(updates, r, eps), SumOfSquaresState(sum_of_squares=r)


def scale_by_sum_of_squares(eps: float | jax.Array = 1e-7) -> optax.GradientTransformation:
    """Adagrad's scaling (Algorithm 3, lines 8-9 without ``-alpha``).

    ``r <- r + u * u`` and the output is ``u / (beta + sqrt(r))``, element-wise, with ``beta``
    OUTSIDE the root as in the lecture (optax's ``adagrad`` puts it inside).

    Args:
      eps: ``beta`` >= 0, the small constant for numerical stability.

    Returns:
      A transformation with state :class:`SumOfSquaresState`.
    """
    check_range("eps", eps, 0.0)
    return _make(_sum_of_squares_init, _sum_of_squares_update, eps)


def _rms_init(params: Params) -> RmsState:
    return RmsState(second_moment=_zeros_wide(params))


def _rms_update(decay, eps, updates, state, params=None, **extra):
    del params, extra
    _check_structure("scale_by_rms", updates, state.second_moment)
    r = _ema(state.second_moment, _square(updates), decay)
    return _divide_by_root(updates, r, eps), RmsState(second_moment=r)


def scale_by_rms(
    decay: float | jax.Array = 0.9, eps: float | jax.Array = 1e-6
) -> optax.GradientTransformation:
    """RMSProp's scaling (Algorithm 4, lines 8-9 without ``-alpha``).

    ``r <- rho r + (1 - rho) u * u`` and the output is ``u / (beta + sqrt(r))``. ``r`` starts
    at zero and is not bias-corrected, as in the lecture.

    Args:
      decay: ``rho`` in [0, 1).
      eps: ``beta`` >= 0.

    Returns:
      A transformation with state :class:`RmsState`.
    """
    check_range("decay", decay, 0.0, 1.0, hi_open=True)
    check_range("eps", eps, 0.0)
    return _make(_rms_init, _rms_update, decay, eps)


# --------------------------------------------------------------------------------------------
# Adam


def _adam_init(params: Params) -> AdamState:
    return AdamState(
        count=jnp.zeros([], jnp.int32),
        first_moment=_zeros_wide(params),
        second_moment=_zeros_wide(params),
    )


def _adam_update(b1, b2, eps, updates, state, params=None, **extra):
    del params, extra
    _check_structure("scale_by_adam", updates, state.first_moment)
    t = _increment(state.count)
    s = _ema(state.first_moment, updates, b1)
    r = _ema(state.second_moment, _square(updates), b2)
    s_hat, r_hat = bias_correction(s, b1, t), bias_correction(r, b2, t)
    # rsqrt and a product instead of a square root and a division: the same value to an ulp,
    # a fraction of the cost per element.
    out = jax.tree.map(
        lambda sh, rh, u: (sh * jax.lax.rsqrt(rh + _like(eps, rh))).astype(u.dtype),
        s_hat, r_hat, updates,
    )
    return out, AdamState(count=t, first_moment=s, second_moment=r)


def scale_by_adam(
    b1: float | jax.Array = 0.9, b2: float | jax.Array = 0.999, eps: float | jax.Array = 1e-8
) -> optax.GradientTransformation:
    """Adam's scaling (Algorithm 5, lines 8-15 without ``-alpha``).

    ``t <- t + 1``; ``s <- rho1 s + (1 - rho1) u``; ``r <- rho2 r + (1 - rho2) u * u``;
    ``s_hat = s / (1 - rho1**t)``; ``r_hat = r / (1 - rho2**t)``; output
    ``s_hat / sqrt(r_hat + beta)`` with ``beta`` INSIDE the root, as Algorithm 5 (optax's
    ``eps_root``; optax's default ``eps`` is outside).

    Args:
      b1: ``rho1`` in [0, 1), decay of the first moment ``s``.
      b2: ``rho2`` in [0, 1), decay of the second moment ``r``.
      eps: ``beta`` >= 0. With ``beta = 0`` a zero gradient gives 0/0: use a positive value.

    Returns:
      A transformation with state :class:`AdamState`.

    Reference:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2014.
    """
    check_range("b1", b1, 0.0, 1.0, hi_open=True)
    check_range("b2", b2, 0.0, 1.0, hi_open=True)
    check_range("eps", eps, 0.0)
    return _make(_adam_init, _adam_update, b1, b2, eps)


# --------------------------------------------------------------------------------------------
# Weight decay


def _no_state_init(params: Params) -> optax.EmptyState:
    del params
    return optax.EmptyState()


def _decayed_weights_update(weight_decay, updates, state, params=None, **extra):
    del extra
    if params is None:
        raise ValueError("add_decayed_weights needs params: call update(updates, state, params)")
    updates = jax.tree.map(lambda u, p: u + _like(weight_decay, u) * p, updates, params)
    return updates, state


def add_decayed_weights(weight_decay: float | jax.Array = 0.0) -> optax.GradientTransformation:
    """L2 weight decay: ``u <- u + lambda theta`` (put it before the learning rate).

    Args:
      weight_decay: ``lambda`` >= 0.

    Returns:
      A stateless transformation (``optax.EmptyState``) that needs ``params`` in ``update``.
    """
    check_range("weight_decay", weight_decay, 0.0)
    return _make(_no_state_init, _decayed_weights_update, weight_decay)


# --------------------------------------------------------------------------------------------
# chain


def _chain_init(inits, params):
    return tuple(init(params) for init in inits)


def _chain_update(updates_fns, updates, state, params=None, **extra):
    if not isinstance(state, tuple) or len(state) != len(updates_fns):
        raise ValueError(
            f"chain: expected a state tuple of {len(updates_fns)} inner states, got {type(state)}"
        )
    new_state = []
    for fn, s in zip(updates_fns, state):
        updates, s = fn(updates, s, params, **extra)
        new_state.append(s)
    return updates, tuple(new_state)


def chain(*transforms: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Applies transformations in sequence, like :func:`optax.chain` (same state: a tuple).

    Unlike ``optax.chain``, the result is itself a pytree of the parts' hyperparameters, so a
    chain of lecopt parts can be passed into ``jit`` and ``vmap`` as data. Parts from optax
    (closures) may be mixed in; their numbers then stay baked into their closures.

    Args:
      *transforms: the transformations, first applied first.

    Returns:
      The chained transformation; its state is the tuple of the parts' states.
    """
    for i, t in enumerate(transforms):
        if not isinstance(t, optax.GradientTransformation):
            raise TypeError(
                f"chain: argument {i} is a {type(t).__name__}, expected an "
                "optax.GradientTransformation"
            )
    inits = tuple(_as_partial(t.init) for t in transforms)
    updates = tuple(_as_partial(_with_extra(t)) for t in transforms)
    return optax.GradientTransformationExtraArgs(Partial(_chain_init, inits),
                                                 Partial(_chain_update, updates))


def _with_extra(t: optax.GradientTransformation) -> Callable:
    # Plain optax transformations do not accept extra keyword arguments.
    if isinstance(t, optax.GradientTransformationExtraArgs):
        return t.update
    return optax.with_extra_args_support(t).update
