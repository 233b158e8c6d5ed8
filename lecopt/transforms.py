"""The lecture's optimization primitives as composable optax gradient transformations.

Each factory returns an :class:`optax.GradientTransformationExtraArgs` whose ``init`` and
``update`` are :class:`jax.tree_util.Partial` objects wrapping module-level functions. The
numeric hyperparameters are the Partials' arguments, so a transformation is a pytree whose
leaves are its numbers: pass it into a jitted function as an argument and a new learning rate
or momentum runs through the program already compiled; ``jax.vmap`` maps over a batch of them.
Structural choices (Nesterov or not, which parts a chain has) are static.

A hyperparameter may be a number or a schedule (a callable of the step, e.g. a
:mod:`lecopt.schedules` schedule); the k-th update (k = 0, 1, ...) uses its value at ``k``.
Every state holding a scheduled number therefore has a step ``count``, whether the number came
as a schedule or as a constant, so that the state's structure never depends on that choice
(``optax.inject_hyperparams`` hands the inner transformation constants).

Symbols follow the lecture: ``alpha`` learning rate, ``phi`` momentum, ``rho`` decay rate,
``beta`` the small constant (``eps`` in code), ``nu`` velocity, ``r``/``s`` moments, ``t`` step.
The incoming updates ``u`` are the gradient estimate ``g_hat`` (or the output of the previous
transformation in a chain).

Precision: accumulated state (velocity, ``r``, ``s``) is kept in at least float32 and the
formulas are evaluated there; the outputs take the updates' dtype. For float32 and float64
params this changes nothing; for bfloat16 params it keeps Adam's ``1 - rho2 = 0.001`` from
rounding to zero (0.999 is 1.0 in bfloat16).

Complex parameters follow optax's convention: feed the conjugate gradient
(``jax.grad(loss)(z).conj()``); second moments accumulate ``|u|^2 = u * conj(u)`` and are
real, first moments and the velocity are complex, and the updates are complex.

Sharding: the state is derived from the params element by element, so under ``jax.jit`` every
moment takes the sharding of its parameter and the update needs no communication.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.tree_util import Partial

from lecopt._checks import check_range

__all__ = [
    "ScaleByLearningRateState",
    "ScaleByMomentumState",
    "ScaleBySumOfSquaresState",
    "ScaleByRmsState",
    "ScaleByAdamState",
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


class ScaleByMomentumState(NamedTuple):
    """State of :func:`scale_by_momentum`.

    Attributes:
      count: the number of updates made so far (int32); a scheduled ``phi`` is read at it.
      velocity: ``nu``, shaped like the params (in at least float32: bfloat16 params keep a
        float32 velocity, as they keep float32 moments below).

    ``phi`` itself is not stored: it is the transformation's number, read back with
    :func:`lecopt.current_momentum` (which :func:`lecopt.lookahead_params` uses).
    """

    count: jax.Array
    velocity: Updates


class ScaleBySumOfSquaresState(NamedTuple):
    """State of :func:`scale_by_sum_of_squares`: ``r``, the accumulated squared gradients."""

    sum_of_squares: Updates


class ScaleByRmsState(NamedTuple):
    """State of :func:`scale_by_rms`: ``r``, the moving average of squared gradients."""

    second_moment: Updates


class ScaleByAdamState(NamedTuple):
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
    return optax.GradientTransformationExtraArgs(_as_partial(init_fn), Partial(update_fn, *hparams))


def _number_or_schedule(name: str, value: Any, lo: float = 0.0, hi: float = np.inf,
                        hi_open: bool = False) -> Any:
    """Validates a number (once, at construction) or keeps a schedule as a pytree."""
    if callable(value):
        return _as_partial(value)
    check_range(name, value, lo, hi, hi_open=hi_open)
    return value


def _at(hparam: Any, count: jax.Array) -> Any:
    """The value a number or a schedule takes at step ``count``."""
    return hparam(count) if callable(hparam) else hparam


def _like(hparam: Any, leaf: jax.Array) -> jax.Array:
    # Hyperparameters take the leaf's dtype, so an f32 array rate keeps bf16 params bf16.
    return jnp.asarray(hparam).astype(leaf.dtype)


def _wide_dtype(dtype: Any) -> np.dtype:
    # Accumulated state (velocity, moments) is kept in at least float32 (complex64): in
    # bfloat16, 0.999 rounds to 1 and Adam's second moment would never move off zero.
    return jnp.promote_types(dtype, jnp.float32)


def _wide(x: jax.Array) -> jax.Array:
    return x.astype(_wide_dtype(x.dtype))


def _real_dtype(dtype: Any) -> np.dtype:
    # complex64 -> float32, complex128 -> float64; real dtypes are their own.
    return jnp.finfo(dtype).dtype


def _zeros_like(p: Any, dtype: Any) -> jax.Array:
    # Derived from p rather than a constant: under jit XLA then gives the zeros the sharding
    # of p (a constant is compiled for a single device). abs(finite(p) * 0) is +0 for any p,
    # inf and nan included.
    p = jnp.asarray(p)
    return jnp.abs(jnp.where(jnp.isfinite(p), p, 0) * 0).astype(dtype)


def _zeros_wide(params: Params, real: bool = False) -> Updates:
    """Zeros in at least float32 (complex64); ``real=True`` for second moments of complex params."""

    def zeros(p):
        dtype = _wide_dtype(jnp.result_type(p))
        return _zeros_like(p, _real_dtype(dtype) if real else dtype)

    return jax.tree.map(zeros, params)


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

    def ema(m, x):
        m = _wide(m)
        d = _like(decay, m)
        return d * m + (1 - d) * _wide(x)

    return jax.tree.map(ema, moment, u)


def _square(u: Updates) -> Updates:
    """``|u|^2``, real: ``u * u`` for real ``u``, ``u * conj(u)`` for complex ``u``."""

    def square(x):
        x = _wide(x)
        return jnp.real(x * jnp.conj(x)) if jnp.iscomplexobj(x) else x * x

    return jax.tree.map(square, u)


def _divide_by_root(u: Updates, r: Updates, eps: Any) -> Updates:
    """``u / (beta + sqrt(r))``: the update of Adagrad and RMSProp (Algorithms 3 and 4)."""
    return jax.tree.map(
        lambda x, ri: (_wide(x) / (_like(eps, ri) + jnp.sqrt(ri))).astype(x.dtype), u, r
    )


def bias_correction(moment: Updates, decay: Any, count: jax.Array) -> Updates:
    """Adam's bias correction ``m_hat = m / (1 - rho**t)`` (Algorithm 5, lines 13-14).

    Args:
      moment: a pytree of moment estimates (``s`` or ``r``; real or complex).
      decay: the moment's decay rate ``rho`` (a number or scalar array).
      count: the step ``t >= 1`` the moment has reached (int).

    Returns:
      The corrected moment, same structure and dtypes as ``moment``.

    Example:
      After one step with ``g = 1`` the first moment is ``(1 - 0.9) g``, corrected back to g:

      >>> import jax.numpy as jnp, numpy as np, lecopt
      >>> print(np.asarray(lecopt.bias_correction(jnp.array([0.1]), 0.9, 1)).round(6))
      [1.]
    """

    def correct(m: jax.Array) -> jax.Array:
        # The factor is computed once, as a real scalar, in at least float32 (1 - 0.999**t is
        # 0 in bfloat16 for small t); the per-element work is then one multiplication, not a
        # division, which keeps Adam's update bound by memory rather than by the divider.
        wide = _real_dtype(_wide_dtype(m.dtype))
        t = jnp.asarray(count).astype(wide)
        factor = 1 / (1 - jnp.asarray(decay).astype(wide) ** t)
        return (m * factor.astype(m.dtype)).astype(m.dtype)

    return jax.tree.map(correct, moment)


# --------------------------------------------------------------------------------------------
# scale_by_learning_rate


def _count_init(params: Params) -> ScaleByLearningRateState:
    del params
    return ScaleByLearningRateState(count=jnp.zeros([], jnp.int32))


def _scale_by_learning_rate_update(learning_rate, updates, state, params=None, **extra):
    del params, extra
    alpha = _at(learning_rate, state.count)
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
      >>> import jax.numpy as jnp, numpy as np, lecopt
      >>> tx = lecopt.scale_by_learning_rate(lecopt.schedules.linear_decay(0.1, 0.0, 10))
      >>> state = tx.init(jnp.zeros(2))
      >>> for _ in range(2):
      ...     u, state = tx.update(jnp.array([1.0, -2.0]), state)
      ...     print(np.asarray(u).round(6))
      [-0.1  0.2]
      [-0.09  0.18]
    """
    learning_rate = _number_or_schedule("learning_rate", learning_rate)
    return _make(_count_init, _scale_by_learning_rate_update, learning_rate)


