"""``fit``: train a Flax classifier; ``init_state``: the state it starts from."""

from __future__ import annotations

import bisect
import math
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from lecopt import distributed, partition
from lecopt._checks import check_int
from lecopt.train import nnx_models, programs
from lecopt.train.checkpoints import Checkpointer, Position, fingerprint
from lecopt.train.inputs import (
    Setup,
    check_mode,
    check_model,
    model_calling_convention,
    prepare,
    unpack_data,
)
from lecopt.train.records import History, NonFiniteError, TrainState, to_jsonable

__all__ = ["fit", "init_state", "check_optimizer", "epoch_means", "progress_bar"]


def fit(
    model: flax.linen.Module | nnx.Module,
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
    callback: Callable[[int, TrainState], Any] | None = None,
    callback_steps: Iterable[int] = (),
) -> tuple[TrainState | nnx.Module, History]:
    """Trains a Flax classifier by minibatch gradient descent with ``optimizer``.

    Minimises the mean softmax cross-entropy of ``model.apply(variables, x, train=True)``
    (:func:`~lecopt.train.loss_function`; ``train`` is passed only if the module's
    ``__call__`` takes it; a ``batch_stats`` collection is updated as Flax does with
    ``mutable=["batch_stats"]``), starting from :func:`init_state` of ``seed``. See
    :mod:`lecopt.train` for the data order, the history and the checkpoints.

    Args:
      model: a ``flax.linen.Module`` mapping inputs (N, ...) to logits (N, classes), with
        collections ``params`` and optionally ``batch_stats``; or a ``flax.nnx.Module`` with
        ``nnx.Param`` and optionally ``nnx.BatchStat`` variables (e.g. :class:`lecopt.nnx.MLP`):
        training starts from its weights (``seed`` then sets only the data order), runs it
        under ``model.train()`` and evaluates it under ``model.eval()``. The module given is
        not modified; the trained one is returned. Modules of one structure share the
        compiled programs (their weights are arguments, not constants).
      optimizer: an optax ``GradientTransformation``; a lecopt optimizer (e.g.
        ``lecopt.sgd(0.05, momentum=0.9)``) runs through the compiled program already built
        for any other hyperparameter values of the same structure.
      data: a :class:`lecopt.data.Dataset` (or anything with ``x_train``, ``y_train``,
        ``x_test``, ``y_test``), a mapping with those keys, or a tuple ``(x_train, y_train[,
        x_test, y_test])``. Labels are integers. Test data is optional.
      epochs: number of passes over the training data (>= 1).
      batch_size: examples per step; ``S = N // batch_size`` steps per epoch (the last
        incomplete minibatch is dropped).
      seed: derives the initialisation and the data order (:func:`init_state`,
        :func:`~lecopt.train.batch_order`).
      mesh: a ``jax.sharding.Mesh``; every minibatch is split along its first axis, the
        parameters are replicated. ``batch_size`` must be divisible by that axis' size. A
        mesh over several processes' devices (:mod:`lecopt.distributed`): every process
        makes this same call with the whole data set (the same in each); each transfers
        only its devices' slice of every minibatch, and all return the same result.
      checkpoint_dir: save checkpoints here and resume from the newest one found.
      checkpoint_every: save every this many steps (counted from the start of training) and at
        the end; default: at the end of every epoch.
      max_to_keep: number of checkpoints kept.
      progress: show a tqdm bar over epochs with the latest training loss and test error.
      on_nonfinite: ``"stop"``: raise :class:`~lecopt.train.NonFiniteError` at the first step
        with a non-finite loss or gradient, with the last good state; ``"skip"``: do not apply
        such a step's update, count it in ``history.skipped`` and go on.
      eval_batch_size: batch size of the test evaluation.
      callback: ``callback(global_step, state)`` is called with the state after
        ``global_step`` steps (0: the initial state; ``epochs * S``: the final one) for each
        of ``callback_steps``, in increasing order; its result is ignored. Training runs the
        same compiled steps with or without it (the epoch is only cut into pieces), so the
        states and the history are bit for bit those of a run without a callback. A run
        resumed from a checkpoint calls it for the steps from the resumed position on.
      callback_steps: global steps in ``[0, epochs * S]`` (needs ``callback``).

    Returns:
      ``(state, history)``: the final :class:`~lecopt.train.TrainState` and the
      :class:`~lecopt.train.History` (its ``step_loss`` is the per-step training loss). For
      an ``nnx.Module``: ``(trained_module, history)``, a new module of the same structure
      (the optimizer state is in the checkpoints and in what ``callback`` receives, a
      :class:`~lecopt.train.TrainState` whose ``params``/``batch_stats`` are the module's
      ``nnx.to_pure_dict(...)``).

    Raises:
      NonFiniteError: ``on_nonfinite="stop"`` met a non-finite loss or gradient.
      CheckpointMismatchError: ``checkpoint_dir`` holds a checkpoint of another model,
        optimizer, batch size, seed or data shape.

    Example:
      >>> from lecopt import nn, optimizers, train
      >>> x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 4)), jnp.float32)
      >>> y = (x[:, 0] > 0).astype(jnp.int32)
      >>> norms = {}
      >>> state, history = train.fit(
      ...     nn.MLP((8,), num_classes=2), optimizers.sgd(0.1, momentum=0.9), (x, y),
      ...     epochs=3, batch_size=16, progress=False, callback_steps=(0, 4),
      ...     callback=lambda step, s: norms.setdefault(step, int(s.step)))
      >>> len(history.step_loss), history.epochs, norms, int(state.step)
      (12, 3, {0: 0, 4: 4}, 12)
    """
    epochs = check_int("epochs", epochs)
    seed = check_int("seed", seed, minimum=0)
    max_to_keep = check_int("max_to_keep", max_to_keep)
    check_mode(on_nonfinite)
    setup = prepare(model, data, batch_size, eval_batch_size, mesh)
    steps_per_epoch = setup.steps
    save_every = steps_per_epoch if checkpoint_every is None else check_int(
        "checkpoint_every", checkpoint_every)
    observed = _check_callback(callback, callback_steps, epochs * steps_per_epoch)
    hyperparameters, structure = partition.split(check_optimizer(optimizer))
    compiled = programs.train_programs(setup.program_key(on_nonfinite, structure))
    evaluate_test = setup.eval_programs().evaluate
    init_key, data_key = programs.seed_keys(seed)
    if setup.multiprocess:
        init_key, data_key, hyperparameters = distributed.replicated(
            (init_key, data_key, hyperparameters), setup.replicated)
    elif setup.replicated is not None:
        init_key, data_key = jax.device_put((init_key, data_key), setup.replicated)
    run = _Run(setup, compiled, hyperparameters, data_key)
    if setup.multiprocess:
        _check_processes_agree(run.fingerprint(init_key, structure, seed), data, epochs=epochs,
                               save_every=save_every, on_nonfinite=on_nonfinite,
                               eval_batch_size=setup.eval_batch_size, observed=observed,
                               checkpoints=checkpoint_dir is not None)
    checkpointer = None if checkpoint_dir is None else run.open_checkpoints(
        checkpoint_dir, max_to_keep, init_key, structure, seed, epochs)
    if run.state is None:
        run.state = compiled.init(init_key, setup.example, hyperparameters, *setup.init_args)
    bar = progress_bar(progress and distributed.is_main_process(), epochs, run.epoch, "fit")
    try:
        run.notify(callback, observed)
        while run.epoch < epochs:
            batches = setup.epoch_data(data_key, run.epoch)
            while run.step_in_epoch < steps_per_epoch:
                pause = _next_pause(run.global_step, save_every if checkpointer else None,
                                    observed)
                run.train_until(pause, batches)
                if checkpointer and run.step_in_epoch < steps_per_epoch \
                        and run.global_step % save_every == 0:
                    run.save(checkpointer)
                run.notify(callback, observed)
            run.end_epoch(evaluate_test)
            if checkpointer and (run.global_step % save_every == 0 or run.epoch == epochs):
                run.save(checkpointer)
            _show(bar, run.history)
    finally:
        bar.close()
        if checkpointer is not None:
            checkpointer.close()
    if setup.initial is not None:
        return nnx_models.merge(setup.model, run.state.variables), run.history
    return run.state, run.history


