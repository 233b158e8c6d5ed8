"""The compiled programs of the training layer, all in this file.

A :class:`ProgramKey` (model, its calling convention, the non-finite mode, the batch sharding
and the optimizer's :class:`~lecopt.partition.Structure`) selects one :class:`TrainPrograms`;
an :class:`EvalKey` one :class:`EvalPrograms`. Both are cached, so a second ``fit`` or
``sweep`` of the same model and optimizer structure runs the executables already built: the
optimizer's hyperparameters are traced arguments, not constants.

One loop body serves every step: :func:`_train_steps` runs steps ``[start, stop)`` of an
epoch in a ``lax.while_loop`` whose bounds are traced, so running an epoch at once or in
pieces (around checkpoints and callbacks) executes the same compiled body on the same values.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from lecopt import hyperparams, partition
from lecopt._checks import check_int
from lecopt.train.nnx_models import NNXModel, as_model
from lecopt.train.records import TrainState

__all__ = ["ByValue", "ProgramKey", "TrainPrograms", "EvalKey", "EvalPrograms",
           "train_programs", "eval_programs", "accepts_train", "init_variables", "loss_function",
           "seed_keys", "epoch_order", "batch_order", "unstack"]


class ByValue:
    """A hashable key for a value that may not be hashable (a module with list fields).

    Equal values give equal keys; an unhashable value hashes by its repr (collisions are
    harmless: equality decides), so ``MLP([512, 512])`` built twice reuses its programs.
    """

    __slots__ = ("value", "_hash")

    def __init__(self, value: Any):
        self.value = value
        try:
            self._hash = hash(value)
        except Exception:  # Flax raises its own error type for unhashable fields
            self._hash = hash((type(value).__qualname__, repr(value)))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ByValue) or type(other.value) is not type(self.value):
            return False
        try:
            return bool(self.value == other.value)
        except Exception:  # e.g. array-valued fields: treat as different
            return self.value is other.value


def accepts_train(model: Any) -> bool:
    """Whether the module's ``__call__`` takes a ``train`` argument (an NNX model is switched
    by ``train()``/``eval()`` instead, which its ``apply`` does)."""
    if isinstance(model, NNXModel):
        return True
    try:
        return "train" in inspect.signature(model.__call__).parameters
    except (TypeError, ValueError):
        return False


def init_variables(model: Any, takes_train: bool, key: jax.Array, x1: jax.Array) -> Any:
    """``model.init(key, x1, train=False)`` (``train`` only if the module takes it)."""
    return model.init(key, x1, **({"train": False} if takes_train else {}))


def _cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)


def _training_loss(model: Any, takes_train: bool, params: Any, batch_stats: Any,
                   x: jax.Array, y: jax.Array) -> tuple[jax.Array, tuple[jax.Array, Any]]:
    """Mean cross-entropy in training mode, and (logits, updated batch_stats)."""
    kw = {"train": True} if takes_train else {}
    if jax.tree.leaves(batch_stats):
        logits, updated = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                      mutable=["batch_stats"], **kw)
        batch_stats = updated["batch_stats"]
    else:
        logits = model.apply({"params": params}, x, **kw)
    return _cross_entropy(logits, y).mean(), (logits, batch_stats)


@functools.lru_cache(maxsize=64)
def _loss_function(key: ByValue) -> Callable:
    model, takes_train = key.value, accepts_train(key.value)

    def loss(params: Any, batch_stats: Any, batch: tuple[jax.Array, jax.Array]):
        value, (_, batch_stats) = _training_loss(model, takes_train, params, batch_stats,
                                                 *batch)
        return value, batch_stats

    return loss


def loss_function(model: Any) -> Callable:
    """The loss :func:`~lecopt.train.fit` minimises, as ``loss(params, batch_stats, batch)``.

    ``batch = (x, y)``; returns ``(mean softmax cross-entropy, new batch_stats)`` computed in
    training mode (``train=True`` when the module takes it; BatchNorm normalises with the
    batch's statistics and updates its running averages). ``batch_stats`` is ``{}`` for a
    model without BatchNorm. The signature is the one
    :func:`lecopt.lr_finder.lr_range_test` takes with ``model_state=batch_stats``. Equal
    models give the same function object, so compiled programs keyed on it are reused.

    Example:
      >>> from lecopt import nn, optimizers, train
      >>> model = nn.MLP((8,), num_classes=3)
      >>> state = train.init_state(model, optimizers.sgd(0.1), jnp.zeros((1, 4)), seed=0)
      >>> loss, _ = train.loss_function(model)(state.params, state.batch_stats,
      ...                                      (jnp.zeros((2, 4)), jnp.array([0, 1])))
      >>> round(float(loss), 4)  # zero inputs: logits are the biases, all zero at init
      1.0986

    For an ``nnx.Module`` the loss is over its pure-dict state, ``params =
    nnx.to_pure_dict(nnx.state(model, nnx.Param))`` and likewise ``batch_stats`` of
    ``nnx.BatchStat`` (in training mode, ``model.train()``), so the LR range test of an NNX
    model reads ``lr_range_test(train.loss_function(model), params, batches, optimizer,
    model_state=batch_stats)``.
    """
    return _loss_function(ByValue(as_model(model)[0]))


class ProgramKey(NamedTuple):
    """Everything that selects a set of :class:`TrainPrograms` (hashable)."""

    model: ByValue
    takes_train: bool
    on_nonfinite: str  # "stop" or "skip"
    batch_sharding: Any  # NamedSharding or None
    optimizer: partition.Structure
    # x, y are the epoch's minibatches gathered beforehand, (S, B, ...), not the data set
    # (a mesh over several processes: lecopt.train.inputs.Setup.epoch_data).
    gathered: bool = False


class TrainPrograms(NamedTuple):
    """The jitted programs of one :class:`ProgramKey`.

    ``init(init_key, x1, hyperparameters[, variables]) -> TrainState`` (from ``variables``,
    a traced argument, when given: an NNX module's weights; else from ``model.init``);
    ``train_steps(state, hyperparameters, x, y, order, start, stop, bad, losses, errors)
    -> (state, losses, errors, skipped, bad)`` (see :func:`_train_steps`);
    ``learning_rate(hyperparameters, opt_state)``: the rate of the next update (see
    :func:`_learning_rate`). The ``_vmapped`` variants run many settings at once
    (:func:`~lecopt.train.sweep`): one init per key and hyperparameters; training with one epoch
    order shared by all runs (one seed) or one per run.
    """

    init: Callable
    train_steps: Callable
    init_vmapped: Callable
    init_vmapped_from_variables: Callable
    train_steps_vmapped_shared_order: Callable
    train_steps_vmapped: Callable
    learning_rate: Callable
    learning_rate_vmapped: Callable


def _init_state(key: ProgramKey, init_key: jax.Array, x1: jax.Array,
                hyperparameters: list, variables: Any = None) -> TrainState:
    if variables is None:
        variables = init_variables(key.model.value, key.takes_train, init_key, x1)
    params = variables["params"]
    optimizer = key.optimizer.rebuild(hyperparameters)
    return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=optimizer.init(params))


def _train_steps(key: ProgramKey, state: TrainState, hyperparameters: list, x: jax.Array,
                 y: jax.Array, order: jax.Array, start: jax.Array, stop: jax.Array,
                 bad: jax.Array, losses: jax.Array, errors: jax.Array):
    """Steps ``start <= i < stop`` of the epoch whose minibatch indices are ``order`` (S, B).

    Returns (state, losses, errors, skipped, bad): the buffers with entries ``[start, stop)``
    written, the number of non-finite steps, and ``bad`` = the first non-finite step ("stop"
    mode; -1 if none). In "stop" mode the state freezes from the first non-finite step on,
    and a run that enters with ``bad >= 0`` keeps its state.
    """
    optimizer = key.optimizer.rebuild(hyperparameters)
    stop_mode = key.on_nonfinite == "stop"
    grad_fn = jax.value_and_grad(
        functools.partial(_training_loss, key.model.value, key.takes_train), has_aux=True)

    def cond(carry):
        # Only the (unbatched) step index: under vmap a per-run predicate would make every
        # iteration select between old and new carries of all runs.
        return carry[0] < stop

    def body(carry):
        i, state, losses, errors, skipped, bad = carry
        if key.gathered:
            xb, yb = x[i], y[i]
        else:
            xb, yb = jnp.take(x, order[i], axis=0), jnp.take(y, order[i], axis=0)
        if key.batch_sharding is not None:
            xb = lax.with_sharding_constraint(xb, key.batch_sharding)
            yb = lax.with_sharding_constraint(yb, key.batch_sharding)
        (loss, (logits, new_batch_stats)), grads = grad_fn(state.params, state.batch_stats,
                                                           xb, yb)
        finite = jnp.isfinite(loss)
        for g in jax.tree.leaves(grads):
            finite &= jnp.all(jnp.isfinite(g))
        # "stop": a run that met a bad step stays frozen at its last good state until the
        # chunk ends (the rest of the chunk is wasted work, but only on the way to an error).
        apply = finite & (bad < 0) if stop_mode else finite

        def updated(state: TrainState) -> TrainState:
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            return TrainState(step=state.step + 1,
                              params=optax.apply_updates(state.params, updates),
                              batch_stats=new_batch_stats, opt_state=opt_state)

        # The update is computed inside the taken branch, so it writes the new state into
        # the loop's buffers in place. A cond that only picks between a new state computed
        # before it and the old one copies the whole new state (parameters and optimizer
        # state) into those buffers every step: 5.4 MB per step for the 784-512-512-10 MLP
        # with momentum, 5-10% of its epoch on CPU. An elementwise select is slower still;
        # under vmap the cond becomes that select anyway.
        state = lax.cond(apply, updated, lambda state: state, state)
        losses = losses.at[i].set(loss.astype(jnp.float32))
        errors = errors.at[i].set(jnp.mean((jnp.argmax(logits, -1) != yb).astype(jnp.float32)))
        skipped = skipped + (~finite).astype(jnp.int32)
        if stop_mode:
            bad = jnp.where(finite | (bad >= 0), bad, i)
        return i + 1, state, losses, errors, skipped, bad

    carry = (start, state, losses, errors, jnp.zeros([], jnp.int32), bad)
    _, state, losses, errors, skipped, bad = lax.while_loop(cond, body, carry)
    return state, losses, errors, skipped, bad


def _learning_rate(key: ProgramKey, hyperparameters: list, opt_state: Any) -> jax.Array:
    """``lecopt.current_learning_rate`` of the optimizer rebuilt from ``hyperparameters``
    (new values of the same structure reuse the program); NaN (float32) for an optimizer
    without one readable learning-rate part (e.g. a plain ``optax.adam``)."""
    optimizer = key.optimizer.rebuild(hyperparameters)
    try:
        rate = hyperparams.current_learning_rate(optimizer, opt_state)
    except ValueError:  # decided by the structure, at trace time
        return jnp.full([], jnp.nan, jnp.float32)
    return jnp.asarray(rate, jnp.float32)


@functools.lru_cache(maxsize=64)
def train_programs(key: ProgramKey) -> TrainPrograms:
    """The jitted programs of one model/optimizer structure (cached: no retracing)."""
    init = functools.partial(_init_state, key)
    steps = functools.partial(_train_steps, key)
    # Runs of a sweep share the data; with one seed they share the order too. Minibatches
    # gathered beforehand (key.gathered) follow their run's own order: one set per run.
    shared_order = (0, 0, None, None, None, None, None, 0, 0, 0)
    own_data = 0 if key.gathered else None
    own_order = (0, 0, own_data, own_data, 0, None, None, 0, 0, 0)
    return TrainPrograms(
        init=jax.jit(init),
        train_steps=jax.jit(steps),
        init_vmapped=jax.jit(jax.vmap(init, in_axes=(0, None, 0))),
        init_vmapped_from_variables=jax.jit(jax.vmap(init, in_axes=(0, None, 0, None))),
        train_steps_vmapped_shared_order=jax.jit(jax.vmap(steps, in_axes=shared_order)),
        train_steps_vmapped=jax.jit(jax.vmap(steps, in_axes=own_order)),
        learning_rate=jax.jit(functools.partial(_learning_rate, key)),
        learning_rate_vmapped=jax.jit(jax.vmap(functools.partial(_learning_rate, key))),
    )


class EvalKey(NamedTuple):
    """Everything that selects a set of :class:`EvalPrograms` (hashable)."""

    model: ByValue
    takes_train: bool
    batch_sharding: Any
    batch_size: int
    # x, y are the test set's batches gathered beforehand, (nb, batch, ...), label -1 marking
    # the padding (a mesh over several processes).
    gathered: bool = False


class EvalPrograms(NamedTuple):
    """``evaluate(variables, x, y) -> (mean loss, error)``, and vmapped over ``variables``."""

    evaluate: Callable
    evaluate_vmapped: Callable


def _evaluate(key: EvalKey, variables: Any, x: jax.Array, y: jax.Array
              ) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy and error over all of (x, y), in padded batches of ``batch_size``."""
    n, batch = x.shape[0], key.batch_size
    num_batches = -(-n // batch)
    flat = jnp.arange(num_batches * batch)
    indices = jnp.minimum(flat, n - 1).reshape(num_batches, batch)
    real = (flat < n).reshape(num_batches, batch)
    kw = {"train": False} if key.takes_train else {}

    def body(sums, batch_indices_and_mask):
        i, m = batch_indices_and_mask
        xb, yb = jnp.take(x, i, axis=0), jnp.take(y, i, axis=0)
        if key.batch_sharding is not None:
            xb = lax.with_sharding_constraint(xb, key.batch_sharding)
            yb = lax.with_sharding_constraint(yb, key.batch_sharding)
        logits = key.model.value.apply(variables, xb, **kw)
        loss = jnp.where(m, _cross_entropy(logits, yb), 0.0)
        err = jnp.where(m, (jnp.argmax(logits, -1) != yb).astype(jnp.float32), 0.0)
        return (sums[0] + loss.sum(), sums[1] + err.sum()), None

    zero = jnp.zeros([], jnp.float32)
    (loss_sum, error_sum), _ = lax.scan(body, (zero, zero), (indices, real))
    return loss_sum / n, error_sum / n


def _evaluate_gathered(key: EvalKey, variables: Any, xs: jax.Array, ys: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
    """:func:`_evaluate` over batches gathered beforehand: ``xs`` (nb, batch, ...), ``ys``
    (nb, batch), where label -1 marks the padding of the last batch."""
    kw = {"train": False} if key.takes_train else {}

    def body(sums, batch):
        xb = lax.with_sharding_constraint(batch[0], key.batch_sharding)
        yb = lax.with_sharding_constraint(batch[1], key.batch_sharding)
        real = yb >= 0
        yb = jnp.maximum(yb, 0)
        logits = key.model.value.apply(variables, xb, **kw)
        loss = jnp.where(real, _cross_entropy(logits, yb), 0.0)
        err = jnp.where(real, (jnp.argmax(logits, -1) != yb).astype(jnp.float32), 0.0)
        return (sums[0] + loss.sum(), sums[1] + err.sum(), sums[2] + real.sum()), None

    zero = jnp.zeros([], jnp.float32)
    (loss_sum, error_sum, n), _ = lax.scan(body, (zero, zero, jnp.zeros([], jnp.int32)),
                                           (xs, ys))
    return loss_sum / n, error_sum / n


@functools.lru_cache(maxsize=64)
def eval_programs(key: EvalKey) -> EvalPrograms:
    """The jitted evaluation programs of one model and batch size (cached)."""
    f = functools.partial(_evaluate_gathered if key.gathered else _evaluate, key)
    return EvalPrograms(jax.jit(f), jax.jit(jax.vmap(f, in_axes=(0, None, None))))


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """``(init_key, data_key)`` of a seed: the documented derivation of every random choice."""
    init_key, data_key = jax.random.split(jax.random.PRNGKey(seed))
    return init_key, data_key


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def epoch_order(data_key: jax.Array, epoch: jax.Array, n: int, steps: int, batch: int
                ) -> jax.Array:
    """The (steps, batch) minibatch indices of ``epoch``: a permutation, the rest dropped."""
    perm = jax.random.permutation(jax.random.fold_in(data_key, epoch), n)
    return perm[: steps * batch].reshape(steps, batch).astype(jnp.int32)


def batch_order(seed: int, epoch: int, num_examples: int, batch_size: int) -> np.ndarray:
    """The minibatch indices ``fit(..., seed=seed)`` uses in ``epoch``: shape (S, batch_size).

    Row ``i`` holds the training examples of step ``i``;
    ``S = num_examples // batch_size`` (the last incomplete minibatch is dropped). Computed as
    ``jax.random.permutation(fold_in(data_key, epoch), num_examples)`` with
    ``_, data_key = jax.random.split(jax.random.PRNGKey(seed))``.

    Args:
      seed: the ``seed`` given to :func:`~lecopt.train.fit`.
      epoch: 0-based epoch.
      num_examples: the number of training examples ``N``.
      batch_size: the minibatch size.

    Returns:
      An int32 NumPy array of shape (N // batch_size, batch_size).

    Example:
      >>> order = batch_order(0, 0, num_examples=10, batch_size=4)
      >>> order.shape, len(set(order.ravel().tolist()))  # 2 steps of 4 distinct examples
      ((2, 4), 8)
    """
    check_int("num_examples", num_examples)
    check_int("batch_size", batch_size)
    steps = num_examples // batch_size
    if steps < 1:
        raise ValueError(f"batch_size={batch_size} exceeds num_examples={num_examples}")
    return np.asarray(epoch_order(seed_keys(seed)[1], epoch, num_examples, steps, batch_size))


@functools.partial(jax.jit, static_argnums=1)
def unstack(tree: Any, n: int) -> list[Any]:
    """The ``n`` slices of a stacked pytree, in one compiled call (not n * leaves indexings)."""
    return [jax.tree.map(lambda a, i=i: a[i], tree) for i in range(n)]
