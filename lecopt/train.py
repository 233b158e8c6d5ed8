"""Training Flax models with lecopt optimizers: ``fit``, ``evaluate``, ``sweep``.

``fit(model, optimizer, data, epochs=...)`` trains any ``flax.linen`` classifier, with or
without a ``batch_stats`` collection (BatchNorm), on data held on the device. Each epoch is
shuffled with a JAX key and runs as one compiled loop over its minibatches: no Python loop
per step, no retracing between epochs or between ``fit`` calls.

How it is built, and why:

* **The optimizer is an argument of the compiled program.** A lecopt optimizer is a pytree of
  its hyperparameters (:mod:`lecopt.transforms`), so the program is traced once per model,
  batch size and optimizer *structure*; a second ``fit`` with another learning rate, momentum
  or schedule parameter runs the same executable. (An optax closure such as ``optax.adam(1e-3)``
  also works, but its numbers are baked into the closure: each new one compiles.)
* **One loop body for every step.** The epoch is a ``lax.while_loop`` (a scan whose start and
  stop are traced values) that gathers minibatch ``i`` from the device-resident data, takes a
  gradient step and writes the step's loss into a buffer. Running steps ``[0, S)`` at once or
  in pieces (``[0, N), [N, 2N), ...``, as checkpointing does) executes the very same compiled
  body on the same values, so a run resumed from a checkpoint is bit-for-bit equal to an
  uninterrupted one by construction. (Scans of different static lengths are different
  programs, and XLA may fuse a length-1 or unrolled loop differently.)
* **Data order.** Epoch ``e`` uses ``jax.random.permutation(fold_in(data_key, e), N)``; the
  last incomplete minibatch is dropped (every step sees exactly ``batch_size`` examples, so
  BatchNorm statistics and the step size do not depend on the position in the epoch), so an
  epoch has ``S = N // batch_size`` steps. :func:`batch_order` returns this order.
* **Non-finite values.** Each step computes ``finite = isfinite(loss) & all(isfinite(grads))``
  and keeps the old state where it is false (a ``lax.cond`` between the new and the old
  state). ``"skip"`` counts such steps and goes on. ``"stop"`` freezes the state from the
  first such step to the end of the running chunk, and :func:`fit` then raises
  :class:`NonFiniteError` naming the epoch and step, with the last good state attached.
* **History.** The per-step training loss and error are measured on each minibatch in
  training mode before its update (no extra pass); an epoch's training loss/error are their
  means (over the steps not skipped). Test loss and error are evaluated after each epoch in
  prediction mode (``train=False``), in batches of ``eval_batch_size``, in one compiled scan.
* **Checkpoints** (``checkpoint_dir=``): orbax-checkpoint, every ``checkpoint_every`` global
  steps (default: every epoch) and at the end, keeping the last ``max_to_keep``. Orbax writes
  into a temporary directory and renames it when complete (atomic on a local file system), so
  a write interrupted at any moment leaves the previous checkpoint intact; unfinished
  temporary directories are removed when the next run opens the directory. A checkpoint holds
  the state, the position (epoch and step in it), the data key, the history so far and a
  fingerprint of the model, the optimizer (structure and hyperparameter values), the batch
  size, the seed and the data shape; a checkpoint of another run raises
  :class:`CheckpointMismatchError`.
* **Several devices** (``mesh=``): the data and the state are replicated over the mesh, and
  every minibatch is constrained to be split along the mesh's first axis
  (``NamedSharding(mesh, PartitionSpec(axis))``). XLA's SPMD partitioner then computes each
  device's share and inserts the all-reduces of the gradient and of BatchNorm's batch
  statistics itself, so the statistics stay global (no ``axis_name`` needed) and the result
  equals one device's up to float32 rounding (sums are reduced in another order).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import json
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "TrainState",
    "History",
    "Evaluation",
    "SweepRun",
    "NonFiniteError",
    "CheckpointMismatchError",
    "fit",
    "evaluate",
    "sweep",
    "batch_order",
    "choose_strategy",
    "flops_per_step",
    "plot_history",
]

_MODES = ("stop", "skip")
_STRATEGIES = ("auto", "vmap", "loop")
_COLLECTIONS = ("params", "batch_stats")

# "auto" in sweep: on a CPU, vmap when one setting's training step costs less than this many
# FLOPs (6 x batch x parameters). Measured on the 2-core bench CPU, 8 settings of MLPs
# 784-J-J-10 at batch 128, time of vmap / time of loop: J=32 (2.0e7 FLOP/step) 0.70, J=64
# (4.2e7) 0.83, J=96 (6.6e7) 0.97, J=128 (9.1e7) 0.98, J=512 (5.1e8) 1.21. Small models leave
# the cores idle between their small matmuls and vmap fills them; a large one already keeps
# both cores busy, and vmap only turns its matmuls into batched ones that XLA:CPU runs less
# efficiently. GPUs and TPUs are left idle by one small model much longer: there vmap is
# always chosen.
VMAP_FLOPS_THRESHOLD_CPU = 1e8


# --------------------------------------------------------------------------------------------
# Records.


@flax.struct.dataclass
class TrainState:
    """The training state: a pytree (a ``flax.struct`` dataclass), like Flax's ``TrainState``.

    The model's ``apply`` and the optimizer are not fields: both are arguments of the compiled
    epoch (the model static, the optimizer as data), so a state can be saved, restored and
    continued with another optimizer of the same structure.

    Attributes:
      step: number of updates applied (int32; skipped non-finite steps do not count).
      params: the ``params`` collection.
      batch_stats: the ``batch_stats`` collection (BatchNorm running averages); ``{}`` for a
        model without one.
      opt_state: the optimizer's state.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any

    @property
    def variables(self) -> dict[str, Any]:
        """``{"params": ..., "batch_stats": ...}`` (no ``batch_stats`` when it is empty), ready
        for ``model.apply(state.variables, x, train=False)`` and :func:`evaluate`."""
        if jax.tree.leaves(self.batch_stats) or self.batch_stats:
            return {"params": self.params, "batch_stats": self.batch_stats}
        return {"params": self.params}