def init_state(model: flax.linen.Module, optimizer: optax.GradientTransformation,
               x_example: Any, seed: int = 0) -> TrainState:
    """The state :func:`fit` with this ``seed`` starts from (bit for bit).

    ``init_key, _ = jax.random.split(jax.random.PRNGKey(seed))``; the variables are
    ``model.init(init_key, x_example[:1], train=False)`` (``train`` only if the module takes
    it), the optimizer state ``optimizer.init(params)``, the step 0.

    Args:
      model: the Flax module (collections ``params`` and optionally ``batch_stats``).
      optimizer: the optax ``GradientTransformation`` ``fit`` is given.
      x_example: training inputs, or at least one of them (only ``x_example[:1]`` is used).
      seed: the ``seed`` given to :func:`fit`.

    Returns:
      A :class:`~lecopt.train.TrainState`.

    Example:
      >>> from lecopt import nn, optimizers, train
      >>> state = train.init_state(nn.MLP((8,), num_classes=3), optimizers.sgd(0.1),
      ...                          jnp.zeros((5, 4)), seed=0)
      >>> int(state.step), state.params["Dense_0"]["kernel"].shape, state.batch_stats
      (0, (4, 8), {})
    """
    model, initial = nnx_models.as_model(model)
    check_model(model)
    seed = check_int("seed", seed, minimum=0)
    x1 = jnp.asarray(x_example[:1])
    hyperparameters, structure = partition.split(check_optimizer(optimizer))
    key = programs.ProgramKey(programs.ByValue(model), model_calling_convention(model, x1),
                              "stop", None, structure)
    return programs.train_programs(key).init(programs.seed_keys(seed)[0], x1, hyperparameters,
                                             *(() if initial is None else (initial,)))