# --------------------------------------------------------------------------------------------
# scale_by_momentum


def _momentum_init(params: Params) -> ScaleByMomentumState:
    return ScaleByMomentumState(count=jnp.zeros([], jnp.int32), velocity=_zeros_wide(params))


def _velocity_step(momentum, updates, state):
    """``nu <- phi_t nu + u`` (Algorithm 1, line 6, with ``u = -alpha_t g``)."""
    _check_structure("scale_by_momentum", updates, state.velocity)
    phi = _at(momentum, state.count)
    nu = jax.tree.map(lambda v, u: _like(phi, v) * v + _wide(u), state.velocity, updates)
    return nu, ScaleByMomentumState(count=_increment(state.count), velocity=nu)


def _momentum_update(momentum, updates, state, params=None, **extra):
    del params, extra
    nu, state = _velocity_step(momentum, updates, state)
    return jax.tree.map(lambda v, u: v.astype(u.dtype), nu, updates), state


def _nesterov_update(momentum, updates, state, params=None, **extra):
    del params, extra
    nu, state = _velocity_step(momentum, updates, state)
    # The params held are Algorithm 2's look-ahead point theta_t + phi_t nu_t; from one
    # update to the next it moves by phi_{t+1} nu_{t+1} + u (nu_{t+1} = phi_t nu_t + u).
    phi_next = _at(momentum, state.count)
    return jax.tree.map(
        lambda v, u: (_like(phi_next, v) * v + _wide(u)).astype(u.dtype), nu, updates
    ), state


