"""``evaluate``: loss and error of a model on a data set, in prediction mode."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from lecopt._checks import check_int
from lecopt.train import nnx_models, programs
from lecopt.train.inputs import check_model, check_xy, gathered_test_set
from lecopt.train.records import Evaluation

__all__ = ["evaluate"]


def evaluate(model: flax.linen.Module | nnx.Module, variables: Mapping[str, Any] | Any,
             x: Any, y: Any = None, batch_size: int = 1024) -> Evaluation:
    """Mean softmax cross-entropy and classification error of ``model`` on ``(x, y)``.

    In prediction mode (``train=False`` when the module takes it; BatchNorm uses its running
    averages), over all examples (the last batch is padded and masked), in one compiled scan.

    Args:
      model: the Flax module.
      variables: ``{"params": ..., ["batch_stats": ...]}`` (e.g. ``state.variables``). For an
        ``nnx.Module``, which holds its variables: ``evaluate(module, x, y)`` (run under
        ``module.eval()`` on a copy: the module is not modified), or
        ``evaluate(module, variables, x, y)`` with pure-dict variables of its structure (a
        ``SweepRun.state.variables``).
      x: inputs (N, ...).
      y: integer labels (N,).
      batch_size: examples per forward pass.

    With ``variables`` on a mesh over several processes (the state :func:`~lecopt.train.fit`
    returns there), every process makes the same call with the whole ``(x, y)``; each
    transfers only its devices' slice of every batch (split along the mesh's first axis) and
    all get the same result.

    Returns:
      :class:`~lecopt.train.Evaluation` ``(loss, error)``: loss in nats, error as a fraction
      in [0, 1].

    Example:
      >>> from lecopt import nn, optimizers, train
      >>> model = nn.MLP((8,), num_classes=4)
      >>> state = train.init_state(model, optimizers.sgd(0.1), jnp.zeros((1, 3)))
      >>> loss, error = train.evaluate(model, state.variables, jnp.zeros((6, 3)),
      ...                              jnp.arange(6) % 4)
      >>> round(loss, 4), round(error, 4)  # all logits 0: loss ln 4, argmax class 0
      (1.3863, 0.6667)
    """
    if nnx_models.is_nnx(model):
        model, own = nnx_models.as_model(model)
        if y is None:
            variables, x, y = own, variables, x
    check_model(model)
    batch_size = check_int("batch_size", batch_size)
    check_xy("test", x, y)
    mesh = _mesh_across_processes(variables)
    if mesh is not None:
        axis = mesh.axis_names[0]
        devices = mesh.shape[axis]
        batch = -(-min(batch_size, x.shape[0]) // devices) * devices
        xs, ys = gathered_test_set(np.asarray(x), np.asarray(y, np.int32), batch,
                                   NamedSharding(mesh, PartitionSpec(None, axis)))
        key = programs.EvalKey(programs.ByValue(model), programs.accepts_train(model),
                               NamedSharding(mesh, PartitionSpec(axis)), batch, True)
        loss, error = programs.eval_programs(key).evaluate(dict(variables), xs, ys)
        return Evaluation(float(loss), float(error))
    x, y = jnp.asarray(x), jnp.asarray(y, jnp.int32)
    key = programs.EvalKey(programs.ByValue(model), programs.accepts_train(model), None,
                           min(batch_size, x.shape[0]))
    loss, error = programs.eval_programs(key).evaluate(dict(variables), x, y)
    return Evaluation(float(loss), float(error))


def _mesh_across_processes(variables: Any) -> Any:
    """The mesh of ``variables`` if they are global arrays over several processes, else None."""
    for leaf in jax.tree.leaves(variables):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable \
                and isinstance(leaf.sharding, NamedSharding):
            return leaf.sharding.mesh
    return None
