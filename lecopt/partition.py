"""Which leaves of an optimizer are traced hyperparameters and which are its structure.

A lecopt optimizer is a pytree of its hyperparameters (:mod:`lecopt.transforms`). Programs
that take an optimizer as an argument (``train.fit``'s compiled epoch,
``landscapes.trajectory``) split it in two: the numbers and arrays become traced arguments, so
another learning rate or momentum reuses the compiled program; everything else (an optax
closure's functions, a flag, a string) is static and part of the program's cache key.

Example:
  >>> from lecopt import optimizers, partition
  >>> numbers, structure = partition.split(optimizers.sgd(0.1, momentum=0.9))
  >>> sorted(float(x) for x in numbers)
  [0.1, 0.9]
  >>> structure == partition.split(optimizers.sgd(0.5, momentum=0.2))[1]
  True
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

__all__ = ["is_hyperparameter", "Structure", "split"]


def is_hyperparameter(leaf: Any) -> bool:
    """True for the leaves that are traced: numbers and arrays, but not booleans.

    Booleans choose structure (``nesterov=True``), so they stay static.
    """
    if isinstance(leaf, bool | np.bool_):
        return False
    return isinstance(leaf, jax.Array | np.ndarray | np.generic | numbers.Number)


class Structure(NamedTuple):
    """The static part of a pytree: its treedef, which leaves are traced, the static leaves.

    Hashable when the static leaves are, so it can be a ``jax.jit`` static argument or a cache
    key; :meth:`rebuild` puts traced leaves back in.
    """

    treedef: Any
    traced: tuple[bool, ...]
    static_leaves: tuple[Any, ...]

    def rebuild(self, hyperparameters: Sequence[Any]) -> Any:
        """The pytree with ``hyperparameters`` (in :func:`split`'s order) as its traced leaves."""
        traced, static = iter(hyperparameters), iter(self.static_leaves)
        leaves = [next(traced) if t else next(static) for t in self.traced]
        return jax.tree.unflatten(self.treedef, leaves)


def split(tree: Any) -> tuple[list[Any], Structure]:
    """``(hyperparameters, structure)`` of ``tree``; ``structure.rebuild(hyperparameters)``
    returns an equal tree.

    Raises:
      TypeError: a static leaf is not hashable (the structure could not be a cache key).
    """
    leaves, treedef = jax.tree.flatten(tree)
    traced = tuple(is_hyperparameter(leaf) for leaf in leaves)
    structure = Structure(treedef, traced,
                          tuple(leaf for leaf, t in zip(leaves, traced) if not t))
    try:
        hash(structure)
    except TypeError as e:
        raise TypeError(f"optimizer: its non-numeric leaves must be hashable to be compiled "
                        f"({e})") from None
    return [leaf for leaf, t in zip(leaves, traced) if t], structure