def scale_by_momentum(momentum: ScalarOrSchedule, nesterov: bool = False):
    """Momentum (Algorithm 1, line 6) or Nesterov momentum (Algorithm 2).

    ``nu <- phi_t nu + u`` and the output is ``nu``. With ``u = -alpha_t g`` (this placed after
    :func:`scale_by_learning_rate`) that is the lecture's velocity update
    ``nu <- phi_t nu - alpha_t g`` exactly, and applying the output is ``theta <- theta + nu``.

    With ``nesterov=True`` the output is ``phi_{t+1} nu + u`` with the new ``nu``: the params you
    hold then play the role of Algorithm 2's look-ahead point ``theta + phi nu``, and the
    gradient is taken there, so no second evaluation point is needed. For Algorithm 2 done
    literally use ``nesterov=False`` and :func:`lecopt.lookahead_params`.

    Args:
      momentum: ``phi`` in [0, 1), or a schedule ``step -> phi_t`` (one-cycle and CLR cycle
        the momentum against the rate); the k-th update uses ``phi_k``.
      nesterov: a Python bool (it chooses the program, so it cannot be traced).

    Returns:
      A transformation with state :class:`ScaleByMomentumState`.

    Example:
      A constant gradient 1 with ``alpha = 0.1`` and ``phi = 0.5``: ``nu`` goes -0.1, -0.15.

      >>> import jax.numpy as jnp, numpy as np, lecopt
      >>> tx = lecopt.chain(lecopt.scale_by_learning_rate(0.1), lecopt.scale_by_momentum(0.5))
      >>> state = tx.init(jnp.zeros(1))
      >>> for _ in range(2):
      ...     nu, state = tx.update(jnp.ones(1), state)
      ...     print(nu)
      [-0.1]
      [-0.15]
    """
    momentum = _number_or_schedule("momentum", momentum, 0.0, 1.0, hi_open=True)
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov={nesterov!r} must be a Python bool (True or False)")
    update = _nesterov_update if nesterov else _momentum_update
    return _make(_momentum_init, update, momentum)


