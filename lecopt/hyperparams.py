"""Reading back the numbers the next update of an optimizer will use.

A lecopt transformation is a pytree of its hyperparameters and its state holds the step, so the
learning rate ``alpha_t`` (or the momentum ``phi_t``) of the next update is the part's number,
or its schedule evaluated at the part's own step count: nothing needs to be stored twice.
:func:`current_learning_rate` finds that part inside ``lecopt.chain``, ``optax.chain`` and
optax's wrappers (``inject_hyperparams``, ``MultiSteps``, ``masked``, ``apply_if_finite``,
``flatten``, ``with_extra_args_support``, ``partition`` / ``multi_transform``), pairing each
inner transformation with its inner state. It is a pure function: call it inside ``jit``
(e.g. once per compiled epoch) with the optimizer passed as an argument.

optax's own closures (``optax.chain`` and the wrappers) are opened with
:func:`inspect.getclosurevars`; this follows the variable names of optax's source, which is
why each rule names the wrapper it reads.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.tree_util import Partial

from lecopt import transforms as T

__all__ = ["current_learning_rate", "current_momentum", "momentum_part"]

_LEARNING_RATE = (T._scale_by_learning_rate_update,)
_MOMENTUM = (T._momentum_update, T._nesterov_update)


def _update_fn(tx: Any) -> Callable:
    update = getattr(tx, "update", None)
    if update is None:
        raise TypeError(
            f"tx must be an optax.GradientTransformation (e.g. lecopt.sgd(0.1)) or an "
            f"optax.MultiSteps; got {type(tx).__name__}"
        )
    return update


def _closure(fn: Callable) -> dict[str, Any]:
    try:
        return inspect.getclosurevars(fn).nonlocals
    except TypeError:  # not a Python function (a builtin, a C extension)
        return {}


def _inject_inner(nonlocals: dict[str, Any], state: Any) -> tuple[dict, Any]:
    """The hyperparameters the next update of ``inject_hyperparams`` uses, and its inner tx."""
    hparams = dict(state.hyperparams)
    for name, schedule in nonlocals["sched_hps"].items():
        hparams[name] = schedule(state.hyperparams_states[name])
    return hparams, nonlocals["inner_factory"](**nonlocals["other_hps"], **hparams)


def _parts(update: Callable, state: Any, funcs: tuple, name: str) -> Iterator[tuple[Any, Any]]:
    """Yields ``(value at the next update, part state)`` for every part of ``funcs`` inside."""
    if isinstance(update, Partial) and update.func is T._drop_extra:
        update = update.args[0]
    if isinstance(update, Partial) and not update.args and not update.keywords:
        update = update.func  # a function kept static in a lecopt chain (an optax part)
    if isinstance(update, Partial):
        if update.func is T._chain_update:
            _check_chain_state(update.args[0], state)
            for fn, s in zip(update.args[0], state):
                yield from _parts(fn, s, funcs, name)
        elif update.func in funcs:
            yield T._at(update.args[0], state.count), state
        return
    owner = getattr(update, "__self__", None)
    if isinstance(owner, optax.MultiSteps):
        yield from _parts(owner.inner_opt.update, state.inner_opt_state, funcs, name)
        return
    nonlocals = _closure(update)
    if isinstance(state, optax.InjectStatefulHyperparamsState) and "sched_hps" in nonlocals:
        hparams, inner = _inject_inner(nonlocals, state)
        found = list(_parts(_update_fn(inner), state.inner_state, funcs, name))
        # An optax optimizer inside has no lecopt part: its injected number is the answer.
        yield from found or ([(hparams[name], None)] if name in hparams else [])
        return
    if "update_fns" in nonlocals and isinstance(state, tuple):  # optax.chain
        for fn, s in zip(nonlocals["update_fns"], state):
            yield from _parts(fn, s, funcs, name)
        return
    inner_states = getattr(state, "inner_states", None)
    transforms = nonlocals.get("transforms")
    if isinstance(inner_states, dict) and isinstance(transforms, dict):  # optax.partition
        for label, inner in transforms.items():
            inner_state = getattr(inner_states[label], "inner_state", inner_states[label])
            yield from _parts(_update_fn(inner), inner_state, funcs, name)
        return
    inners = [v for v in nonlocals.values() if isinstance(v, optax.GradientTransformation)]
    if len(inners) == 1:  # masked, apply_if_finite, flatten, with_extra_args_support
        inner_state = getattr(state, "inner_state", state)
        yield from _parts(_update_fn(inners[0]), inner_state, funcs, name)


def _check_chain_state(parts: tuple, state: Any) -> None:
    if type(state) is not tuple or len(state) != len(parts):
        raise ValueError(
            f"state does not belong to tx: a chain of {len(parts)} parts has a tuple of "
            f"{len(parts)} states, got {type(state).__name__}"
        )


def _find(tx: Any, state: Any, funcs: tuple, name: str) -> tuple[Any, Any]:
    found = list(_parts(_update_fn(tx), state, funcs, name))
    if len(found) != 1:
        raise ValueError(
            f"tx must hold exactly one lecopt {name} part (a lecopt optimizer, chained or "
            f"wrapped by optax, or an optax optimizer under inject_hyperparams); found {len(found)}"
        )
    return found[0]


def current_learning_rate(tx: Any, state: Any) -> jax.Array:
    """The learning rate ``alpha_t`` the next update of ``tx`` will use.

    Works for every lecopt optimizer, constant or scheduled, inside ``lecopt.chain`` /
    ``optax.chain`` and under optax's wrappers (``inject_hyperparams`` of any optimizer with a
    ``learning_rate`` argument, ``MultiSteps``, ``masked``, ...), and under ``jit`` with ``tx``
    and ``state`` as arguments. A schedule is read at the step count of the learning-rate part,
    so under ``MultiSteps`` it is the rate of the next *applied* update.

    Args:
      tx: the optimizer (an ``optax.GradientTransformation`` or an ``optax.MultiSteps``).
      state: its state.

    Returns:
      ``alpha_t``, a scalar array.

    Raises:
      ValueError: when ``tx`` holds no learning-rate part or more than one (e.g. a
        ``multi_transform`` of two optimizers).

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, lecopt
      >>> tx = lecopt.sgd(lecopt.schedules.linear_decay(0.1, 0.0, 10), momentum=0.9)
      >>> params = jnp.zeros(2)
      >>> state = tx.init(params)
      >>> for _ in range(3):
      ...     _, state = tx.update(params, state, params)
      >>> alpha = jax.jit(lecopt.current_learning_rate)(tx, state)  # 0.1 * (1 - 3/10)
      >>> print(np.asarray(alpha).round(6))
      0.07
    """
    return jnp.asarray(_find(tx, state, _LEARNING_RATE, "learning_rate")[0])


def momentum_part(tx: Any, state: Any) -> tuple[Any, T.ScaleByMomentumState]:
    """``(phi_t, state of the momentum part)`` for the next update: see :func:`current_momentum`."""
    phi, part_state = _find(tx, state, _MOMENTUM, "momentum")
    if part_state is None:
        raise ValueError("tx's momentum comes from an optax optimizer: lecopt holds no velocity")
    return phi, part_state


def current_momentum(tx: Any, state: Any) -> jax.Array:
    """The momentum ``phi_t`` the next update of ``tx`` will use (as :func:`current_learning_rate`).

    Example:
      >>> import jax.numpy as jnp, numpy as np, lecopt
      >>> tx = lecopt.sgd(0.1, momentum=0.9)
      >>> print(np.asarray(lecopt.current_momentum(tx, tx.init(jnp.zeros(2)))).round(6))
      0.9
    """
    return jnp.asarray(momentum_part(tx, state)[0])