@dataclasses.dataclass
class History:
    """What :func:`fit` measured. Plain lists of Python numbers: ``to_dict`` is JSON-ready.

    Attributes:
      step_loss: training loss of every step (mean cross-entropy of its minibatch, in nats,
        measured before the step's update); NaN/inf where the step was non-finite.
      step_error: training error of every step (fraction of the minibatch misclassified).
      train_loss, train_error: per epoch, the means of ``step_loss``/``step_error`` over the
        epoch's steps that were not skipped (NaN if all were).
      test_loss, test_error: per epoch, on the test set in prediction mode after the epoch
        (empty lists when no test data is given).
      wall_time: per epoch, seconds since training started (summed over resumed runs; the
        time between the last checkpoint and an interruption is lost).
      skipped: per epoch, number of non-finite steps skipped (``on_nonfinite="skip"``).
      steps_per_epoch: ``S = N_train // batch_size``.
      batch_size: the minibatch size.
      stopped: ``None``, or ``{"epoch": e, "step": i, "global_step": e*S + i}`` of the
        non-finite step that stopped training (``on_nonfinite="stop"``).
    """

    step_loss: list[float] = dataclasses.field(default_factory=list)
    step_error: list[float] = dataclasses.field(default_factory=list)
    train_loss: list[float] = dataclasses.field(default_factory=list)
    train_error: list[float] = dataclasses.field(default_factory=list)
    test_loss: list[float] = dataclasses.field(default_factory=list)
    test_error: list[float] = dataclasses.field(default_factory=list)
    wall_time: list[float] = dataclasses.field(default_factory=list)
    skipped: list[int] = dataclasses.field(default_factory=list)
    steps_per_epoch: int = 0
    batch_size: int = 0
    stopped: dict[str, int] | None = None

    @property
    def epochs(self) -> int:
        """Number of completed epochs."""
        return len(self.train_loss)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (lists of floats and ints) for ``json.dump`` (NaN is written as
        ``NaN``, which Python's ``json`` reads back)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> History:
        """The inverse of :meth:`to_dict`; unknown keys raise ``TypeError``."""
        return cls(**{k: (list(v) if isinstance(v, list) else v) for k, v in d.items()})


class Evaluation(NamedTuple):
    """Result of :func:`evaluate`: mean cross-entropy ``loss`` (nats) and ``error`` (fraction
    misclassified), as Python floats."""

    loss: float
    error: float


@dataclasses.dataclass
class SweepRun:
    """One run of :func:`sweep`: its ``setting`` (the ``make_optimizer`` keyword arguments,
    as given in the grid), ``seed``, final ``state`` and ``history``."""

    setting: dict[str, Any]
    seed: int
    state: TrainState
    history: History

    def to_dict(self) -> dict[str, Any]:
        """``{"setting", "seed", "history"}`` as plain JSON-ready values (no arrays)."""
        return {"setting": to_jsonable(self.setting), "seed": self.seed,
                "history": self.history.to_dict()}


class NonFiniteError(RuntimeError):
    """Training met a non-finite loss or gradient with ``on_nonfinite="stop"``.

    Attributes:
      epoch: the epoch (0-based) of the bad step.
      step: the step within that epoch (0-based).
      global_step: ``epoch * steps_per_epoch + step``.
      state: the last good :class:`TrainState` (before the bad step's update).
      history: the :class:`History` up to and including the bad step (``stopped`` set).
    """

    def __init__(self, message: str, *, epoch: int, step: int, global_step: int,
                 state: TrainState, history: History):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.global_step = global_step
        self.state = state
        self.history = history


class CheckpointMismatchError(ValueError):
    """The checkpoint directory holds a checkpoint of a different model, optimizer or run."""


# --------------------------------------------------------------------------------------------
# Small helpers.


def to_jsonable(x: Any) -> Any:
    """``x`` as plain JSON types (arrays become lists, unknown objects a stable repr)."""
    if isinstance(x, Mapping):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_jsonable(v) for v in x]
    if isinstance(x, bool | int | float | str) or x is None:
        return x
    if isinstance(x, np.generic | np.ndarray | jax.Array):
        a = np.asarray(x)
        return a.item() if a.ndim == 0 else a.tolist()
    return _stable_repr(x)


def _stable_repr(x: Any) -> str:
    # Reprs of functions carry their address, which changes from process to process.
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(x))


def _check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name}={value!r} must be an int >= {minimum}")
    if value < minimum:
        raise ValueError(f"{name}={value!r} is out of range; {name} must be an int >= {minimum}")
    return int(value)


def _unpack_data(data: Any) -> tuple[Any, Any, Any, Any]:
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


def _check_xy(which: str, x: Any, y: Any) -> None:
    if x is None or y is None:
        raise ValueError(f"data: {which} needs both x_{which} and y_{which}")
    if not hasattr(x, "shape") or not hasattr(y, "shape"):
        raise TypeError(f"data: x_{which} and y_{which} must be arrays")
    if len(x.shape) < 1 or y.shape != x.shape[:1]:
        raise ValueError(f"data: y_{which} must have shape (N,) with N = x_{which}.shape[0]; "
                         f"got x_{which} {tuple(x.shape)} and y_{which} {tuple(y.shape)}")
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"data: y_{which} must hold integer class labels; got {y.dtype}")


class _ByValue:
    """A hashable key for a value that may not be hashable (a module with list fields).

    Equal values give equal keys; an unhashable value hashes by its repr (collisions are
    harmless: equality decides), so ``MLP([512, 512])`` built twice reuses its programs.
    """

    __slots__ = ("value", "_hash")

    def __init__(self, value: Any):
        self.value = value
        try:
            self._hash = hash(value)
        except Exception:  # noqa: BLE001 - Flax raises its own error for unhashable fields
            self._hash = hash((type(value).__qualname__, repr(value)))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _ByValue) or type(other.value) is not type(self.value):
            return False
        try:
            return bool(self.value == other.value)
        except Exception:  # noqa: BLE001 - e.g. array-valued fields: treat as different
            return self.value is other.value


def _accepts_train(model: Any) -> bool:
    try:
        return "train" in inspect.signature(model.__call__).parameters
    except (TypeError, ValueError):
        return False


def _is_dynamic(leaf: Any) -> bool:
    # Numbers and arrays are hyperparameters (traced); anything else (an optax closure's
    # function, a string) is structure and stays static.
    return isinstance(leaf, jax.Array | np.ndarray | np.generic | float | int | complex) and \
        not isinstance(leaf, bool)


class _TxSpec(NamedTuple):
    treedef: Any
    static: tuple  # per leaf: the leaf itself if static, else None
    dynamic: tuple  # per leaf: whether it is dynamic

    def rebuild(self, leaves: Sequence[Any]) -> Any:
        it = iter(leaves)
        full = [next(it) if d else s for s, d in zip(self.static, self.dynamic)]
        return jax.tree.unflatten(self.treedef, full)


def _split_tx(tx: Any) -> tuple[_TxSpec, list[Any]]:
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax.GradientTransformation (e.g. "
                        f"lecopt.sgd(0.1)); got {type(tx).__name__}")
    leaves, treedef = jax.tree.flatten(tx)
    dyn = tuple(_is_dynamic(x) for x in leaves)
    static = tuple(None if d else x for x, d in zip(leaves, dyn))
    spec = _TxSpec(treedef, static, dyn)
    try:
        hash(spec)
    except TypeError as e:
        raise TypeError(f"optimizer: its pytree has an unhashable non-numeric leaf ({e})") from None
    return spec, [x for x, d in zip(leaves, dyn) if d]


def _hyperparameters(leaves: Sequence[Any]) -> list[Any]:
    return [to_jsonable(np.asarray(x)) for x in leaves]


