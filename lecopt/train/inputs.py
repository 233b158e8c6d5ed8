"""Checking and preparing what ``fit`` and ``sweep`` are given: the model, the data, the sizes."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lecopt import distributed, partition
from lecopt._checks import check_int
from lecopt.train import nnx_models, programs

__all__ = ["NONFINITE_MODES", "COLLECTIONS", "Setup", "prepare", "unpack_data", "check_xy",
           "check_model", "check_mode", "model_calling_convention", "gathered_test_set"]

NONFINITE_MODES = ("stop", "skip")
COLLECTIONS = ("params", "batch_stats")


def check_model(model: Any) -> None:
    if not isinstance(model, flax.linen.Module | nnx_models.NNXModel):
        raise TypeError("model must be a flax.linen.Module or a flax.nnx.Module; got "
                        f"{type(model).__name__}")


def check_mode(on_nonfinite: str) -> None:
    if on_nonfinite not in NONFINITE_MODES:
        raise ValueError(f"on_nonfinite={on_nonfinite!r}; must be one of {NONFINITE_MODES}")


def unpack_data(data: Any) -> tuple[Any, Any, Any, Any]:
    """(x_train, y_train, x_test, y_test) from a Dataset-like record, a mapping or a tuple."""
    names = ("x_train", "y_train", "x_test", "y_test")
    if isinstance(data, Mapping):
        if "x_train" not in data or "y_train" not in data:
            raise ValueError("data: a mapping needs the keys 'x_train' and 'y_train' (and "
                             f"optionally 'x_test', 'y_test'); got {sorted(data)}")
        return tuple(data.get(n) for n in names)  # type: ignore[return-value]
    if isinstance(data, tuple | list):
        if len(data) not in (2, 4):
            raise ValueError("data: a tuple must be (x_train, y_train) or (x_train, y_train, "
                             f"x_test, y_test); got {len(data)} items")
        return (tuple(data) + (None, None))[:4]  # type: ignore[return-value]
    if hasattr(data, "x_train") and hasattr(data, "y_train"):
        return tuple(getattr(data, n, None) for n in names)  # type: ignore[return-value]
    raise TypeError(f"data: expected a lecopt.data.Dataset (or anything with x_train, "
                    f"y_train, x_test, y_test), a mapping or a tuple; got {type(data).__name__}")


def check_xy(which: str, x: Any, y: Any) -> None:
    """Inputs (N, ...) and integer labels (N,)."""
    if x is None or y is None:
        raise ValueError(f"data: {which} needs both x_{which} and y_{which}")
    if not hasattr(x, "shape") or not hasattr(y, "shape"):
        raise TypeError(f"data: x_{which} and y_{which} must be arrays")
    if len(x.shape) < 1 or y.shape != x.shape[:1]:
        raise ValueError(f"data: y_{which} must have shape (N,) with N = x_{which}.shape[0]; "
                         f"got x_{which} {tuple(x.shape)} and y_{which} {tuple(y.shape)}")
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"data: y_{which} must hold integer class labels; got {y.dtype}")


@functools.lru_cache(maxsize=64)
def _calling_convention(key: programs.ByValue, example_shape: tuple, dtype: Any) -> bool:
    model = key.value
    takes_train = programs.accepts_train(model)
    shapes = jax.eval_shape(functools.partial(programs.init_variables, model, takes_train),
                            jax.random.PRNGKey(0),
                            jax.ShapeDtypeStruct((1,) + example_shape, dtype))
    unknown = sorted(set(shapes) - set(COLLECTIONS))
    if unknown:
        raise ValueError(f"model: fit trains the collections {COLLECTIONS}; the model also "
                         f"has {unknown}")
    return takes_train


def model_calling_convention(model: Any, x_example: jax.Array) -> bool:
    """Whether the model takes ``train=``; checks (by tracing ``model.init``, cached) that its
    only collections are ``params`` and ``batch_stats``."""
    return _calling_convention(programs.ByValue(model), tuple(x_example.shape[1:]),
                               x_example.dtype)


@dataclasses.dataclass
class Setup:
    """The checked inputs of one ``fit`` or ``sweep``, with the data on the device(s)."""

    model: Any
    takes_train: bool
    x: jax.Array
    y: jax.Array
    x_test: jax.Array | None
    y_test: jax.Array | None
    n: int
    steps: int  # per epoch: N // batch_size
    batch_size: int
    eval_batch_size: int
    batch_sharding: Any
    replicated: Any
    # A mesh over several processes: x, y stay on the host (every process holds them whole);
    # each epoch's minibatches are gathered into global arrays (S, B, ...) split like this
    # (epoch_data), and x_test, y_test already are such batches (label -1: padding).
    epoch_sharding: Any = None
    x1: Any = None  # x[:1] on the devices (model.init's example), when x stays on the host
    # An nnx.Module's variables (model is then its NNXModel): training starts from them.
    initial: Any = None

    @property
    def init_args(self) -> tuple:
        """The arguments after ``hyperparameters`` of ``TrainPrograms.init``."""
        return () if self.initial is None else (self.initial,)

    @property
    def multiprocess(self) -> bool:
        return self.epoch_sharding is not None

    @property
    def example(self) -> Any:
        """One training input (1, ...), on the devices: what ``model.init`` is given."""
        return self.x[:1] if self.x1 is None else self.x1

    def program_key(self, on_nonfinite: str, optimizer: partition.Structure
                    ) -> programs.ProgramKey:
        return programs.ProgramKey(programs.ByValue(self.model), self.takes_train, on_nonfinite,
                                   self.batch_sharding, optimizer, self.multiprocess)

    def eval_programs(self) -> programs.EvalPrograms:
        return programs.eval_programs(programs.EvalKey(
            programs.ByValue(self.model), self.takes_train, self.batch_sharding,
            self.eval_batch_size, self.multiprocess))

    def epoch_data(self, data_key: jax.Array, epoch: int) -> tuple[Any, Any, jax.Array]:
        """``(x, y, order)``, the arguments of the training program for ``epoch``."""
        return self.batches(programs.epoch_order(data_key, epoch, self.n, self.steps,
                                                 self.batch_size))

    def epochs_data(self, data_keys: list[jax.Array], epoch: int
                    ) -> tuple[Any, Any, jax.Array]:
        """``(x, y, orders)`` of ``epoch`` for runs of the keys ``data_keys``, one order each
        (R, S, B): the arguments of the vmapped training program with one order per run.
        Across processes the minibatches are gathered for each run: R copies of the slice."""
        return self.batches(jnp.stack([programs.epoch_order(k, epoch, self.n, self.steps,
                                                            self.batch_size)
                                       for k in data_keys]))

    def batches(self, order: jax.Array) -> tuple[Any, Any, jax.Array]:
        """``(x, y, order)`` for minibatch indices ``order`` (..., S, B): the data set itself
        in one process; across processes, the minibatches ``x[order]``, ``y[order]`` gathered
        into global arrays split along B (each process transfers only its slice)."""
        if not self.multiprocess:
            return self.x, self.y, order
        # Every process has the same order (a fully replicated array: the same seed), and
        # gathers and transfers only its own devices' part of each minibatch.
        host_order = np.asarray(order)
        sharding = self.epoch_sharding
        if host_order.ndim > 2:  # one order per run: (R, S, B), split along B as well
            sharding = NamedSharding(sharding.mesh, PartitionSpec(
                *(None,) * (host_order.ndim - 1), sharding.spec[-1]))
        return (distributed.gathered(self.x, host_order, sharding),
                distributed.gathered(self.y, host_order, sharding), order)

    def replicate(self, tree: Any) -> Any:
        """``tree`` replicated over the mesh (as is without one): across processes, each
        process places its own copy of the same values (:func:`distributed.replicated`)."""
        if self.multiprocess:
            return distributed.replicated(tree, self.replicated)
        if self.replicated is not None:
            return jax.device_put(tree, self.replicated)
        return tree


def prepare(model: Any, data: Any, batch_size: int, eval_batch_size: int,
            mesh: Mesh | None) -> Setup:
    """Checks the model, the data and the sizes; puts the data on the device(s) once.

    An ``nnx.Module`` becomes its :class:`~lecopt.train.nnx_models.NNXModel` (``Setup.model``)
    and its variables (``Setup.initial``)."""
    model, initial = nnx_models.as_model(model)
    check_model(model)
    batch_size = check_int("batch_size", batch_size)
    eval_batch_size = check_int("eval_batch_size", eval_batch_size)
    x, y, x_test, y_test = unpack_data(data)
    check_xy("train", x, y)
    if (x_test is None) != (y_test is None):
        raise ValueError("data: give both x_test and y_test, or neither")
    if x_test is not None:
        check_xy("test", x_test, y_test)
    n = int(x.shape[0])
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} training examples")
    batch_sharding = replicated = None
    devices = 1
    if mesh is not None:
        if not isinstance(mesh, Mesh):
            raise TypeError(f"mesh must be a jax.sharding.Mesh; got {type(mesh).__name__}")
        axis = mesh.axis_names[0]
        devices = mesh.shape[axis]
        if batch_size % devices:
            raise ValueError(f"batch_size={batch_size} must be divisible by the {devices} "
                             f"devices of the mesh axis {axis!r}")
        eval_batch_size = -(-eval_batch_size // devices) * devices
        batch_sharding = NamedSharding(mesh, PartitionSpec(axis))
        replicated = NamedSharding(mesh, PartitionSpec())
    if x_test is not None:
        eval_batch_size = min(eval_batch_size, -(-int(x_test.shape[0]) // devices) * devices)
    if mesh is not None and distributed.spans_processes(mesh):
        setup = _prepare_across_processes(model, x, y, x_test, y_test, n, batch_size,
                                          eval_batch_size, mesh)
        if initial is not None:
            setup.initial = distributed.replicated(initial, replicated)
        return setup
    # Each array goes to the device once per call (a no-op for arrays already there).
    put = functools.partial(jax.device_put, device=replicated)
    x, y = put(jnp.asarray(x)), put(jnp.asarray(y, jnp.int32))
    if x_test is not None:
        x_test, y_test = put(jnp.asarray(x_test)), put(jnp.asarray(y_test, jnp.int32))
    takes_train = model_calling_convention(model, x[:1])
    if initial is not None:
        initial = put(initial)
    return Setup(model, takes_train, x, y, x_test, y_test, n, n // batch_size, batch_size,
                 eval_batch_size, batch_sharding, replicated, initial=initial)


def _prepare_across_processes(model: Any, x: Any, y: Any, x_test: Any, y_test: Any, n: int,
                              batch_size: int, eval_batch_size: int, mesh: Mesh) -> Setup:
    """The :class:`Setup` of a mesh over several processes: the data stays on the host."""
    axis = mesh.axis_names[0]
    epoch_sharding = NamedSharding(mesh, PartitionSpec(None, axis))
    replicated = NamedSharding(mesh, PartitionSpec())
    x, y = np.asarray(x), np.asarray(y, np.int32)
    if x_test is not None:
        x_test, y_test = gathered_test_set(np.asarray(x_test), np.asarray(y_test, np.int32),
                                            eval_batch_size, epoch_sharding)
    x1 = distributed.replicated(x[:1], replicated)
    takes_train = model_calling_convention(model, x1)
    return Setup(model, takes_train, x, y, x_test, y_test, n, n // batch_size, batch_size,
                 eval_batch_size, NamedSharding(mesh, PartitionSpec(axis)), replicated,
                 epoch_sharding, x1)


def gathered_test_set(x: np.ndarray, y: np.ndarray, batch: int, sharding: Any):
    """The test set as global batches (nb, batch, ...) split like the minibatches; the last
    batch is padded with copies of the last example, labelled -1."""
    n = x.shape[0]
    flat = np.arange(-(-n // batch) * batch).reshape(-1, batch)
    labels = np.append(y, np.int32(-1))
    return (distributed.gathered(x, np.minimum(flat, n - 1), sharding),
            distributed.gathered(labels, np.minimum(flat, n), sharding))
