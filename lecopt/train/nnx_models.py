"""Flax NNX models in the training layer: a linen-style view of an ``nnx.Module``.

The compiled programs of :mod:`lecopt.train.programs` call ``model.init`` and
``model.apply(variables, x, train=..., mutable=["batch_stats"])`` on a hashable, static model.
An ``nnx.Module`` is neither static nor hashable (it holds its weights), so
:func:`as_model` splits it (``nnx.split(module, nnx.Param, nnx.BatchStat)``) into

* an :class:`NNXModel`: the ``GraphDef`` (the module's structure and static attributes) and
  the tree structure, shapes and dtypes of its variables. Hashable, so the compiled programs
  are cached on it: a second module of the same structure (other weights) reuses them;
* its variables, ``{"params": ..., "batch_stats": ...}`` as plain nested dicts
  (``nnx.to_pure_dict``), which the programs take as traced arguments (never baked into
  a program as constants).

:meth:`NNXModel.apply` merges the graph with the variables into a fresh module inside the
trace, switches it with ``train()``/``eval()`` (BatchNorm's ``use_running_average``) and
calls it; :func:`merge` builds the trained module at the end. The module given to ``fit`` is
never modified.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["NNXModel", "as_model", "merge", "is_nnx"]


def is_nnx(model: Any) -> bool:
    return isinstance(model, nnx.Module)


class NNXModel:
    """The static half of an ``nnx.Module``, with linen's ``init``/``apply`` calling convention.

    Equal for two modules of one structure (class, attributes, variable shapes and dtypes),
    whatever their weights.
    """

    __slots__ = ("graphdef", "treedefs", "shapes", "_hash")

    def __init__(self, graphdef: Any, variables: dict[str, Any]):
        self.graphdef = graphdef
        flat = {k: jax.tree.flatten(v) for k, v in variables.items()}
        self.treedefs = tuple((k, treedef) for k, (_, treedef) in flat.items())
        self.shapes = tuple((k, tuple((tuple(x.shape), jnp.dtype(x.dtype).name)
                                      for x in leaves)) for k, (leaves, _) in flat.items())
        self._hash = hash((graphdef, self.treedefs, self.shapes))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NNXModel) and (self.graphdef, self.treedefs, self.shapes) \
            == (other.graphdef, other.treedefs, other.shapes)

    def __repr__(self) -> str:
        return f"NNXModel({self.graphdef!r}, shapes={self.shapes!r})"

    def init(self, key: jax.Array, x: jax.Array, train: bool = False) -> dict[str, Any]:
        """Zeros of the module's variable shapes. Only the shapes are ever used (to check the
        model and size the state): training starts from the module's own weights."""
        del key, x, train
        shapes = dict(self.shapes)
        return {k: jax.tree.unflatten(treedef, [jnp.zeros(s, d) for s, d in shapes[k]])
                for k, treedef in self.treedefs}

    def module(self, variables: dict[str, Any]) -> nnx.Module:
        """A new module of this structure holding ``variables``."""
        states = [nnx.State(variables.get(k, {})) for k in ("params", "batch_stats")
                  if k in dict(self.treedefs)]
        return nnx.merge(self.graphdef, *states)

    def apply(self, variables: dict[str, Any], x: jax.Array, train: bool = False,
              mutable: Any = False) -> Any:
        """The logits of the module in training (``model.train()``) or prediction mode
        (``model.eval()``); with ``mutable``, also the updated ``{"batch_stats": ...}``."""
        model = self.module(variables)
        if train:
            model.train()
        else:
            model.eval()
        logits = model(x)
        if mutable:
            return logits, {"batch_stats": nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))}
        return logits


def as_model(model: Any) -> tuple[Any, dict[str, Any] | None]:
    """``(NNXModel, variables)`` for an ``nnx.Module``; ``(model, None)`` for anything else.

    Raises ValueError for a module with variables other than ``nnx.Param`` and
    ``nnx.BatchStat`` (e.g. the ``RngState`` of ``nnx.Dropout``): ``fit`` trains those two.

    Example:
      >>> import lecopt.nnx
      >>> def mlp(seed):
      ...     return lecopt.nnx.MLP(4, (3,), 2, batch_norm=True, rngs=nnx.Rngs(seed))
      >>> model, variables = as_model(mlp(0))
      >>> sorted(variables), sorted(variables["params"]), variables["params"]["head"]["bias"]
      (['batch_stats', 'params'], ['head', 'hidden', 'norms'], Array([0., 0.], dtype=float32))
      >>> model == as_model(mlp(1))[0]  # other weights, one structure: the same programs
      True
    """
    if not is_nnx(model):
        return model, None
    graphdef, params, batch_stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    if jax.tree.leaves(rest):
        kinds = sorted({type(v).__name__ for v in jax.tree.leaves(
            rest, is_leaf=lambda v: isinstance(v, nnx.Variable))})
        raise ValueError(f"model: fit trains nnx.Param and nnx.BatchStat variables; the "
                         f"module also has {kinds}")
    variables = {"params": nnx.to_pure_dict(params)}
    batch_stats = nnx.to_pure_dict(batch_stats)
    if jax.tree.leaves(batch_stats):
        variables["batch_stats"] = batch_stats
    return NNXModel(graphdef, variables), variables


def merge(model: NNXModel, variables: dict[str, Any]) -> nnx.Module:
    """The trained ``nnx.Module``: ``model``'s structure with ``variables`` (e.g.
    ``state.variables``)."""
    return model.module(variables)
