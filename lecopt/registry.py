"""The lecture's optimizers by name: one table for the CLI, the widgets, the experiments and the
benchmarks.

Each entry names a factory of :mod:`lecopt.optimizers`, the keyword arguments that make it
that optimizer (``nesterov=True``), and the factory's name for the lecture's momentum ``phi``
(``momentum`` for SGD, ``b1`` (``rho1``) for Adam; None where the method has none).

Example:
  >>> from lecopt import registry
  >>> list(registry.OPTIMIZERS)
  ['gd', 'momentum', 'nesterov', 'adagrad', 'rmsprop', 'adam']
  >>> registry.OPTIMIZERS["nesterov"].label
  'Nesterov'
  >>> import jax.numpy as jnp
  >>> tx = registry.make_optimizer("momentum", 0.1, momentum=0.5)  # sgd(0.1, momentum=0.5)
  >>> updates, _ = tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))
  >>> updates  # the first step: nu = phi * 0 - alpha * g
  Array([-0.1, -0.1], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import optax

from lecopt import optimizers

__all__ = ["OptimizerEntry", "OPTIMIZERS", "make_optimizer"]


class OptimizerEntry(NamedTuple):
    """One optimizer of the lecture.

    Attributes:
      label: its name in figures and reports.
      factory: the :mod:`lecopt.optimizers` function that builds it.
      fixed: keyword arguments always given to ``factory``.
      momentum_arg: the factory's argument that takes the momentum ``phi``, or None.
    """

    label: str
    factory: Callable[..., optax.GradientTransformation]
    fixed: Mapping[str, Any]
    momentum_arg: str | None


OPTIMIZERS: Mapping[str, OptimizerEntry] = MappingProxyType({
    "gd": OptimizerEntry("gradient descent", optimizers.sgd, {}, None),
    "momentum": OptimizerEntry("momentum", optimizers.sgd, {}, "momentum"),
    "nesterov": OptimizerEntry("Nesterov", optimizers.sgd, {"nesterov": True}, "momentum"),
    "adagrad": OptimizerEntry("Adagrad", optimizers.adagrad, {}, None),
    "rmsprop": OptimizerEntry("RMSProp", optimizers.rmsprop, {}, None),
    "adam": OptimizerEntry("Adam", optimizers.adam, {}, "b1"),
})
"""Name -> :class:`OptimizerEntry`, in the lecture's order."""


def make_optimizer(name: str, learning_rate: Any, momentum: Any = None,
                   **hyperparameters: Any) -> optax.GradientTransformation:
    """The optimizer ``name`` of :data:`OPTIMIZERS`.

    Args:
      name: a key of :data:`OPTIMIZERS`.
      learning_rate: ``alpha``, a number or a schedule.
      momentum: ``phi`` for the optimizers that have one (momentum, Nesterov: ``momentum``;
        Adam: ``b1``); ignored by the others, and None keeps the factory's default.
      **hyperparameters: further keyword arguments of the factory (``weight_decay=`` for the
        SGD family, ``eps=``, ``decay=``, ...).

    Returns:
      The ``GradientTransformation``.

    Raises:
      ValueError: an unknown ``name``.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer={name!r} is unknown; choose from {', '.join(OPTIMIZERS)}")
    entry = OPTIMIZERS[name]
    kwargs = {**entry.fixed, **hyperparameters}
    if momentum is not None and entry.momentum_arg is not None:
        kwargs[entry.momentum_arg] = momentum
    return entry.factory(learning_rate, **kwargs)
