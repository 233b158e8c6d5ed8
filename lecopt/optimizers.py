"""The lecture's optimizers (Algorithms 1-5, and AdamW) as thin chains of :mod:`lecopt.transforms`.

Every optimizer is an ``optax.GradientTransformation`` and also a pytree of its numeric
hyperparameters (see :mod:`lecopt.transforms`): ``jax.jit(step)(params, state, batch, tx)``
compiles once for all learning rates and momenta of the same structure.

Which parts a chain has is decided by Python values only: ``None`` leaves a part out, any
number (``0.0`` included, literal or array) keeps it. So the structure of an optimizer and of
its state is the same whether a number arrives as a literal, as an array, traced under
``jit`` / ``vmap`` or injected by ``optax.inject_hyperparams``.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from lecopt import hyperparams
from lecopt import transforms as T
from lecopt.transforms import ScalarOrSchedule

__all__ = ["sgd", "adagrad", "rmsprop", "adam", "adamw", "lookahead_params"]


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule | None = None,
    nesterov: bool = False,
    weight_decay: float | jax.Array | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Stochastic gradient descent, with momentum (Algorithm 1) or Nesterov momentum (Algorithm 2).

    With momentum: ``nu <- phi_t nu - alpha_t g_hat``; ``theta <- theta + nu``. The learning
    rate sits inside the velocity as in the lecture, so schedules ``alpha_t`` and ``phi_t``
    enter exactly as in Algorithm 1. With ``weight_decay = lambda``:
    ``g_hat <- g_hat + lambda theta`` first.

    Chain: ``[add_decayed_weights(lambda)] -> scale_by_learning_rate(alpha) ->
    [scale_by_momentum(phi, nesterov)]``; a part is left out when its argument is ``None``.

    Args:
      learning_rate: ``alpha`` >= 0, or a schedule ``step -> alpha_t``.
      momentum: ``phi`` in [0, 1), or a schedule ``step -> phi_t``; ``None`` (default) is plain
        SGD without velocity state (as ``optax.sgd``). ``0.0`` keeps a velocity, so that a
        ``vmap`` over momenta containing 0 has one structure.
      nesterov: Nesterov momentum with the gradient taken at the params held (see
        :func:`lecopt.scale_by_momentum`); for Algorithm 2 literally, keep ``False`` and take
        the gradient at :func:`lookahead_params`. Needs a momentum.
      weight_decay: ``lambda`` >= 0, L2 penalty added to the gradient; ``None`` (default)
        leaves the part out.

    Returns:
      The optimizer.

    Example:
      >>> import jax.numpy as jnp, numpy as np, lecopt
      >>> params = jnp.array([1.0, -2.0])
      >>> tx = lecopt.sgd(0.1, momentum=0.9)
      >>> state = tx.init(params)
      >>> for _ in range(2):
      ...     updates, state = tx.update(2 * params, state, params)  # f = |theta|^2
      ...     params = lecopt.apply_updates(params, updates)
      ...     print(params)
      [ 0.8 -1.6]
      [ 0.46 -0.92]
    """
    if nesterov and momentum is None:
        raise ValueError("nesterov=True needs a momentum: pass momentum=phi in [0, 1)")
    parts = []
    if weight_decay is not None:
        parts.append(T.add_decayed_weights(weight_decay))
    parts.append(T.scale_by_learning_rate(learning_rate))
    if momentum is not None:
        parts.append(T.scale_by_momentum(momentum, nesterov=nesterov))
    return T.chain(*parts)


def adagrad(learning_rate: ScalarOrSchedule, eps: float | jax.Array = 1e-7):
    """Adagrad (Algorithm 3): ``r <- r + |g|^2``; ``theta <- theta - alpha g / (beta + sqrt(r))``.

    Chain: ``scale_by_sum_of_squares(beta) -> scale_by_learning_rate(alpha)``.

    Args:
      learning_rate: the global learning rate ``alpha`` (or a schedule).
      eps: ``beta``, added OUTSIDE the root (the lecture suggests 1e-7).

    Returns:
      The optimizer.

    Example:
      Every coordinate moves by ``alpha`` on the first step, whatever its gradient's size:

      >>> import jax.numpy as jnp, numpy as np, lecopt
      >>> tx = lecopt.adagrad(0.1)
      >>> params = jnp.array([1.0, 1.0])
      >>> u, state = tx.update(jnp.array([100.0, 0.01]), tx.init(params), params)
      >>> print(np.asarray(u).round(5))
      [-0.1 -0.1]

    Reference:
      Duchi, Hazan & Singer, "Adaptive Subgradient Methods", 2011.
    """
    return T.chain(T.scale_by_sum_of_squares(eps), T.scale_by_learning_rate(learning_rate))