def flops_per_step(model: Any, x_example: Any, batch_size: int) -> float:
    """Estimated FLOPs of one training step: ``6 * batch_size * (number of parameters)``.

    Forward, a dense layer costs ``2 * in * out`` FLOPs per sample; the backward pass twice
    that. So the estimate is exact (up to biases and elementwise work) for MLPs and a lower
    bound for models that reuse weights (convolutions).

    Args:
      model: the Flax module.
      x_example: one or more inputs (only the shape of ``x_example[:1]`` is used).
      batch_size: the minibatch size.

    Returns:
      The FLOPs per step as a float.
    """
    x1 = jnp.asarray(x_example[:1])
    return 6.0 * batch_size * _num_params(_ByValue(model), tuple(x1.shape[1:]), x1.dtype)


@functools.lru_cache(maxsize=64)
def _num_params(key: _ByValue, example_shape: tuple, dtype: Any) -> int:
    model = key.value
    shapes = jax.eval_shape(functools.partial(_init_variables, model, _accepts_train(model)),
                            jax.random.PRNGKey(0),
                            jax.ShapeDtypeStruct((1,) + example_shape, dtype))
    return sum(math.prod(s.shape) for s in jax.tree.leaves(shapes["params"]))


# --------------------------------------------------------------------------------------------
# The compiled programs.


def _init_variables(model: Any, accepts_train: bool, key: jax.Array, x1: jax.Array) -> Any:
    kw = {"train": False} if accepts_train else {}
    return model.init(key, x1, **kw)


def _ce(logits: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)


class _Static(NamedTuple):
    """Everything that selects a program (hashable)."""

    key: _ByValue  # of the model
    accepts_train: bool
    has_batch_stats: bool
    mode: str
    batch_sharding: Any  # NamedSharding or None
    tx: _TxSpec

    @property
    def model(self) -> Any:
        return self.key.value


def _init_state_impl(st: _Static, key: jax.Array, x1: jax.Array, tx_leaves: list) -> TrainState:
    variables = _init_variables(st.model, st.accepts_train, key, x1)
    params = variables["params"]
    tx = st.tx.rebuild(tx_leaves)
    return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))


def _train_steps_impl(st: _Static, state: TrainState, tx_leaves: list, x: jax.Array,
                      y: jax.Array, order: jax.Array, start: jax.Array, stop: jax.Array,
                      bad: jax.Array, losses: jax.Array, errors: jax.Array):
    """Steps ``start <= i < stop`` of the epoch whose minibatch indices are ``order`` (S, B).

    Returns (state, losses, errors, skipped, bad): the buffers with entries ``[start, stop)``
    written, the number of non-finite steps, and ``bad`` = the first non-finite step ("stop"
    mode; -1 if none). In "stop" mode the state freezes from the first non-finite step on,
    and a run that enters with ``bad >= 0`` keeps its state.
    """
    tx = st.tx.rebuild(tx_leaves)
    kw = {"train": True} if st.accepts_train else {}

    def loss_fn(params, batch_stats, xb, yb):
        if st.has_batch_stats:
            logits, upd = st.model.apply({"params": params, "batch_stats": batch_stats}, xb,
                                         mutable=["batch_stats"], **kw)
            batch_stats = upd["batch_stats"]
        else:
            logits = st.model.apply({"params": params}, xb, **kw)
        return _ce(logits, yb).mean(), (logits, batch_stats)

    def cond(carry):
        # Only the (unbatched) step index: under vmap a per-run predicate would make every
        # iteration select between old and new carries of all runs.
        return carry[0] < stop

    def body(carry):
        i, state, losses, errors, skipped, bad = carry
        idx = order[i]
        xb = jnp.take(x, idx, axis=0)
        yb = jnp.take(y, idx, axis=0)
        if st.batch_sharding is not None:
            xb = lax.with_sharding_constraint(xb, st.batch_sharding)
            yb = lax.with_sharding_constraint(yb, st.batch_sharding)
        (loss, (logits, new_bs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, xb, yb)
        updates, new_opt = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss)
        for g in jax.tree.leaves(grads):
            finite &= jnp.all(jnp.isfinite(g))
        # "stop": a run that met a bad step stays frozen at its last good state until the
        # chunk ends (the rest of the chunk is wasted work, but only on the way to an error).
        ok = finite & (bad < 0) if st.mode == "stop" else finite
        new = TrainState(step=state.step + 1, params=new_params, batch_stats=new_bs,
                         opt_state=new_opt)
        # A cond forwards one of the two states (measured ~4% faster per epoch than an
        # elementwise select over them on CPU); under vmap it becomes that select anyway.
        state = lax.cond(ok, lambda a, b: a, lambda a, b: b, new, state)
        err = jnp.mean((jnp.argmax(logits, -1) != yb).astype(jnp.float32))
        losses = losses.at[i].set(loss.astype(jnp.float32))
        errors = errors.at[i].set(err)
        skipped = skipped + (~finite).astype(jnp.int32)
        if st.mode == "stop":
            bad = jnp.where(finite | (bad >= 0), bad, i)
        return i + 1, state, losses, errors, skipped, bad

    init = (start, state, losses, errors, jnp.zeros([], jnp.int32), bad)
    _, state, losses, errors, skipped, bad = lax.while_loop(cond, body, init)
    return state, losses, errors, skipped, bad


