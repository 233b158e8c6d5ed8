"""The lecture's optimizers (Algorithms 1-5) as thin chains of :mod:`lecopt.transforms`.

Every optimizer is an ``optax.GradientTransformation`` and also a pytree of its numeric
hyperparameters (see :mod:`lecopt.transforms`): ``jax.jit(step)(params, state, batch, tx)``
compiles once for all learning rates and momenta of the same structure.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from lecopt import transforms as T
from lecopt.transforms import ScalarOrSchedule

__all__ = ["sgd", "adagrad", "rmsprop", "adam", "lookahead_params"]


def _is_off(value: Any) -> bool:
    # Only a literal Python zero drops a part; an array (even of zeros) keeps it, so that a
    # vmapped batch containing 0 runs through the same program as its other members.
    return isinstance(value, int | float) and not isinstance(value, bool) and value == 0


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: float | jax.Array = 0.0,
    nesterov: bool = False,
    weight_decay: float | jax.Array = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """Stochastic gradient descent, with momentum (Algorithm 1) or Nesterov momentum (Algorithm 2).

    With momentum: ``nu <- phi nu - alpha_t g_hat``; ``theta <- theta + nu``. The learning rate
    sits inside the velocity as in the lecture, so a schedule ``alpha_t`` enters exactly as in
    Algorithm 1. With ``weight_decay = lambda``: ``g_hat <- g_hat + lambda theta`` first.

    Chain: ``[add_decayed_weights(lambda)] -> scale_by_learning_rate(alpha) ->
    [scale_by_momentum(phi, nesterov)]``.

    Args:
      learning_rate: ``alpha`` >= 0, or a schedule ``step -> alpha_t``.
      momentum: ``phi`` in [0, 1); a Python 0 means plain SGD (no velocity state).
      nesterov: Nesterov momentum with the gradient taken at the params held (see
        :func:`lecopt.scale_by_momentum`); for Algorithm 2 literally, keep ``False`` and take
        the gradient at :func:`lookahead_params`.
      weight_decay: ``lambda`` >= 0, L2 penalty added to the gradient.

    Returns:
      The optimizer.

    Example:
      >>> tx = lecopt.sgd(0.03, momentum=0.9, weight_decay=1e-3)
      >>> state = tx.init(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> params = lecopt.apply_updates(params, updates)
    """
    parts = []
    if not _is_off(weight_decay):
        parts.append(T.add_decayed_weights(weight_decay))
    parts.append(T.scale_by_learning_rate(learning_rate))
    if not _is_off(momentum) or nesterov:
        parts.append(T.scale_by_momentum(momentum, nesterov=nesterov))
    return T.chain(*parts)


def adagrad(learning_rate: ScalarOrSchedule, eps: float | jax.Array = 1e-7):
    """Adagrad (Algorithm 3): ``r <- r + g*g``; ``theta <- theta - alpha g / (beta + sqrt(r))``.

    Chain: ``scale_by_sum_of_squares(beta) -> scale_by_learning_rate(alpha)``.

    Args:
      learning_rate: the global learning rate ``alpha`` (or a schedule).
      eps: ``beta``, added OUTSIDE the root (the lecture suggests 1e-7).

    Returns:
      The optimizer.

    Reference:
      Duchi, Hazan & Singer, "Adaptive Subgradient Methods", 2011.
    """
    return T.chain(T.scale_by_sum_of_squares(eps), T.scale_by_learning_rate(learning_rate))


def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: float | jax.Array = 0.9,
    eps: float | jax.Array = 1e-6,
):
    """RMSProp (Algorithm 4): ``r <- rho r + (1-rho) g*g``; ``theta -= alpha g / (beta + sqrt(r))``.

    Chain: ``scale_by_rms(rho, beta) -> scale_by_learning_rate(alpha)``. Equals
    ``optax.rmsprop(alpha, decay, eps, eps_in_sqrt=False)``.

    Args:
      learning_rate: the global learning rate ``alpha`` (or a schedule).
      decay: ``rho`` in [0, 1).
      eps: ``beta``, outside the root (the lecture suggests 1e-6).

    Returns:
      The optimizer.

    Reference:
      Hinton, Neural Networks for Machine Learning, lecture 6e, 2012.
    """
    return T.chain(T.scale_by_rms(decay, eps), T.scale_by_learning_rate(learning_rate))


def adam(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-8,
):
    """Adam (Algorithm 5): ``theta <- theta - alpha s_hat / sqrt(r_hat + beta)``.

    Chain: ``scale_by_adam(rho1, rho2, beta) -> scale_by_learning_rate(alpha)``. Equals
    ``optax.adam(alpha, b1, b2, eps=0, eps_root=beta)``.

    Args:
      learning_rate: the step size ``alpha`` (suggested 1e-3), or a schedule.
      b1: ``rho1`` in [0, 1) (suggested 0.9).
      b2: ``rho2`` in [0, 1) (suggested 0.999).
      eps: ``beta`` INSIDE the root (suggested 1e-8).

    Returns:
      The optimizer.

    Reference:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2014.
    """
    return T.chain(T.scale_by_adam(b1, b2, eps), T.scale_by_learning_rate(learning_rate))


def lookahead_params(params: Any, opt_state: Any) -> Any:
    """Algorithm 2's interim point ``theta_tilde = theta + phi nu`` (line 5).

    Take the gradient there, then make a plain momentum step (``sgd(..., momentum=phi)`` with
    ``nesterov=False``): that is Nesterov momentum exactly as the lecture writes it.

    Args:
      params: ``theta``.
      opt_state: a state containing exactly one :class:`lecopt.MomentumState` (any nesting,
        e.g. the state of ``lecopt.sgd(alpha, momentum=phi)`` or of a chain holding it).

    Returns:
      ``theta + phi nu``, shaped like ``params``.

    Example:
      >>> g = jax.grad(loss)(lecopt.lookahead_params(params, state), batch)
      >>> updates, state = tx.update(g, state, params)
    """
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, T.MomentumState))
        if isinstance(s, T.MomentumState)
    ]
    if len(found) != 1:
        raise ValueError(
            f"lookahead_params: opt_state must hold exactly one MomentumState, found {len(found)};"
            " build the optimizer with lecopt.sgd(..., momentum=phi) or lecopt.scale_by_momentum"
        )
    state = found[0]
    return jax.tree.map(
        lambda p, v: p + state.momentum.astype(p.dtype) * v.astype(p.dtype),
        params,
        state.velocity,
    )