def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: float | jax.Array = 0.9,
    eps: float | jax.Array = 1e-6,
):
    """RMSProp (Algorithm 4): ``r <- rho r + (1-rho) |g|^2``; ``theta -= alpha g/(beta + sqrt(r))``.

    Chain: ``scale_by_rms(rho, beta) -> scale_by_learning_rate(alpha)``. Equals
    ``optax.rmsprop(alpha, decay, eps, eps_in_sqrt=False)``.

    Args:
      learning_rate: the global learning rate ``alpha`` (or a schedule).
      decay: ``rho`` in [0, 1).
      eps: ``beta``, outside the root (the lecture suggests 1e-6).

    Returns:
      The optimizer.

    Example:
      With ``rho = 0.99`` the first step is ``alpha / sqrt(0.01) = 10 alpha`` per coordinate:

      >>> import jax.numpy as jnp, numpy as np, lecopt
      >>> tx = lecopt.rmsprop(0.01, decay=0.99, eps=0.0)
      >>> params = jnp.array([1.0])
      >>> u, state = tx.update(jnp.array([3.0]), tx.init(params), params)
      >>> print(np.asarray(u).round(6))
      [-0.1]

    Reference:
      Hinton, Neural Networks for Machine Learning, lecture 6e, 2012.
    """
    return T.chain(T.scale_by_rms(decay, eps), T.scale_by_learning_rate(learning_rate))


def adam(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: ScalarOrSchedule = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-8,
    mu_dtype: Any = None,
):
    """Adam (Algorithm 5): ``theta <- theta - alpha s_hat / sqrt(r_hat + beta)``.

    Chain: ``scale_by_adam(rho1, rho2, beta) -> scale_by_learning_rate(alpha)``. Equals
    ``optax.adam(alpha, b1, b2, eps=0, eps_root=beta)``.

    Args:
      learning_rate: the step size ``alpha`` (suggested 1e-3), or a schedule.
      b1: ``rho1`` in [0, 1) (suggested 0.9), or a schedule (see :func:`lecopt.scale_by_adam`).
      b2: ``rho2`` in [0, 1) (suggested 0.999).
      eps: ``beta`` INSIDE the root (suggested 1e-8).
      mu_dtype: storage dtype of the first moment ``s``, as optax (``None``: at least
        float32). ``jnp.bfloat16`` saves 2 bytes per parameter. Measured on the lecture's
        MLP 784-512-512-10 on mnist-5k (``alpha = 1e-3``, batch 128, 1,000 steps, seeds 0
        and 1): final training loss 0.00045 / 0.00049 with a float32 ``s`` and 0.00045 /
        0.00049 with a bfloat16 ``s`` (ratios 1.000 and 1.008), test error 5.1% / 5.1%
        against 5.0% / 5.3%; the weights end 6-10% (relative norm per layer) away from the
        float32 run, where a float32 run with ``alpha`` changed by one part in 10^6 ends
        3-5% away. So bfloat16 rounding of ``s`` doubles how far the trajectory drifts, not
        the loss it reaches; ``s`` memory 2.55 -> 1.28 MiB.

    Returns:
      The optimizer.

    Example:
      >>> import jax.numpy as jnp, numpy as np, lecopt
      >>> tx = lecopt.adam(0.1)
      >>> params = jnp.array([1.0, -2.0])
      >>> u, state = tx.update(2 * params, tx.init(params), params)
      >>> print(np.asarray(u).round(6))  # the first step is alpha * sign(g)
      [-0.1  0.1]

    Reference:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2014.
    """
    return T.chain(T.scale_by_adam(b1, b2, eps, mu_dtype), T.scale_by_learning_rate(learning_rate))