def _eval_impl(model: Any, accepts_train: bool, batch_sharding: Any, batch: int,
               variables: Any, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy and error over all of (x, y), in padded batches of ``batch``."""
    n = x.shape[0]
    nb = -(-n // batch)
    flat = jnp.arange(nb * batch)
    idx = jnp.minimum(flat, n - 1).reshape(nb, batch)
    mask = (flat < n).reshape(nb, batch)
    kw = {"train": False} if accepts_train else {}

    def body(carry, inp):
        i, m = inp
        xb = jnp.take(x, i, axis=0)
        yb = jnp.take(y, i, axis=0)
        if batch_sharding is not None:
            xb = lax.with_sharding_constraint(xb, batch_sharding)
            yb = lax.with_sharding_constraint(yb, batch_sharding)
        logits = model.apply(variables, xb, **kw)
        loss = jnp.where(m, _ce(logits, yb), 0.0)
        err = jnp.where(m, (jnp.argmax(logits, -1) != yb).astype(jnp.float32), 0.0)
        return (carry[0] + loss.sum(), carry[1] + err.sum()), None

    zero = jnp.zeros([], jnp.float32)
    (ls, es), _ = lax.scan(body, (zero, zero), (idx, mask))
    return ls / n, es / n


@functools.lru_cache(maxsize=64)
def _programs(st: _Static) -> dict[str, Callable]:
    """The jitted programs of one model/optimizer structure (cached: no retracing)."""
    init = functools.partial(_init_state_impl, st)
    train = functools.partial(_train_steps_impl, st)
    return {
        "init": jax.jit(init),
        "train": jax.jit(train),
        "init_v": jax.jit(jax.vmap(init, in_axes=(0, None, 0))),
        # Runs of a sweep share the data; with one seed they share the order too.
        "train_v_shared": jax.jit(jax.vmap(
            train, in_axes=(0, 0, None, None, None, None, None, 0, 0, 0))),
        "train_v": jax.jit(jax.vmap(
            train, in_axes=(0, 0, None, None, 0, None, None, 0, 0, 0))),
    }


@functools.lru_cache(maxsize=64)
def _eval_programs(key: _ByValue, accepts_train: bool, batch_sharding: Any, batch: int):
    f = functools.partial(_eval_impl, key.value, accepts_train, batch_sharding, batch)
    return jax.jit(f), jax.jit(jax.vmap(f, in_axes=(0, None, None)))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _order(data_key: jax.Array, epoch: jax.Array, n: int, steps: int, batch: int) -> jax.Array:
    perm = jax.random.permutation(jax.random.fold_in(data_key, epoch), n)
    return perm[: steps * batch].reshape(steps, batch).astype(jnp.int32)


def _keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """(init_key, data_key) of a seed: the documented derivation of every random choice."""
    init_key, data_key = jax.random.split(jax.random.PRNGKey(seed))
    return init_key, data_key


def batch_order(seed: int, epoch: int, num_examples: int, batch_size: int) -> np.ndarray:
    """The minibatch indices ``fit(..., seed=seed)`` uses in ``epoch``: shape (S, batch_size).

    Row ``i`` holds the training examples of step ``i``;
    ``S = num_examples // batch_size`` (the last incomplete minibatch is dropped). Computed as
    ``jax.random.permutation(fold_in(data_key, epoch), num_examples)`` with
    ``_, data_key = jax.random.split(jax.random.PRNGKey(seed))``.

    Args:
      seed: the ``seed`` given to :func:`fit`.
      epoch: 0-based epoch.
      num_examples: the number of training examples ``N``.
      batch_size: the minibatch size.

    Returns:
      An int32 NumPy array of shape (N // batch_size, batch_size).
    """
    _check_int("num_examples", num_examples)
    _check_int("batch_size", batch_size)
    steps = num_examples // batch_size
    if steps < 1:
        raise ValueError(f"batch_size={batch_size} exceeds num_examples={num_examples}")
    return np.asarray(_order(_keys(seed)[1], epoch, num_examples, steps, batch_size))


# --------------------------------------------------------------------------------------------
# Setup shared by fit and sweep.


@dataclasses.dataclass
class _Setup:
    model: Any
    accepts_train: bool
    has_batch_stats: bool
    x: jax.Array
    y: jax.Array
    x_test: jax.Array | None
    y_test: jax.Array | None
    n: int
    steps: int
    batch_size: int
    eval_batch: int
    batch_sharding: Any
    replicated: Any

    def static(self, mode: str, tx_spec: _TxSpec) -> _Static:
        return _Static(_ByValue(self.model), self.accepts_train, self.has_batch_stats, mode,
                       self.batch_sharding, tx_spec)

    def evaluator(self) -> tuple[Callable, Callable]:
        return _eval_programs(_ByValue(self.model), self.accepts_train, self.batch_sharding,
                              self.eval_batch)


def _prepare(model: Any, data: Any, batch_size: int, eval_batch_size: int,
             mesh: Mesh | None) -> _Setup:
    if not isinstance(model, flax.linen.Module):
        raise TypeError(f"model must be a flax.linen.Module; got {type(model).__name__}")
    batch_size = _check_int("batch_size", batch_size)
    eval_batch_size = _check_int("eval_batch_size", eval_batch_size)
    x, y, x_test, y_test = _unpack_data(data)
    _check_xy("train", x, y)
    if (x_test is None) != (y_test is None):
        raise ValueError("data: give both x_test and y_test, or neither")
    if x_test is not None:
        _check_xy("test", x_test, y_test)
    n = int(x.shape[0])
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} training examples")
    batch_sharding = replicated = None
    if mesh is not None:
        if not isinstance(mesh, Mesh):
            raise TypeError(f"mesh must be a jax.sharding.Mesh; got {type(mesh).__name__}")
        axis = mesh.axis_names[0]
        ndev = mesh.shape[axis]
        if batch_size % ndev:
            raise ValueError(f"batch_size={batch_size} must be divisible by the {ndev} devices "
                             f"of the mesh axis {axis!r}")
        eval_batch_size = -(-eval_batch_size // ndev) * ndev
        batch_sharding = NamedSharding(mesh, PartitionSpec(axis))
        replicated = NamedSharding(mesh, PartitionSpec())
    # Each array goes to the device once per call (a no-op for arrays already there).
    put = functools.partial(jax.device_put, device=replicated)
    x, y = put(jnp.asarray(x)), put(jnp.asarray(y, jnp.int32))
    if x_test is not None:
        x_test, y_test = put(jnp.asarray(x_test)), put(jnp.asarray(y_test, jnp.int32))
    if x_test is not None:
        ndev = 1 if mesh is None else mesh.shape[mesh.axis_names[0]]
        eval_batch_size = min(eval_batch_size, -(-int(x_test.shape[0]) // ndev) * ndev)
    accepts_train, has_bs = _model_info(_ByValue(model), tuple(x.shape[1:]), x.dtype)
    return _Setup(model, accepts_train, has_bs, x, y, x_test, y_test, n, n // batch_size,
                  batch_size, eval_batch_size, batch_sharding, replicated)


@functools.lru_cache(maxsize=64)
def _model_info(key: _ByValue, example_shape: tuple, dtype: Any) -> tuple[bool, bool]:
    """(takes ``train=``, has a ``batch_stats`` collection), from tracing ``model.init``."""
    model = key.value
    accepts_train = _accepts_train(model)
    shapes = jax.eval_shape(functools.partial(_init_variables, model, accepts_train),
                            jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1,) + example_shape,
                                                                        dtype))
    unknown = sorted(set(shapes) - set(_COLLECTIONS))
    if unknown:
        raise ValueError(f"model: fit trains the collections {_COLLECTIONS}; the model also "
                         f"has {unknown}")
    return accepts_train, bool(jax.tree.leaves(shapes.get("batch_stats", {})))


def _check_mode(on_nonfinite: str) -> None:
    if on_nonfinite not in _MODES:
        raise ValueError(f"on_nonfinite={on_nonfinite!r}; must be one of {_MODES}")


def _epoch_stats(losses: np.ndarray, errors: np.ndarray) -> tuple[float, float]:
    ok = np.isfinite(losses)
    if not ok.any():
        return math.nan, math.nan
    return float(np.mean(losses[ok], dtype=np.float64)), \
        float(np.mean(errors[ok], dtype=np.float64))


def _progress_bar(progress: bool, total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="epoch", disable=not progress,
                dynamic_ncols=True, leave=True)


def _show(bar: Any, history: History) -> None:
    post = {"loss": f"{history.train_loss[-1]:.4f}"}
    if history.test_error:
        post["test_err"] = f"{history.test_error[-1]:.4f}"
    bar.set_postfix(post, refresh=False)
    bar.update(1)


# --------------------------------------------------------------------------------------------
# Checkpoints.


def _fingerprint(setup: _Setup, state: TrainState, tx_spec: _TxSpec, tx_leaves: list,
                 seed: int) -> dict[str, Any]:
    leaves, treedef = jax.tree.flatten(state)
    return {
        "model": _stable_repr(setup.model),
        "state_structure": _stable_repr(treedef),
        "state_shapes": [f"{x.dtype}{list(x.shape)}" for x in leaves],
        "optimizer_structure": _stable_repr(tx_spec.treedef) + _stable_repr(
            [s for s, d in zip(tx_spec.static, tx_spec.dynamic) if not d]),
        "optimizer_hyperparameters": _hyperparameters(tx_leaves),
        "batch_size": setup.batch_size,
        "seed": seed,
        "train_data": f"{setup.x.dtype}{list(setup.x.shape)}",
    }


class _Checkpointer:
    """orbax ``CheckpointManager`` around the state (leaves) and a JSON record."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, position: int, state: TrainState, meta: dict[str, Any]) -> None:
        ocp = self._ocp
        self.manager.save(position, args=ocp.args.Composite(
            state=ocp.args.StandardSave(jax.tree.leaves(state)),
            meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, template: TrainState, sharding: Any, fingerprint: dict[str, Any]):
        """(state, meta) of the newest readable checkpoint, or None if there is none."""
        ocp = self._ocp
        leaves, treedef = jax.tree.flatten(template)
        abstract = [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding) for x in leaves]
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                meta = self.manager.restore(step, args=ocp.args.Composite(
                    meta=ocp.args.JsonRestore()))["meta"]
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: try an older one
                warnings.warn(f"checkpoint {step} in {self.directory} is unreadable ({e}); "
                              "trying an older one", stacklevel=3)
                continue
            _compare_fingerprints(self.directory, step, meta.get("fingerprint", {}), fingerprint)
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract)))["state"]
            except Exception as e:  # noqa: BLE001
                warnings.warn(f"checkpoint {step} in {self.directory} is unreadable ({e}); "
                              "trying an older one", stacklevel=3)
                continue
            return jax.tree.unflatten(treedef, list(restored)), meta
        return None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _compare_fingerprints(directory: str, step: int, saved: Mapping[str, Any],
                          now: Mapping[str, Any]) -> None:
    diffs = [k for k in now if saved.get(k) != to_jsonable(now[k])]
    if diffs:
        details = "; ".join(f"{k}: checkpoint has {saved.get(k)!r}, this run has "
                            f"{to_jsonable(now[k])!r}" for k in diffs)
        raise CheckpointMismatchError(
            f"checkpoint_dir={directory!r} holds a checkpoint (step {step}) of a different run "
            f"({', '.join(diffs)} differ): {details}. Use another checkpoint_dir, or delete it "
            "to start afresh.")


