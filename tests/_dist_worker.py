"""Subprocess worker of tests/test_multiprocess.py: one process of a (multi-process) run that
does several jobs in turn (``fit``, ``sweep``), so that one set of processes serves several
checks and pays JAX's start once.

``python tests/_dist_worker.py CONFIG.json OUT_PREFIX`` does the jobs of CONFIG.json
(``{"jobs": [job, ...]}``, see :func:`setup`) with ``mesh=`` over every device of every
process, and writes ``OUT_PREFIX.<job name>.<process>.npz`` for each:

* ``fit``: the final state's leaves ``"000"``, ..., the history as JSON, ``train.evaluate``
  of the final state on the test set, the number of processes and of global and local devices;
* ``sweep``: for each run ``r`` its leaves ``"r<r>_000"``, ... and ``histories`` (JSON list);
* a job with ``"expect_error": true`` must raise ``ValueError``: its message is written
  (``error``) and printed (``ValueError: ...``), and the next job runs.

With ``$JAX_NUM_PROCESSES`` > 1 it first joins the run through
:func:`lecopt.distributed.initialize` (coordinator, count and index from JAX's environment
variables, as ``lecopt.distributed.launch_local`` sets them). It prints ``START <job>`` before
each job, ``CKPT <step>`` after each checkpoint committed (process 0 renames the checkpoints,
so only it prints these; with ``$LECOPT_TEST_HANG_AT_FINALIZE`` = n it hangs before the n-th
commit) and ``DONE <job>`` after it. ``$LECOPT_TEST_CONFIG_CHANGES`` (``{job name:
{key: value}}``) changes this process's jobs (a test of processes that disagree).
"""

from __future__ import annotations

import json
import os
import sys
import time


def setup(job: dict):
    """(model, make_optimizer, data, keyword arguments) of a job: ``features``, ``n_train``
    (None: all of mnist-5k), ``n_test``, ``epochs``, ``batch_size``, ``seed``, ``lr``; the
    optimizer is ``lecopt train``'s (``cli.build_optimizer``: sgd with momentum 0.9 and weight
    decay 1e-3) of a learning rate, the model the lecture's MLP with BatchNorm."""
    from lecopt import cli, data, nn

    ds = data.load("mnist-5k")
    n, m = job.get("n_train"), job.get("n_test")
    small = {"x_train": ds.x_train[:n], "y_train": ds.y_train[:n],
             "x_test": ds.x_test[:m], "y_test": ds.y_test[:m]}
    model = nn.MLP(features=tuple(job["features"]), batch_norm=True)

    def make_optimizer(lr):
        return cli.build_optimizer("sgd", lr, 0.9, 1e-3)

    kw = {"epochs": job["epochs"], "batch_size": job["batch_size"], "progress": False}
    return model, make_optimizer, small, kw


def _fit(job: dict, mesh) -> dict:
    import jax
    import numpy as np

    from lecopt import train

    model, make_optimizer, small, kw = setup(job)
    if job.get("checkpoint_dir"):
        kw.update(checkpoint_dir=job["checkpoint_dir"],
                  checkpoint_every=job["checkpoint_every"], max_to_keep=2)
    state, history = train.fit(model, make_optimizer(job["lr"]), small, mesh=mesh,
                               seed=job["seed"], **kw)
    evaluation = train.evaluate(model, state.variables, small["x_test"], small["y_test"])
    leaves = {f"{i:03d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(state))}
    return dict(history=json.dumps(history.to_dict()), processes=jax.process_count(),
                devices=len(jax.devices()), local_devices=len(jax.local_devices()),
                evaluate=np.asarray(evaluation, np.float64), **leaves)


def _sweep(job: dict, mesh) -> dict:
    import jax
    import numpy as np

    from lecopt import train

    model, make_optimizer, small, kw = setup(job)
    runs = train.sweep(model, make_optimizer, {"lr": job["lrs"]}, small, mesh=mesh,
                       seeds=job["seeds"], strategy=job["strategy"], **kw)
    out = {"histories": json.dumps([r.history.to_dict() for r in runs]),
           "runs": json.dumps([[r.setting["lr"], r.seed] for r in runs])}
    for r, run in enumerate(runs):
        for i, x in enumerate(jax.tree.leaves(run.state)):
            out[f"r{r}_{i:03d}"] = np.asarray(x)
    return out


def main() -> None:
    config_path, prefix = sys.argv[1], sys.argv[2]
    with open(config_path) as f:
        config = json.load(f)
    changes = json.loads(os.environ.get("LECOPT_TEST_CONFIG_CHANGES", "{}"))
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
    if any(job.get("checkpoint_dir") for job in config["jobs"]):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from _train_worker import _watch_finalize

        _watch_finalize(int(os.environ.get("LECOPT_TEST_HANG_AT_FINALIZE", "0")))
    import numpy as np
    from jax.sharding import Mesh

    mesh = Mesh(np.array(jax.devices()), ("data",))
    print(f"JOINED (process time {time.process_time():.1f} s)", flush=True)
    for job in config["jobs"]:
        job = {**job, **changes.get(job["name"], {})}
        print(f"START {job['name']}", flush=True)
        try:
            result = (_sweep if job["kind"] == "sweep" else _fit)(job, mesh)
        except ValueError as e:
            if not job.get("expect_error"):
                raise
            print(f"ValueError: {e}", flush=True)
            result = {"error": str(e)}
        else:
            if job.get("expect_error"):
                raise AssertionError(f"job {job['name']} raised no ValueError")
        out = f"{prefix}.{job['name']}.{jax.process_index()}.npz"
        tmp = out + ".tmp.npz"
        np.savez(tmp, **result)
        os.replace(tmp, out)
        print(f"DONE {job['name']} (process time {time.process_time():.1f} s)", flush=True)


if __name__ == "__main__":
    main()