def adamw(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: ScalarOrSchedule = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-8,
    weight_decay: float | jax.Array = 1e-4,
    mask: Any = None,
    mu_dtype: Any = None,
):
    """Adam with decoupled weight decay (Loshchilov & Hutter): Algorithm 5 plus decay.

    ``theta <- theta - alpha (s_hat / sqrt(r_hat + beta) + lambda theta)``: the decay is added
    after Adam's scaling, so every weight shrinks by the same factor ``1 - alpha lambda``.
    Chain: ``scale_by_adam(rho1, rho2, beta) -> add_decayed_weights(lambda, mask) ->
    scale_by_learning_rate(alpha)``. Equals ``optax.adamw(alpha, b1, b2, eps=0,
    eps_root=beta, weight_decay=lambda, mask=mask)``.

    L2 added to the gradient (``add_decayed_weights`` before Adam) is different: Adam divides
    it by ``sqrt(r_hat)``, so it barely acts on weights with large gradients and acts at full
    step size on weights with none. Two weights at 1, gradients 1 and 0, ``alpha = 0.1``,
    ``lambda = 0.01``, one step:

    >>> import jax.numpy as jnp, numpy as np, lecopt
    >>> params, g = jnp.array([1.0, 1.0]), jnp.array([1.0, 0.0])
    >>> decoupled = lecopt.adamw(0.1, weight_decay=0.01)
    >>> l2_in_adam = lecopt.chain(lecopt.add_decayed_weights(0.01), lecopt.adam(0.1))
    >>> for tx in (decoupled, l2_in_adam):
    ...     u, _ = tx.update(g, tx.init(params), params)
    ...     print(np.asarray(u).round(4))
    [-0.101 -0.001]
    [-0.1 -0.1]

    Decoupled, the unused weight decays by ``alpha lambda = 0.001``; with L2 inside Adam its
    gradient ``lambda theta = 0.01`` is normalised to 1 and it moves by the full ``alpha``
    (100 times more), while the used weight gets no decay at all.

    Args:
      learning_rate: ``alpha`` (or a schedule).
      b1: ``rho1`` in [0, 1) (or a schedule).
      b2: ``rho2`` in [0, 1).
      eps: ``beta`` INSIDE the root.
      weight_decay: ``lambda`` >= 0 (optax's default 1e-4).
      mask: which weights decay (see :func:`lecopt.add_decayed_weights`), e.g.
        ``lambda p: jax.tree.map(lambda x: x.ndim > 1, p)`` to leave biases alone.
      mu_dtype: storage dtype of ``s`` (see :func:`adam`).

    Returns:
      The optimizer.

    Reference:
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """
    return T.chain(
        T.scale_by_adam(b1, b2, eps, mu_dtype),
        T.add_decayed_weights(weight_decay, mask),
        T.scale_by_learning_rate(learning_rate),
    )


def lookahead_params(params: Any, opt_state: Any, tx: Any) -> Any:
    """Algorithm 2's interim point ``theta_tilde = theta + phi_t nu`` (line 5).

    Take the gradient there, then make a plain momentum step (``sgd(..., momentum=phi)`` with
    ``nesterov=False``): that is Nesterov momentum exactly as the lecture writes it, also with a
    scheduled ``phi_t`` (the value the next update will use).

    Args:
      params: ``theta``.
      opt_state: the optimizer's state (``nu`` and the step are read from it).
      tx: the optimizer, holding exactly one momentum part (``lecopt.sgd(alpha,
        momentum=phi)``, a chain or an optax wrapper around it); ``phi_t`` is read from it
        with :func:`lecopt.current_momentum`.

    Returns:
      ``theta + phi_t nu``, shaped like ``params``.

    Example:
      >>> import jax.numpy as jnp, numpy as np, lecopt
      >>> tx = lecopt.sgd(0.1, momentum=0.5)
      >>> theta = jnp.array([1.0])
      >>> u, state = tx.update(jnp.array([1.0]), tx.init(theta), theta)  # nu = -0.1
      >>> theta = lecopt.apply_updates(theta, u)
      >>> look = lecopt.lookahead_params(theta, state, tx)  # 0.9 + 0.5 * (-0.1)
      >>> print(np.asarray(look).round(6))
      [0.85]
    """
    phi, state = hyperparams.momentum_part(tx, opt_state)
    return jax.tree.map(
        lambda p, v: p + jax.numpy.asarray(phi).astype(p.dtype) * v.astype(p.dtype),
        params,
        state.velocity,
    )