# --------------------------------------------------------------------------------------------
# fit.


def fit(
    model: flax.linen.Module,
    optimizer: optax.GradientTransformation,
    data: Any,
    *,
    epochs: int,
    batch_size: int = 128,
    seed: int = 0,
    mesh: Mesh | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    max_to_keep: int = 3,
    progress: bool = True,
    on_nonfinite: str = "stop",
    eval_batch_size: int = 1024,
) -> tuple[TrainState, History]:
    """Trains a Flax classifier by minibatch gradient descent with ``optimizer``.

    Minimises the mean softmax cross-entropy of ``model.apply(variables, x, train=True)``
    (``train`` is passed only if the module's ``__call__`` takes it; a ``batch_stats``
    collection is updated as Flax does with ``mutable=["batch_stats"]``). Parameters are
    initialised by ``model.init(init_key, x_train[:1], train=False)``. See the module
    docstring for the data order, the history and the checkpoints.

    Args:
      model: a ``flax.linen.Module`` mapping inputs (N, ...) to logits (N, classes), with
        collections ``params`` and optionally ``batch_stats``.
      optimizer: an optax ``GradientTransformation``; a lecopt optimizer (e.g.
        ``lecopt.sgd(0.05, momentum=0.9)``) runs through the compiled program already built
        for any other hyperparameter values of the same structure.
      data: a :class:`lecopt.data.Dataset` (or anything with ``x_train``, ``y_train``,
        ``x_test``, ``y_test``), a mapping with those keys, or a tuple ``(x_train, y_train[,
        x_test, y_test])``. Labels are integers. Test data is optional.
      epochs: number of passes over the training data (>= 1).
      batch_size: examples per step; ``N // batch_size`` steps per epoch (the last incomplete
        minibatch is dropped).
      seed: derives the initialisation and the data order (see :func:`batch_order`).
      mesh: a ``jax.sharding.Mesh``; every minibatch is split along its first axis, the
        parameters are replicated. ``batch_size`` must be divisible by that axis' size.
      checkpoint_dir: save checkpoints here and resume from the newest one found.
      checkpoint_every: save every this many steps (counted from the start of training) and at
        the end; default: at the end of every epoch.
      max_to_keep: number of checkpoints kept.
      progress: show a tqdm bar over epochs with the latest training loss and test error.
      on_nonfinite: ``"stop"``: raise :class:`NonFiniteError` at the first step with a
        non-finite loss or gradient, with the last good state; ``"skip"``: do not apply such
        a step's update, count it in ``history.skipped`` and go on.
      eval_batch_size: batch size of the test evaluation.

    Returns:
      ``(state, history)``: the final :class:`TrainState` and the :class:`History`.

    Raises:
      NonFiniteError: ``on_nonfinite="stop"`` met a non-finite loss or gradient.
      CheckpointMismatchError: ``checkpoint_dir`` holds a checkpoint of another model,
        optimizer, batch size, seed or data shape.

    Example:
      >>> from lecopt import data, nn, optimizers, train
      >>> ds = data.load("mnist-5k")
      >>> state, history = train.fit(nn.MLP((512, 512)), optimizers.sgd(0.05, momentum=0.9),
      ...                            ds, epochs=5)
      >>> history.test_error[-1]
    """
    epochs = _check_int("epochs", epochs)
    seed = _check_int("seed", seed, minimum=0)
    max_to_keep = _check_int("max_to_keep", max_to_keep)
    _check_mode(on_nonfinite)
    setup = _prepare(model, data, batch_size, eval_batch_size, mesh)
    S = setup.steps
    every = S if checkpoint_every is None else _check_int("checkpoint_every", checkpoint_every)
    tx_spec, tx_leaves = _split_tx(optimizer)
    progs = _programs(setup.static(on_nonfinite, tx_spec))
    evaluate_prog, _ = setup.evaluator()
    init_key, data_key = _keys(seed)
    if setup.replicated is not None:
        init_key, data_key = jax.device_put((init_key, data_key), setup.replicated)
    state = None
    history = History(steps_per_epoch=S, batch_size=setup.batch_size)
    epoch, done = 0, 0  # position: epoch, and steps done in it
    skipped_now = 0  # skipped steps of the current (partial) epoch
    elapsed0 = 0.0
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = _Checkpointer(checkpoint_dir, max_to_keep)
        # The state's shapes, without computing it: a resumed run never initialises.
        template = jax.eval_shape(progs["init"], init_key, setup.x[:1], tx_leaves)
        fingerprint = _fingerprint(setup, template, tx_spec, tx_leaves, seed)
        sharding = setup.replicated or jax.sharding.SingleDeviceSharding(jax.devices()[0])
        found = ckpt.restore(template, sharding, fingerprint)
        if found is not None:
            state, meta = found
            epoch, done = int(meta["epoch"]), int(meta["step_in_epoch"])
            skipped_now = int(meta["epoch_skipped"])
            history = History.from_dict(meta["history"])
            elapsed0 = float(meta["elapsed"])
            if epoch * S + done > epochs * S:
                ckpt.close()
                raise ValueError(f"checkpoint_dir={os.fspath(checkpoint_dir)!r} holds a "
                                 f"checkpoint at epoch {epoch}, step {done}: beyond "
                                 f"epochs={epochs}")

    if state is None:
        state = progs["init"](init_key, setup.x[:1], tx_leaves)
    t0 = time.perf_counter()
    losses = jnp.zeros([S], jnp.float32)
    errors = jnp.zeros([S], jnp.float32)
    no_bad = jnp.asarray(-1, jnp.int32)
    bar = _progress_bar(progress, epochs, epoch, "fit")
    try:
        while epoch < epochs:
            order = _order(data_key, epoch, setup.n, S, setup.batch_size)
            while done < S:
                # The next checkpoint position (global step multiple of `every`) or epoch end.
                stop = S
                if ckpt is not None:
                    nxt = (epoch * S + done) // every * every + every
                    stop = min(S, nxt - epoch * S)
                state, losses, errors, skipped, bad = progs["train"](
                    state, tx_leaves, setup.x, setup.y, order, done, stop, no_bad,
                    losses, errors)
                bad = int(bad)
                start, done = done, (stop if bad < 0 else bad + 1)
                skipped_now += int(skipped)
                host_l, host_e = np.asarray(losses), np.asarray(errors)
                history.step_loss += host_l[start:done].astype(float).tolist()
                history.step_error += host_e[start:done].astype(float).tolist()
                if bad >= 0:
                    history.stopped = {"epoch": epoch, "step": bad, "global_step": epoch * S + bad}
                    raise NonFiniteError(
                        f"non-finite loss or gradient at epoch {epoch}, step {bad} (global step "
                        f"{epoch * S + bad}, loss {host_l[bad]!r}); training stopped. The last "
                        "good state is the error's .state, the history its .history. "
                        "on_nonfinite='skip' would skip such steps.",
                        epoch=epoch, step=bad, global_step=epoch * S + bad, state=state,
                        history=history)
                if done < S and ckpt is not None:
                    elapsed = elapsed0 + time.perf_counter() - t0
                    ckpt.save(epoch * S + done, state, _meta(
                        fingerprint, epoch, done, skipped_now, history, elapsed, data_key))
            ep_l = np.asarray(history.step_loss[-S:])
            ep_e = np.asarray(history.step_error[-S:])
            tl, te = _epoch_stats(ep_l, ep_e)
            history.train_loss.append(tl)
            history.train_error.append(te)
            history.skipped.append(skipped_now)
            if setup.x_test is not None:
                vl, ve = evaluate_prog(state.variables, setup.x_test, setup.y_test)
                history.test_loss.append(float(vl))
                history.test_error.append(float(ve))
            epoch, done, skipped_now = epoch + 1, 0, 0
            history.wall_time.append(elapsed0 + time.perf_counter() - t0)
            if ckpt is not None and (epoch * S % every == 0 or epoch == epochs):
                ckpt.save(epoch * S, state, _meta(fingerprint, epoch, 0, 0, history,
                                                  history.wall_time[-1], data_key))
            _show(bar, history)
    finally:
        bar.close()
        if ckpt is not None:
            ckpt.close()
    return state, history