class _Run:
    """The state of one ``fit`` between compiled chunks: where it is, and what it measured."""

    def __init__(self, setup: Setup, compiled: programs.TrainPrograms,
                 hyperparameters: list, data_key: jax.Array):
        self.setup, self.compiled = setup, compiled
        self.hyperparameters, self.data_key = hyperparameters, data_key
        self.state: TrainState | None = None
        self.history = History(steps_per_epoch=setup.steps, batch_size=setup.batch_size)
        self.epoch = self.step_in_epoch = self.skipped_in_epoch = 0
        self.elapsed_before = 0.0  # seconds spent by the runs this one resumes
        self.started = time.perf_counter()
        self.losses = jnp.zeros([setup.steps], jnp.float32)  # buffers the chunks write into
        self.errors = jnp.zeros([setup.steps], jnp.float32)
        self.no_bad_step = jnp.asarray(-1, jnp.int32)
        if setup.multiprocess:
            self.losses, self.errors, self.no_bad_step = distributed.replicated(
                (self.losses, self.errors, self.no_bad_step), setup.replicated)

    @property
    def global_step(self) -> int:
        return self.epoch * self.setup.steps + self.step_in_epoch

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def template(self, init_key: jax.Array) -> TrainState:
        """The state's shapes, without computing it: a resumed run never initialises."""
        return jax.eval_shape(self.compiled.init, init_key, self.setup.example,
                              self.hyperparameters, *self.setup.init_args)

    def fingerprint(self, init_key: jax.Array, structure: partition.Structure, seed: int
                    ) -> dict[str, Any]:
        fields = fingerprint(self.setup.model, self.template(init_key), structure,
                             self.hyperparameters, self.setup.batch_size, seed, self.setup.x)
        if self.setup.initial is not None:  # an nnx.Module: its weights, not seed, start it
            fields["initial_variables"] = distributed.content_digest(
                *jax.tree.leaves(self.setup.initial)).hex()
        return fields

    def open_checkpoints(self, directory: Any, max_to_keep: int, init_key: jax.Array,
                         structure: partition.Structure, seed: int, epochs: int
                         ) -> Checkpointer:
        """Opens the checkpoint directory and resumes from its newest checkpoint, if any."""
        template = self.template(init_key)
        checkpointer = Checkpointer(directory, max_to_keep,
                                    self.fingerprint(init_key, structure, seed))
        sharding = self.setup.replicated or jax.sharding.SingleDeviceSharding(jax.devices()[0])
        resumed = checkpointer.restore(template, sharding)
        if resumed is not None:
            self.state, self.history = resumed.state, resumed.history
            self.epoch, self.step_in_epoch, self.skipped_in_epoch = resumed.position
            self.elapsed_before = resumed.elapsed
            if self.global_step > epochs * self.setup.steps:
                checkpointer.close()
                raise ValueError(f"checkpoint_dir={os.fspath(directory)!r} holds a checkpoint "
                                 f"at epoch {self.epoch}, step {self.step_in_epoch}: beyond "
                                 f"epochs={epochs}")
        return checkpointer

    def train_until(self, pause: int, batches: tuple[Any, Any, jax.Array]) -> None:
        """Runs the steps up to global step ``pause`` or the epoch's end, whichever is first,
        on ``batches`` = (x, y, order) of the epoch (:meth:`Setup.epoch_data`); raises
        :class:`NonFiniteError` in "stop" mode at a non-finite step."""
        steps, start = self.setup.steps, self.step_in_epoch
        stop = min(steps, pause - self.epoch * steps)
        self.state, self.losses, self.errors, skipped, bad_step = self.compiled.train_steps(
            self.state, self.hyperparameters, *batches, start, stop, self.no_bad_step,
            self.losses, self.errors)
        bad_step = int(bad_step)
        self.step_in_epoch = stop if bad_step < 0 else bad_step + 1
        self.skipped_in_epoch += int(skipped)
        losses = np.asarray(self.losses)
        self.history.step_loss += losses[start:self.step_in_epoch].astype(float).tolist()
        self.history.step_error += np.asarray(
            self.errors)[start:self.step_in_epoch].astype(float).tolist()
        if bad_step >= 0:
            global_step = self.epoch * steps + bad_step
            self.history.stopped = {"epoch": self.epoch, "step": bad_step,
                                    "global_step": global_step}
            raise NonFiniteError(
                f"non-finite loss or gradient at epoch {self.epoch}, step {bad_step} (global "
                f"step {global_step}, loss {losses[bad_step]!r}); training stopped. The last "
                "good state is the error's .state, the history its .history. "
                "on_nonfinite='skip' would skip such steps.",
                epoch=self.epoch, step=bad_step, global_step=global_step, state=self.state,
                history=self.history)

    def end_epoch(self, evaluate_test: Callable) -> None:
        """Appends the epoch's means, its test evaluation and the time; moves to the next."""
        steps = self.setup.steps
        train_loss, train_error = epoch_means(np.asarray(self.history.step_loss[-steps:]),
                                              np.asarray(self.history.step_error[-steps:]))
        self.history.train_loss.append(train_loss)
        self.history.train_error.append(train_error)
        self.history.skipped.append(self.skipped_in_epoch)
        self.history.learning_rate.append(float(self.compiled.learning_rate(
            self.hyperparameters, self.state.opt_state)))
        if self.setup.x_test is not None:
            test_loss, test_error = evaluate_test(self.state.variables, self.setup.x_test,
                                                  self.setup.y_test)
            self.history.test_loss.append(float(test_loss))
            self.history.test_error.append(float(test_error))
        self.epoch, self.step_in_epoch, self.skipped_in_epoch = self.epoch + 1, 0, 0
        self.history.wall_time.append(self.elapsed())

    def save(self, checkpointer: Checkpointer) -> None:
        position = Position(self.epoch, self.step_in_epoch, self.skipped_in_epoch)
        elapsed = self.history.wall_time[-1] if self.step_in_epoch == 0 and \
            self.history.wall_time else self.elapsed()
        checkpointer.save(self.global_step, self.state, position, self.history, elapsed,
                          self.data_key)

    def notify(self, callback: Callable | None, observed: list[int]) -> None:
        """Calls ``callback`` if the current global step is one of ``observed``."""
        while observed and observed[0] < self.global_step:  # before a resumed position
            observed.pop(0)
        if callback is not None and observed and observed[0] == self.global_step:
            observed.pop(0)
            callback(self.global_step, self.state)


