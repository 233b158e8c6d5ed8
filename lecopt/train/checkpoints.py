"""Checkpoints of ``fit`` with orbax-checkpoint: what is saved, and when a checkpoint fits a run.

A checkpoint holds the state's leaves and a JSON record: the position (epoch, step in it,
non-finite steps skipped so far in it), the data key, the history so far, the elapsed time and
the run's :func:`fingerprint`. Orbax writes into a temporary directory and renames it when
complete (atomic on a local file system), so an interrupted write leaves the previous
checkpoint intact; unfinished temporary directories are removed when the next run opens the
directory. Restoring takes the newest readable checkpoint; one of another run raises
:class:`~lecopt.train.CheckpointMismatchError`. Across processes (a mesh over several), every
process saves and restores through orbax's multi-process protocol into one directory that all
of them share: the processes meet at barriers, the replicated state and the JSON record are
written once, and process 0 renames the checkpoint when every part is written.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from lecopt import partition
from lecopt.train.records import (
    CheckpointMismatchError,
    History,
    TrainState,
    stable_repr,
    to_jsonable,
)

__all__ = ["Position", "Resumed", "Checkpointer", "fingerprint"]


class Position(NamedTuple):
    """Where training is: ``epoch``, steps done in it, non-finite steps skipped in it."""

    epoch: int
    step_in_epoch: int
    skipped_in_epoch: int


class Resumed(NamedTuple):
    """What :meth:`Checkpointer.restore` found."""

    state: TrainState
    position: Position
    history: History
    elapsed: float


def fingerprint(model: Any, state_template: TrainState, optimizer: partition.Structure,
                hyperparameters: Sequence[Any], batch_size: int, seed: int,
                x_train: jax.Array) -> dict[str, Any]:
    """What must agree between a checkpoint and the run that resumes from it."""
    leaves, treedef = jax.tree.flatten(state_template)
    return to_jsonable({
        "model": stable_repr(model),
        "state_structure": stable_repr(treedef),
        "state_shapes": [f"{x.dtype}{list(x.shape)}" for x in leaves],
        "optimizer_structure": stable_repr(optimizer.treedef)
        + stable_repr(list(optimizer.static_leaves)),
        "optimizer_hyperparameters": [to_jsonable(np.asarray(x)) for x in hyperparameters],
        "batch_size": batch_size,
        "seed": seed,
        "train_data": f"{x_train.dtype}{list(x_train.shape)}",
    })


class Checkpointer:
    """orbax ``CheckpointManager`` around the state (leaves) and a JSON record."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int,
                 run_fingerprint: dict[str, Any]):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = os.path.abspath(os.fspath(directory))
        self.fingerprint = run_fingerprint
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, global_step: int, state: TrainState, position: Position, history: History,
             elapsed: float, data_key: jax.Array) -> None:
        meta = {
            "fingerprint": self.fingerprint,
            "epoch": position.epoch,
            "step_in_epoch": position.step_in_epoch,
            "epoch_skipped": position.skipped_in_epoch,
            "data_key": np.asarray(data_key).tolist(),
            "elapsed": elapsed,
            "history": history.to_dict(),
        }
        ocp = self._ocp
        self.manager.save(global_step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(jax.tree.leaves(state)),
            meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, template: TrainState, sharding: Any) -> Resumed | None:
        """The newest readable checkpoint, or None if there is none."""
        ocp = self._ocp
        leaves, treedef = jax.tree.flatten(template)
        abstract = [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding) for x in leaves]
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                meta = self.manager.restore(step, args=ocp.args.Composite(
                    meta=ocp.args.JsonRestore()))["meta"]
                self._check_fingerprint(step, meta.get("fingerprint", {}))
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract)))["state"]
            except CheckpointMismatchError:
                raise
            except Exception as e:  # any unreadable checkpoint: try an older one
                warnings.warn(f"checkpoint {step} in {self.directory} is unreadable ({e}); "
                              "trying an older one", stacklevel=3)
                continue
            position = Position(int(meta["epoch"]), int(meta["step_in_epoch"]),
                                int(meta["epoch_skipped"]))
            return Resumed(jax.tree.unflatten(treedef, list(restored)), position,
                           History.from_dict(meta["history"]), float(meta["elapsed"]))
        return None

    def _check_fingerprint(self, step: int, saved: Mapping[str, Any]) -> None:
        diffs = [k for k in self.fingerprint if saved.get(k) != self.fingerprint[k]]
        if diffs:
            details = "; ".join(f"{k}: checkpoint has {saved.get(k)!r}, this run has "
                                f"{self.fingerprint[k]!r}" for k in diffs)
            raise CheckpointMismatchError(
                f"checkpoint_dir={self.directory!r} holds a checkpoint (step {step}) of a "
                f"different run ({', '.join(diffs)} differ): {details}. Use another "
                "checkpoint_dir, or delete it to start afresh.")

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