def _meta(fingerprint: dict, epoch: int, done: int, skipped: int, history: History,
          elapsed: float, data_key: jax.Array) -> dict[str, Any]:
    return {
        "fingerprint": to_jsonable(fingerprint),
        "epoch": epoch,
        "step_in_epoch": done,
        "epoch_skipped": skipped,
        "data_key": np.asarray(data_key).tolist(),
        "elapsed": elapsed,
        "history": history.to_dict(),
    }


# --------------------------------------------------------------------------------------------
# evaluate.


def evaluate(model: flax.linen.Module, variables: Mapping[str, Any], x: Any, y: Any,
             batch_size: int = 1024) -> Evaluation:
    """Mean softmax cross-entropy and classification error of ``model`` on ``(x, y)``.

    In prediction mode (``train=False`` when the module takes it; BatchNorm uses its running
    averages), over all examples (the last batch is padded and masked), in one compiled scan.

    Args:
      model: the Flax module.
      variables: ``{"params": ..., ["batch_stats": ...]}`` (e.g. ``state.variables``).
      x: inputs (N, ...).
      y: integer labels (N,).
      batch_size: examples per forward pass.

    Returns:
      :class:`Evaluation` ``(loss, error)``: loss in nats, error as a fraction in [0, 1].

    Example:
      >>> loss, error = train.evaluate(model, state.variables, ds.x_test, ds.y_test)
    """
    if not isinstance(model, flax.linen.Module):
        raise TypeError(f"model must be a flax.linen.Module; got {type(model).__name__}")
    batch_size = _check_int("batch_size", batch_size)
    _check_xy("test", x, y)
    x, y = jnp.asarray(x), jnp.asarray(y, jnp.int32)
    prog, _ = _eval_programs(_ByValue(model), _accepts_train(model), None,
                             min(batch_size, x.shape[0]))
    loss, err = prog(dict(variables), x, y)
    return Evaluation(float(loss), float(err))


# --------------------------------------------------------------------------------------------
# sweep.


def _settings(grid: Mapping[str, Iterable] | Sequence[Mapping[str, Any]]) -> list[dict]:
    if isinstance(grid, Mapping):
        keys = list(grid)
        for k in keys:
            if isinstance(grid[k], str | bytes) or not isinstance(grid[k], Iterable):
                raise TypeError(f"grid[{k!r}] must be a list of values; got {grid[k]!r}")
        return [dict(zip(keys, vals)) for vals in itertools.product(*(list(grid[k])
                                                                      for k in keys))]
    if isinstance(grid, Sequence) and all(isinstance(s, Mapping) for s in grid):
        return [dict(s) for s in grid]
    raise TypeError("grid must be a dict {name: [values]} (all combinations) or a list of "
                    f"dicts (explicit settings); got {type(grid).__name__}")