# --------------------------------------------------------------------------------------------
# Adagrad and RMSProp


def _sum_of_squares_init(params: Params) -> ScaleBySumOfSquaresState:
    return ScaleBySumOfSquaresState(sum_of_squares=_zeros_wide(params, real=True))


def _sum_of_squares_update(eps, updates, state, params=None, **extra):
    del params, extra
    _check_structure("scale_by_sum_of_squares", updates, state.sum_of_squares)
    r = jax.tree.map(lambda ri, sq: ri + sq, state.sum_of_squares, _square(updates))
    return _divide_by_root(updates, r, eps), ScaleBySumOfSquaresState(sum_of_squares=r)


def scale_by_sum_of_squares(eps: float | jax.Array = 1e-7) -> optax.GradientTransformation:
    """Adagrad's scaling (Algorithm 3, lines 8-9 without ``-alpha``).

    ``r <- r + |u|^2`` and the output is ``u / (beta + sqrt(r))``, element-wise, with ``beta``
    OUTSIDE the root as in the lecture (optax's ``adagrad`` puts it inside).

    Args:
      eps: ``beta`` >= 0, the small constant for numerical stability.

    Returns:
      A transformation with state :class:`ScaleBySumOfSquaresState`.

    Example:
      Gradients 3 then 4: ``r`` is 9 then 25, so the outputs are 3/3 and 4/5.

      >>> import jax.numpy as jnp, numpy as np, lecopt
      >>> tx = lecopt.scale_by_sum_of_squares(eps=0.0)
      >>> state = tx.init(jnp.zeros(1))
      >>> for g in (3.0, 4.0):
      ...     u, state = tx.update(jnp.array([g]), state)
      ...     print(u)
      [1.]
      [0.8]
    """
    check_range("eps", eps, 0.0)
    return _make(_sum_of_squares_init, _sum_of_squares_update, eps)


def _rms_init(params: Params) -> ScaleByRmsState:
    return ScaleByRmsState(second_moment=_zeros_wide(params, real=True))


def _rms_update(decay, eps, updates, state, params=None, **extra):
    del params, extra
    _check_structure("scale_by_rms", updates, state.second_moment)
    r = _ema(state.second_moment, _square(updates), decay)
    return _divide_by_root(updates, r, eps), ScaleByRmsState(second_moment=r)


def scale_by_rms(
    decay: float | jax.Array = 0.9, eps: float | jax.Array = 1e-6
) -> optax.GradientTransformation:
    """RMSProp's scaling (Algorithm 4, lines 8-9 without ``-alpha``).

    ``r <- rho r + (1 - rho) |u|^2`` and the output is ``u / (beta + sqrt(r))``. ``r`` starts
    at zero and is not bias-corrected, as in the lecture.

    Args:
      decay: ``rho`` in [0, 1).
      eps: ``beta`` >= 0.

    Returns:
      A transformation with state :class:`ScaleByRmsState`.

    Example:
      With ``rho = 0.75`` the first step divides by ``sqrt(0.25 g^2) = g / 2``:

      >>> import jax.numpy as jnp, numpy as np, lecopt
      >>> tx = lecopt.scale_by_rms(decay=0.75, eps=0.0)
      >>> u, state = tx.update(jnp.array([4.0]), tx.init(jnp.zeros(1)))
      >>> print(u, state.second_moment)
      [2.] [4.]
    """
    check_range("decay", decay, 0.0, 1.0, hi_open=True)
    check_range("eps", eps, 0.0)
    return _make(_rms_init, _rms_update, decay, eps)


# --------------------------------------------------------------------------------------------
# Adam


