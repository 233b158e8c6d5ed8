"""Subprocess worker of the kill-and-resume tests in tests/test_train.py.

``python tests/_train_worker.py CHECKPOINT_DIR OUT.npz [linen|nnx]`` trains a tiny MLP with
BatchNorm (``lecopt.nn.MLP``, or ``lecopt.nnx.MLP`` with ``nnx``) on a slice of mnist-5k with
frequent checkpoints, resuming from CHECKPOINT_DIR, and writes the final state's leaves and
the per-step losses to OUT.npz (``-`` as CHECKPOINT_DIR: an uninterrupted run without
checkpoints, the reference). For the NNX model the leaves are the trained module's
``nnx.state`` (its Params and BatchStats) and the optimizer state, which ``fit`` hands to a
callback at the last step. It prints ``START`` right before training begins,
``CKPT <step>`` after each checkpoint is committed and ``DONE`` at the end. With
``LECOPT_TEST_HANG_AT_FINALIZE=k`` the k-th checkpoint, fully written into orbax's temporary
directory but not yet renamed, prints ``FINALIZING <tmp dir>`` and hangs, so that the test
can kill the process in the middle of a checkpoint write.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

EPOCHS = 4
BATCH = 32
EVERY = 4  # checkpoint every 4 steps: 16 steps per epoch, 16 checkpoints in all
N_TRAIN, N_TEST = 512, 128


def setup(kind: str = "linen"):
    """(model, optimizer, data, fit keyword arguments) of the run, shared with the test."""
    from lecopt import data, nn, optimizers, schedules

    ds = data.load("mnist-5k")
    small = {"x_train": ds.x_train[:N_TRAIN], "y_train": ds.y_train[:N_TRAIN],
             "x_test": ds.x_test[:N_TEST], "y_test": ds.y_test[:N_TEST]}
    # A schedule and momentum: the optimizer state (velocity, step count) must resume too.
    tx = optimizers.sgd(schedules.linear_decay(0.1, 0.01, EPOCHS * N_TRAIN // BATCH),
                        momentum=0.9)
    if kind == "nnx":
        from flax import nnx

        import lecopt.nnx

        model = lecopt.nnx.MLP(784, (16,), 10, batch_norm=True, rngs=nnx.Rngs(0))
    else:
        model = nn.MLP(features=(16,), batch_norm=True)
    return model, tx, small, {"epochs": EPOCHS, "batch_size": BATCH, "seed": 3,
                              "progress": False}


def _watch_finalize(hang_at: int) -> None:
    """Prints ``CKPT <step>`` after each checkpoint is committed (renamed); hangs before the
    ``hang_at``-th commit (if > 0), after printing ``FINALIZING <tmp dir>``."""
    from orbax.checkpoint._src.path import atomicity

    original = atomicity.AtomicRenameTemporaryPath.finalize
    count = {"n": 0}

    async def finalize(self):
        # Items ("state", "meta") are finalized inside the step's directory first; count
        # only the renames of step directories ("<step>.orbax-checkpoint-tmp").
        name = self.get().name
        step_level = name.split(".")[0].isdigit()
        if step_level:
            count["n"] += 1
            if count["n"] == hang_at:
                print(f"FINALIZING {self.get()}", flush=True)
                time.sleep(600)
        result = await original(self)
        if step_level:
            print(f"CKPT {name.split('.')[0]}", flush=True)
        return result

    atomicity.AtomicRenameTemporaryPath.finalize = finalize


def main() -> None:
    ckpt_dir, out = sys.argv[1], sys.argv[2]
    kind = sys.argv[3] if len(sys.argv) > 3 else "linen"
    import jax

    cache = os.environ.get("LECOPT_TEST_JAX_CACHE")
    if cache:  # restarts load the compiled programs instead of compiling them again
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if ckpt_dir != "-":
        _watch_finalize(int(os.environ.get("LECOPT_TEST_HANG_AT_FINALIZE", "0")))
    from lecopt import train

    model, tx, small, kw = setup(kind)
    final = {}
    if kind == "nnx":  # the optimizer state, which the trained module does not hold
        kw.update(callback=lambda step, state: final.update(opt_state=state.opt_state),
                  callback_steps=(EPOCHS * (N_TRAIN // BATCH),))
    print("START", flush=True)
    if ckpt_dir == "-":
        state, history = train.fit(model, tx, small, **kw)
    else:
        state, history = train.fit(model, tx, small, checkpoint_dir=ckpt_dir,
                                   checkpoint_every=EVERY, max_to_keep=2, **kw)
    if kind == "nnx":
        from flax import nnx

        state = (nnx.state(state), final["opt_state"])
    leaves = {f"{i:03d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(state))}
    leaves["step_loss"] = np.asarray(history.step_loss)
    tmp = out + ".tmp.npz"
    np.savez(tmp, **leaves)
    os.replace(tmp, out)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