def _as_traced_value(v: Any) -> Any:
    # Floats become float32 arrays, so that e.g. momentum=0.0 keeps the momentum part (a
    # literal Python 0 drops it) and every setting has one structure; ints, bools, strings and
    # callables stay as given (they may choose structure).
    if isinstance(v, float | np.floating):
        return jnp.asarray(v, jnp.float32)
    return v


def choose_strategy(model: flax.linen.Module, x_example: Any, batch_size: int,
                    backend: str | None = None) -> str:
    """The ``strategy="auto"`` rule of :func:`sweep`: ``"vmap"`` or ``"loop"``.

    ``"vmap"`` on a GPU/TPU; on a CPU, ``"vmap"`` when one setting's training step costs less
    than ``VMAP_FLOPS_THRESHOLD_CPU`` = 1e8 FLOPs (:func:`flops_per_step`, i.e. 6 x batch x
    parameters), else ``"loop"``: small models leave the machine idle between their small
    matmuls and gain from doing all settings at once; large ones already keep every core busy.
    On the bench CPU: 784-32-32-10 at batch 128 (2e7 FLOPs) -> vmap, 784-512-512-10
    (5.1e8) -> loop.

    Args:
      model: the Flax module.
      x_example: example inputs (the shape of one is used).
      batch_size: the minibatch size.
      backend: ``jax.default_backend()`` if None.

    Returns:
      ``"vmap"`` or ``"loop"``.
    """
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return "vmap"
    return "vmap" if flops_per_step(model, x_example, batch_size) < VMAP_FLOPS_THRESHOLD_CPU \
        else "loop"


@functools.partial(jax.jit, static_argnums=1)
def _unstack(tree: Any, n: int) -> list[Any]:
    # One compiled call instead of n * leaves indexing dispatches.
    return [jax.tree.map(lambda a, i=i: a[i], tree) for i in range(n)]


def sweep(
    model: flax.linen.Module,
    make_optimizer: Callable[..., optax.GradientTransformation],
    grid: Mapping[str, Iterable] | Sequence[Mapping[str, Any]],
    data: Any,
    *,
    epochs: int,
    seeds: Sequence[int] = (0,),
    strategy: str = "auto",
    batch_size: int = 128,
    progress: bool = True,
    on_nonfinite: str = "stop",
    eval_batch_size: int = 1024,
) -> list[SweepRun]:
    """Trains one run per (setting, seed), all through one compiled program.

    Each run's history equals that of ``fit(model, make_optimizer(**setting), data,
    epochs=epochs, seed=seed, ...)``: to float32 rounding with ``"vmap"``, bit for bit with
    ``"loop"`` (it runs the very program ``fit`` runs).

    Strategies:

    * ``"vmap"``: the optimizers of all settings (of one structure) are stacked into one
      pytree and the compiled epoch is ``jax.vmap``-ed over them (and over the seeds): every
      step trains all runs at once. Wins where one model leaves the device idle (small
      models; GPUs).
    * ``"loop"``: the runs in turn through the compiled epoch that :func:`fit` uses (the
      optimizer is its argument, so no recompilation). Wins on a CPU that one model already
      saturates.
    * ``"auto"``: :func:`choose_strategy`.

    With ``"vmap"``, float values in the grid are passed to ``make_optimizer`` as float32 JAX
    arrays, so that all settings share one structure (``lecopt.sgd(lr, momentum=0.0)`` with a
    Python 0 drops the velocity; with an array 0 the velocity is kept and stays ``-alpha g``,
    the same numbers). Settings whose optimizers still differ in structure (e.g. ``nesterov``
    True and False) are trained in one vmapped group per structure.

    With ``on_nonfinite="stop"`` a run that meets a non-finite step freezes at its last good
    state and its ``history.stopped`` says where; the other runs go on (no exception).

    Args:
      model: the Flax module.
      make_optimizer: ``make_optimizer(**setting)`` returns the optimizer of a setting.
      grid: ``{"name": [values], ...}`` (all combinations, in ``itertools.product`` order) or
        a list of setting dicts.
      data: as for :func:`fit`.
      epochs: epochs per run.
      seeds: seeds; every setting is trained with each.
      strategy: ``"auto"``, ``"vmap"`` or ``"loop"``.
      batch_size, progress, on_nonfinite, eval_batch_size: as for :func:`fit`.

    Returns:
      A list of :class:`SweepRun`, settings in grid order, for each setting its seeds in order.

    Example:
      >>> runs = train.sweep(nn.MLP((32, 32)), lambda momentum: optimizers.sgd(
      ...     0.05, momentum=momentum), {"momentum": [0.0, 0.5, 0.9, 0.99]}, ds, epochs=3)
      >>> [(r.setting, r.history.test_error[-1]) for r in runs]
    """
    epochs = _check_int("epochs", epochs)
    _check_mode(on_nonfinite)
    if strategy not in _STRATEGIES:
        raise ValueError(f"strategy={strategy!r}; must be one of {_STRATEGIES}")
    if not callable(make_optimizer):
        raise TypeError("make_optimizer must be callable: setting keywords -> optimizer")
    seeds = [_check_int(f"seeds[{i}]", s, minimum=0) for i, s in enumerate(seeds)]
    if not seeds:
        raise ValueError("seeds must not be empty")
    settings = _settings(grid)
    if not settings:
        raise ValueError("grid holds no setting")
    setup = _prepare(model, data, batch_size, eval_batch_size, None)
    if strategy == "auto":
        strategy = choose_strategy(model, setup.x[:1], setup.batch_size)
    # Group the settings by optimizer structure. "loop" passes the values as given, so each
    # run is exactly the program a separate fit runs; "vmap" needs one structure to stack.
    convert = _as_traced_value if strategy == "vmap" else (lambda v: v)
    groups: dict[_TxSpec, list[tuple[int, list]]] = {}
    for i, s in enumerate(settings):
        tx = make_optimizer(**{k: convert(v) for k, v in s.items()})
        spec, leaves = _split_tx(tx)
        groups.setdefault(spec, []).append((i, leaves))

    results: dict[tuple[int, int], SweepRun] = {}
    total = epochs * (len(groups) if strategy == "vmap" else len(settings) * len(seeds))
    bar = _progress_bar(progress, total, 0, f"sweep ({strategy})")
    try:
        for spec, members in groups.items():
            progs = _programs(setup.static(on_nonfinite, spec))
            if strategy == "vmap":
                out = _sweep_vmap(setup, progs, members, seeds, epochs, bar)
            else:
                out = _sweep_loop(setup, progs, members, seeds, epochs, bar)
            for (i, seed), (state, history) in out.items():
                results[(i, seed)] = SweepRun(dict(settings[i]), seed, state, history)
    finally:
        bar.close()
    return [results[(i, s)] for i in range(len(settings)) for s in seeds]