@dataclasses.dataclass(frozen=True)
class _AdamInit:
    """Adam's ``init`` for a chosen storage dtype of ``s`` (static: compared by value)."""

    mu_dtype: np.dtype | None = None

    def __call__(self, params: Params) -> ScaleByAdamState:
        def first_moment(p):
            p = jnp.asarray(p)
            if self.mu_dtype is None or jnp.iscomplexobj(p):
                return _zeros_like(p, _wide_dtype(p.dtype))
            return _zeros_like(p, self.mu_dtype)

        return ScaleByAdamState(
            count=jnp.zeros([], jnp.int32),
            first_moment=jax.tree.map(first_moment, params),
            second_moment=_zeros_wide(params, real=True),
        )


def _adam_update(b1, b2, eps, updates, state, params=None, **extra):
    del params, extra
    _check_structure("scale_by_adam", updates, state.first_moment)
    rho1 = _at(b1, state.count)
    t = _increment(state.count)
    s = _ema(state.first_moment, updates, rho1)
    r = _ema(state.second_moment, _square(updates), b2)
    s_hat, r_hat = bias_correction(s, rho1, t), bias_correction(r, b2, t)
    # rsqrt and a product instead of a square root and a division: the same value to an ulp,
    # a fraction of the cost per element.
    out = jax.tree.map(
        lambda sh, rh, u: (sh * jax.lax.rsqrt(rh + _like(eps, rh))).astype(u.dtype),
        s_hat, r_hat, updates,
    )
    # s is stored in the dtype init chose (mu_dtype); this step used it unrounded, as optax.
    s = jax.tree.map(lambda new, old: new.astype(old.dtype), s, state.first_moment)
    return out, ScaleByAdamState(count=t, first_moment=s, second_moment=r)