def _check_processes_agree(run_fingerprint: dict[str, Any], data: Any, call: str = "fit",
                           **settings: Any) -> None:
    """ValueError, in every process, if any process makes another ``call`` (``fit`` or
    ``sweep``) than process 0 (model, optimizer, batch size, seed, the data's shapes and
    contents, the settings)."""
    x, y, x_test, y_test = unpack_data(data)
    fields = {**run_fingerprint, **{k: to_jsonable(v) for k, v in settings.items()},
              "train_data_contents": distributed.content_digest(x, y),
              "test_data_contents": distributed.content_digest(x_test, y_test)}
    differ = distributed.mismatched_fields(fields)
    if differ:
        details = ", ".join(f"{k} in process(es) {ps}" for k, ps in differ.items())
        raise ValueError(f"{call} across {jax.process_count()} processes: the processes "
                         f"disagree about the run ({details} differ from process 0's). Every "
                         f"process must make the same {call} call, with the same whole data "
                         "set.")


def _check_callback(callback: Any, callback_steps: Iterable[int], total_steps: int
                    ) -> list[int]:
    """The callback steps, sorted and unique."""
    steps = sorted({check_int(f"callback_steps[{i}]", s, minimum=0)
                    for i, s in enumerate(callback_steps)})
    if steps and callback is None:
        raise ValueError(f"callback_steps={steps} needs a callback")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable (global_step, state); got {callback!r}")
    if steps and steps[-1] > total_steps:
        raise ValueError(f"callback_steps: {steps[-1]} is beyond the {total_steps} steps of "
                         "training (epochs * steps per epoch)")
    return steps