def _sweep_loop(setup: _Setup, progs: dict, members: list, seeds: list[int], epochs: int,
                bar: Any) -> dict:
    """Every run in turn through fit's compiled programs; one host sync per epoch."""
    S = setup.steps
    evaluate_prog, _ = setup.evaluator()
    buf = jnp.zeros([S], jnp.float32)
    out = {}
    for seed in seeds:
        init_key, data_key = _keys(seed)
        orders = [_order(data_key, e, setup.n, S, setup.batch_size) for e in range(epochs)]
        for i, leaves in members:
            t0 = time.perf_counter()
            state = progs["init"](init_key, setup.x[:1], leaves)
            history = History(steps_per_epoch=S, batch_size=setup.batch_size)
            bad = jnp.asarray(-1, jnp.int32)
            for e in range(epochs):
                state, losses, errors, skipped, bad = progs["train"](
                    state, leaves, setup.x, setup.y, orders[e], 0, S, bad, buf, buf)
                ev = None
                if setup.x_test is not None:
                    ev = evaluate_prog(state.variables, setup.x_test, setup.y_test)
                stopped = _record(history, e, np.asarray(losses), np.asarray(errors),
                                  int(skipped), int(bad), ev, t0)
                bar.update(1)
                if stopped:
                    bar.update(epochs - e - 1)
                    break
            out[(i, seed)] = (state, history)
    return out


def _record(history: History, epoch: int, losses: np.ndarray, errors: np.ndarray,
            skipped: int, bad: int, ev: Any, t0: float) -> bool:
    """Appends one epoch of one run to its history; True if the run stopped in it."""
    S = history.steps_per_epoch
    end = S if bad < 0 else bad + 1
    history.step_loss += losses[:end].astype(float).tolist()
    history.step_error += errors[:end].astype(float).tolist()
    if bad >= 0:
        history.stopped = {"epoch": epoch, "step": bad, "global_step": epoch * S + bad}
        return True
    tl, te = _epoch_stats(losses, errors)
    history.train_loss.append(tl)
    history.train_error.append(te)
    history.skipped.append(skipped)
    if ev is not None:
        history.test_loss.append(float(ev[0]))
        history.test_error.append(float(ev[1]))
    history.wall_time.append(time.perf_counter() - t0)
    return False


def _sweep_vmap(setup: _Setup, progs: dict, members: list, seeds: list[int], epochs: int,
                bar: Any) -> dict:
    """All runs of one structure at once: vmap over the stacked optimizers (and seeds)."""
    S = setup.steps
    _, evaluate_v = setup.evaluator()
    runs = [(i, seed) for seed in seeds for i, _ in members]
    R = len(runs)
    by_index = dict(members)
    stacked = [jnp.stack([jnp.asarray(by_index[i][k]) for i, _ in runs])
               for k in range(len(members[0][1]))]
    keys = [_keys(seed) for seed in seeds]
    init_keys = jnp.stack([keys[seeds.index(seed)][0] for _, seed in runs])
    t0 = time.perf_counter()
    state = progs["init_v"](init_keys, setup.x[:1], stacked)
    histories = [History(steps_per_epoch=S, batch_size=setup.batch_size) for _ in runs]
    bad = jnp.full([R], -1, jnp.int32)
    buf = jnp.zeros([R, S], jnp.float32)
    active = [True] * R
    for e in range(epochs):
        if len(seeds) == 1:
            order = _order(keys[0][1], e, setup.n, S, setup.batch_size)
            prog = progs["train_v_shared"]
        else:
            order = jnp.stack([_order(keys[seeds.index(seed)][1], e, setup.n, S,
                                      setup.batch_size) for _, seed in runs])
            prog = progs["train_v"]
        state, losses, errors, skipped, bad = prog(state, stacked, setup.x, setup.y, order,
                                                   0, S, bad, buf, buf)
        ev = None
        if setup.x_test is not None:
            ev = evaluate_v(state.variables, setup.x_test, setup.y_test)
            ev = (np.asarray(ev[0]), np.asarray(ev[1]))
        host = np.asarray(losses), np.asarray(errors), np.asarray(skipped), np.asarray(bad)
        for r in range(R):
            if active[r]:
                active[r] = not _record(histories[r], e, host[0][r], host[1][r],
                                        int(host[2][r]), int(host[3][r]),
                                        None if ev is None else (ev[0][r], ev[1][r]), t0)
        bar.update(1)
        if not any(active):
            bar.update(epochs - e - 1)
            break
    states = _unstack(state, R)
    return {run: (states[r], histories[r]) for r, run in enumerate(runs)}


# --------------------------------------------------------------------------------------------
# Figures.


def plot_history(history: History | Mapping[str, Any], ax: Any = None) -> Any:
    """Training and test loss and error per epoch (and the per-step loss, faint).

    Args:
      history: a :class:`History` or its :meth:`History.to_dict`.
      ax: None (a new figure with two axes: loss and error), a pair of axes
        ``(ax_loss, ax_error)``, or one axes (loss on it, error on a twin axis).

    Returns:
      The matplotlib ``Figure``.

    Example:
      >>> fig = train.plot_history(history)
      >>> fig.savefig("history.png")
    """
    import matplotlib.pyplot as plt

    h = history if isinstance(history, History) else History.from_dict(history)
    twin = False
    if ax is None:
        fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    elif isinstance(ax, Sequence | np.ndarray) and len(ax) == 2:
        ax_loss, ax_err = ax
        fig = ax_loss.figure
    else:
        ax_loss, ax_err, twin = ax, ax.twinx(), True
        fig = ax.figure
    # Training values are means over an epoch: drawn at its middle. Test values are measured
    # at its end.
    ep = np.arange(1, h.epochs + 1)
    mid = ep - 0.5
    S = max(h.steps_per_epoch, 1)
    if h.step_loss:
        steps = (np.arange(len(h.step_loss)) + 0.5) / S
        ax_loss.plot(steps, h.step_loss, color="tab:blue", alpha=0.25, lw=0.8,
                     label="train (per step)")
    ax_loss.plot(mid, h.train_loss, "o-", color="tab:blue", label="train (epoch mean)")
    if h.test_loss:
        ax_loss.plot(ep, h.test_loss, "s-", color="tab:orange", label="test (end of epoch)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss (nats)")
    ax_loss.set_title("Loss")
    pct = 100.0
    ax_err.plot(mid, np.asarray(h.train_error) * pct, "o--", color="tab:green",
                label="train error (epoch mean)")
    if h.test_error:
        ax_err.plot(ep, np.asarray(h.test_error) * pct, "s--", color="tab:red",
                    label="test error (end of epoch)")
    ax_err.set_ylabel("classification error (%)")
    if twin:
        handles, labels = ax_loss.get_legend_handles_labels()
        handles2, labels2 = ax_err.get_legend_handles_labels()
        ax_loss.legend(handles + handles2, labels + labels2, loc="upper right")
        ax_loss.set_title("Training history: loss (left axis) and error (right axis)")
    else:
        ax_err.set_xlabel("epoch")
        ax_err.set_title("Error")
        ax_loss.legend()
        ax_err.legend()
        fig.suptitle(f"Training history ({h.epochs} epochs, batch {h.batch_size})")
    return fig