def scale_by_adam(
    b1: ScalarOrSchedule = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-8,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
    """Adam's scaling (Algorithm 5, lines 8-15 without ``-alpha``).

    ``t <- t + 1``; ``s <- rho1 s + (1 - rho1) u``; ``r <- rho2 r + (1 - rho2) |u|^2``;
    ``s_hat = s / (1 - rho1**t)``; ``r_hat = r / (1 - rho2**t)``; output
    ``s_hat / sqrt(r_hat + beta)`` with ``beta`` INSIDE the root, as Algorithm 5 (optax's
    ``eps_root``; optax's default ``eps`` is outside).

    Args:
      b1: ``rho1`` in [0, 1), decay of the first moment ``s``, or a schedule of the step (as
        PyTorch's one-cycle cycles ``beta1``); update ``t`` then uses ``rho1 = b1(t - 1)``
        in the moment and in its bias correction ``1 - rho1**t``, as PyTorch and
        ``optax.inject_hyperparams`` do.
      b2: ``rho2`` in [0, 1), decay of the second moment ``r``.
      eps: ``beta`` >= 0. With ``beta = 0`` a zero gradient gives 0/0: use a positive value.
      mu_dtype: storage dtype of ``s`` (e.g. ``jnp.bfloat16`` to halve its memory), as in
        optax; ``None`` (default) keeps it in at least float32. Complex leaves keep a complex
        ``s``. See :func:`lecopt.adam` for the measured accuracy cost.

    Returns:
      A transformation with state :class:`ScaleByAdamState`.

    Example:
      Bias correction makes the first step ``g / sqrt(g^2 + beta) = sign(g)``:

      >>> import jax.numpy as jnp, numpy as np, lecopt
      >>> tx = lecopt.scale_by_adam()
      >>> u, state = tx.update(jnp.array([0.5, -3.0]), tx.init(jnp.zeros(2)))
      >>> print(np.asarray(u).round(6))
      [ 1. -1.]

    Reference:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2014.
    """
    b1 = _number_or_schedule("b1", b1, 0.0, 1.0, hi_open=True)
    check_range("b2", b2, 0.0, 1.0, hi_open=True)
    check_range("eps", eps, 0.0)
    if mu_dtype is not None:
        mu_dtype = jnp.dtype(mu_dtype)
        if not jnp.issubdtype(mu_dtype, jnp.floating):
            raise TypeError(f"mu_dtype={mu_dtype!r} must be a floating dtype (or None)")
    return _make(_AdamInit(mu_dtype), _adam_update, b1, b2, eps)


# --------------------------------------------------------------------------------------------
# Weight decay


def _no_state_init(params: Params) -> optax.EmptyState:
    del params
    return optax.EmptyState()


@dataclasses.dataclass(frozen=True)
class _FixedMask:
    """A mask given as a pytree of Python bools, kept static (compared by value)."""

    treedef: Any
    leaves: tuple[bool, ...]

    def __call__(self, params: Params) -> Any:
        del params
        return jax.tree.unflatten(self.treedef, self.leaves)


def _decayed_weights_update(weight_decay, mask, updates, state, params=None, **extra):
    del extra
    if params is None:
        raise ValueError("add_decayed_weights needs params: call update(updates, state, params)")

    def decay(u, p):
        return u + _like(weight_decay, u) * p

    if mask is None:
        return jax.tree.map(decay, updates, params), state
    # mask is a prefix of the params: True decays the subtree, False leaves it as it is.
    updates = jax.tree.map(
        lambda m, u, p: jax.tree.map(decay, u, p) if m else u, mask(params), updates, params
    )
    return updates, state


def _static_mask(mask: Any) -> Partial | None:
    if mask is None or callable(mask):
        return None if mask is None else _as_partial(mask)
    leaves, treedef = jax.tree.flatten(mask)
    if not all(isinstance(m, bool | np.bool_) for m in leaves):
        raise TypeError(
            f"mask: its leaves must be Python bools (True = decay), got "
            f"{sorted({type(m).__name__ for m in leaves})}; or pass a function params -> mask"
        )
    return Partial(_FixedMask(treedef, tuple(bool(m) for m in leaves)))


def add_decayed_weights(
    weight_decay: float | jax.Array = 0.0, mask: Any = None
) -> optax.GradientTransformation:
    """Weight decay: ``u <- u + lambda theta``.

    Before the learning rate it is L2 regularisation (SGD's ``weight_decay``); after Adam's
    scaling it is Loshchilov and Hutter's decoupled decay (:func:`lecopt.adamw`).

    Args:
      weight_decay: ``lambda`` >= 0.
      mask: ``None`` (decay everything), a pytree of Python bools with the params' structure
        or a prefix of it (``True`` = decay), or a function ``params -> such a pytree``, as
        ``optax.add_decayed_weights``.

    Returns:
      A stateless transformation (``optax.EmptyState``) that needs ``params`` in ``update``.

    Example:
      >>> import jax.numpy as jnp, numpy as np, lecopt
      >>> params = {"w": jnp.array([2.0]), "b": jnp.array([2.0])}
      >>> tx = lecopt.add_decayed_weights(0.5, mask={"w": True, "b": False})
      >>> u, _ = tx.update({"w": jnp.zeros(1), "b": jnp.zeros(1)}, tx.init(params), params)
      >>> print(u["w"], u["b"])
      [1.] [0.]
    """
    check_range("weight_decay", weight_decay, 0.0)
    return _make(_no_state_init, _decayed_weights_update, weight_decay, _static_mask(mask))


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

    Example:
      A chain is data: a new learning rate runs through the program already compiled (an
      optax part is a closure, static: build it once).

      >>> import jax, jax.numpy as jnp, lecopt, optax
      >>> step = jax.jit(lambda tx, g, state: tx.update(g, state))
      >>> clip = optax.clip(1.0)
      >>> for alpha in (0.1, 0.2):
      ...     tx = lecopt.chain(clip, lecopt.scale_by_learning_rate(alpha))
      ...     u, _ = step(tx, jnp.array([3.0, -0.5]), tx.init(jnp.zeros(2)))
      ...     print(u)
      [-0.1   0.05]
      [-0.2  0.1]
      >>> step._cache_size()
      1
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


def _drop_extra(update, updates, state, params=None, **extra):
    del extra
    return update(updates, state, params)


def _with_extra(t: optax.GradientTransformation) -> Callable:
    # Plain optax transformations do not accept extra keyword arguments. A module-level
    # wrapper (not optax.with_extra_args_support's new closure per call) keeps the chain's
    # structure equal for equal parts, so rebuilding a chain does not recompile.
    if isinstance(t, optax.GradientTransformationExtraArgs):
        return t.update
    return Partial(_drop_extra, _as_partial(t.update))
