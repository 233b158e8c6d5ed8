"""What the training layer returns: the state, the history, the errors, and JSON conversion."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax
import jax
import numpy as np

__all__ = ["TrainState", "History", "Evaluation", "SweepRun", "NonFiniteError",
           "CheckpointMismatchError", "to_jsonable", "stable_repr"]


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
        for ``model.apply(state.variables, x, train=False)`` and :func:`~lecopt.train.evaluate`."""
        if jax.tree.leaves(self.batch_stats) or self.batch_stats:
            return {"params": self.params, "batch_stats": self.batch_stats}
        return {"params": self.params}


@dataclasses.dataclass
class History:
    """What :func:`~lecopt.train.fit` measured. Lists of Python numbers: ``to_dict`` is JSON-ready.

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

    Example:
      >>> h = History(step_loss=[2.0, 1.0], train_loss=[1.5], steps_per_epoch=2)
      >>> h.epochs, History.from_dict(h.to_dict()) == h
      (1, True)
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
    """Result of :func:`~lecopt.train.evaluate`: mean cross-entropy ``loss`` (nats) and
    ``error`` (fraction misclassified), as Python floats."""

    loss: float
    error: float


@dataclasses.dataclass
class SweepRun:
    """One run of :func:`~lecopt.train.sweep`: its ``setting`` (the ``make_optimizer`` keyword
    arguments, as given in the grid), ``seed``, final ``state`` and ``history``."""

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


def to_jsonable(x: Any) -> Any:
    """``x`` as plain JSON types (arrays become lists, unknown objects a stable repr).

    Example:
      >>> to_jsonable({"lr": np.float32(0.5), "sizes": (1, 2)})
      {'lr': 0.5, 'sizes': [1, 2]}
    """
    if isinstance(x, Mapping):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_jsonable(v) for v in x]
    if isinstance(x, bool | int | float | str) or x is None:
        return x
    if isinstance(x, np.generic | np.ndarray | jax.Array):
        a = np.asarray(x)
        return a.item() if a.ndim == 0 else a.tolist()
    return stable_repr(x)


def stable_repr(x: Any) -> str:
    """``repr(x)`` without memory addresses (a function's repr changes between processes)."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(x))
