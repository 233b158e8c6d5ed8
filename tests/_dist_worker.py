"""Subprocess worker of tests/test_multiprocess.py: one process of a (multi-process) ``fit``.

``python tests/_dist_worker.py CONFIG.json OUT_PREFIX`` trains the run described by
CONFIG.json (see :func:`setup`) with ``mesh=`` over every device of every process, and writes
``OUT_PREFIX.<process>.npz``: the final state's leaves, the history as JSON, ``train.evaluate``
of the final state on the test set, the number of processes and of global and local devices.
With ``$JAX_NUM_PROCESSES`` > 1 it first joins the run through
:func:`lecopt.distributed.initialize` (coordinator, count and index from JAX's environment
variables, as ``lecopt.distributed.launch_local`` sets them). It prints ``START`` before
training, ``CKPT <step>`` after each checkpoint committed (process 0 renames the checkpoints,
so only it prints these) and ``DONE`` at the end.
"""

from __future__ import annotations

import json
import os
import sys


def setup(config: dict):
    """(model, optimizer, data, fit keyword arguments) of a run described by ``config``:
    ``features``, ``n_train`` (None: all of mnist-5k), ``n_test``, ``epochs``, ``batch_size``,
    ``seed``, ``lr``; the optimizer is ``lecopt train``'s (``cli.build_optimizer``, sgd with
    momentum 0.9 and weight decay 1e-3), the model the lecture's MLP with BatchNorm."""
    from lecopt import cli, data, nn

    ds = data.load("mnist-5k")
    n, m = config.get("n_train"), config.get("n_test")
    small = {"x_train": ds.x_train[:n], "y_train": ds.y_train[:n],
             "x_test": ds.x_test[:m], "y_test": ds.y_test[:m]}
    model = nn.MLP(features=tuple(config["features"]), batch_norm=True)
    tx = cli.build_optimizer("sgd", config["lr"], 0.9, 1e-3)
    kw = {"epochs": config["epochs"], "batch_size": config["batch_size"],
          "seed": config["seed"], "progress": False}
    return model, tx, small, kw


def main() -> None:
    config_path, prefix = sys.argv[1], sys.argv[2]
    with open(config_path) as f:
        config = json.load(f)
    # This process's own changes (a test of processes that disagree).
    config.update(json.loads(os.environ.get("LECOPT_TEST_CONFIG_CHANGES", "{}")))
    import jax

    cache = os.environ.get("LECOPT_TEST_JAX_CACHE")
    if cache:  # later runs load the compiled programs instead of compiling them again
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if int(os.environ.get("JAX_NUM_PROCESSES", "1")) > 1:
        from lecopt import distributed

        distributed.initialize(timeout_s=float(os.environ.get("LECOPT_TEST_INIT_TIMEOUT", "60")),
                               heartbeat_timeout_s=float(
                                   os.environ.get("LECOPT_TEST_HEARTBEAT", "10")))
    ckpt = config.get("checkpoint_dir")
    if ckpt:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from _train_worker import _watch_finalize

        _watch_finalize(0)
    import numpy as np
    from jax.sharding import Mesh

    from lecopt import train

    model, tx, small, kw = setup(config)
    if ckpt:
        kw.update(checkpoint_dir=ckpt, checkpoint_every=config["checkpoint_every"],
                  max_to_keep=2)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    print("START", flush=True)
    state, history = train.fit(model, tx, small, mesh=mesh, **kw)
    evaluation = train.evaluate(model, state.variables, small["x_test"], small["y_test"])
    leaves = {f"{i:03d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(state))}
    out = f"{prefix}.{jax.process_index()}.npz"
    tmp = out + ".tmp.npz"
    np.savez(tmp, history=json.dumps(history.to_dict()), processes=jax.process_count(),
             devices=len(jax.devices()), local_devices=len(jax.local_devices()),
             evaluate=np.asarray(evaluation, np.float64), **leaves)
    os.replace(tmp, out)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
