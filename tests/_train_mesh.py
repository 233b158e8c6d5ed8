"""Subprocess script of the ``mesh=`` test in tests/test_train.py (4 simulated CPU devices).

Run as ``python tests/_train_mesh.py OUT.json``: trains an MLP with BatchNorm on a slice of
mnist-5k once on one device and once with ``mesh=`` over 4 devices, and writes the largest
differences, the number of devices and the shardings it saw to OUT.json.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from lecopt import data, nn, optimizers, train  # noqa: E402


def main() -> None:
    out = sys.argv[1]
    # A persistent cache, so that compiling the training program again below (to read its
    # HLO) loads it instead of compiling it a second time.
    cache = tempfile.mkdtemp(prefix="lecopt-mesh-cache-")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    ds = data.load("mnist-5k")
    small = (ds.x_train[:512], ds.y_train[:512], ds.x_test[:200], ds.y_test[:200])
    model = nn.MLP(features=(32,), batch_norm=True)
    tx = optimizers.sgd(0.05, momentum=0.9)
    kw = {"epochs": 2, "batch_size": 64, "seed": 1, "progress": False}
    one, h1 = train.fit(model, tx, small, **kw)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    four, h4 = train.fit(model, tx, small, mesh=mesh, **kw)

    def max_rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.max(np.abs(a - b) / (np.abs(b) + 1e-3)))

    diffs = {
        "params": max(max_rel(a, b) for a, b in zip(jax.tree.leaves(four.params),
                                                    jax.tree.leaves(one.params))),
        "batch_stats": max(max_rel(a, b) for a, b in zip(jax.tree.leaves(four.batch_stats),
                                                         jax.tree.leaves(one.batch_stats))),
        "step_loss": max_rel(h4.step_loss, h1.step_loss),
        "test_loss": max_rel(h4.test_loss, h1.test_loss),
    }
    leaf = jax.tree.leaves(four.params)[0]
    # The minibatch seen by the loop body must really be split: look at the compiled program.
    hlo_has_all_reduce = None
    try:
        from lecopt import partition
        from lecopt.train import inputs, programs

        hyperparameters, structure = partition.split(tx)
        key = inputs.prepare(model, small, 64, 1024, mesh).program_key("stop", structure)
        train_steps = programs.train_programs(key).train_steps
        order = programs.epoch_order(programs.seed_keys(1)[1], 0, 512, 8, 64)
        buf = jax.numpy.zeros([8])
        text = train_steps.lower(four, hyperparameters, jax.device_put(small[0]),
                                 jax.device_put(small[1]), order, 0, 8, -1, buf,
                                 buf).compile().as_text()
        hlo_has_all_reduce = "all-reduce" in text
    except Exception as e:  # reported, the test decides
        hlo_has_all_reduce = repr(e)
    result = {
        "devices": len(jax.devices()),
        "diffs": diffs,
        "param_devices": len(leaf.sharding.device_set),
        "param_replicated": bool(leaf.sharding.is_fully_replicated),
        "hlo_has_all_reduce": hlo_has_all_reduce,
        "test_error_one": h1.test_error,
        "test_error_four": h4.test_error,
    }
    with open(out, "w") as f:
        json.dump(result, f)
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