def _next_pause(global_step: int, save_every: int | None, observed: list[int]) -> int:
    """The next global step after ``global_step`` where training must hand back the state:
    a checkpoint (a multiple of ``save_every``) or a callback step."""
    pauses = [math.inf]
    if save_every is not None:
        pauses.append((global_step // save_every + 1) * save_every)
    later = bisect.bisect_right(observed, global_step)
    if later < len(observed):
        pauses.append(observed[later])
    return min(pauses)


def check_optimizer(optimizer: Any) -> optax.GradientTransformation:
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax.GradientTransformation (e.g. "
                        f"lecopt.sgd(0.1)); got {type(optimizer).__name__}")
    return optimizer


def epoch_means(losses: np.ndarray, errors: np.ndarray) -> tuple[float, float]:
    """Means of an epoch's step losses and errors over its finite steps (NaN if none)."""
    finite = np.isfinite(losses)
    if not finite.any():
        return math.nan, math.nan
    return float(np.mean(losses[finite], dtype=np.float64)), \
        float(np.mean(errors[finite], dtype=np.float64))


def progress_bar(progress: bool, total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="epoch", disable=not progress,
                dynamic_ncols=True, leave=True)


def _show(bar: Any, history: History) -> None:
    post = {"loss": f"{history.train_loss[-1]:.4f}"}
    if history.test_error:
        post["test_err"] = f"{history.test_error[-1]:.4f}"
    bar.set_postfix(post, refresh=False)
    bar.update(1)
