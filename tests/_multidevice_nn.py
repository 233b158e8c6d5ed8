"""Cross-device BatchNorm checks on 4 simulated CPU devices (run by tests/test_nn.py).

Run as a script in a fresh process (the device count must be set before JAX starts):
``XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu python
tests/_multidevice_nn.py`` prints ``ALL OK`` or raises. With ``--bench`` it times BatchNorm's
forward+backward under ``shard_map`` against one device on the whole batch.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=4").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from lecopt import nn as lnn  # noqa: E402
from lecopt import optimizers  # noqa: E402

D = 4
assert len(jax.devices()) == D, jax.devices()
MESH = Mesh(np.array(jax.devices()), ("batch",))


def close(a, b, tol, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = np.max(np.abs(a - b) / (np.abs(b) + 1.0))
    assert err <= tol, f"{what}: max relative error {err:.3g} > {tol:g}"


def bn_fwd_bwd(module, sharded: bool):
    """value_and_grad of sum(out * ct) w.r.t. x, params; plus the new running averages."""

    def apply(x, params, stats):
        return module.apply({"params": params, "batch_stats": stats}, x,
                            use_running_average=False, mutable=["batch_stats"])

    if sharded:
        apply = jax.shard_map(apply, mesh=MESH, in_specs=(P("batch"), P(), P()),
                              out_specs=(P("batch"), P()))

    def loss(x, params, stats, ct):
        y, upd = apply(x, params, stats)
        return jnp.sum(y * ct), (y, upd["batch_stats"])

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def check_batchnorm() -> None:
    rng = np.random.default_rng(0)
    cases = [((16, 6), 0.0), ((8, 3, 2, 5), 2.0), ((32, 4), 1e4)]
    for shape, offset in cases:
        x = jnp.asarray(rng.normal(size=shape) * rng.uniform(0.5, 2, shape[-1]) + offset,
                        jnp.float32)
        ct = jnp.asarray(rng.normal(size=shape), jnp.float32)
        one = lnn.BatchNorm(momentum=0.8)
        many = lnn.BatchNorm(momentum=0.8, axis_name="batch")
        variables = one.init(jax.random.key(0), x, use_running_average=False)
        params = {"scale": jnp.asarray(rng.uniform(0.5, 2, shape[-1]), jnp.float32),
                  "bias": jnp.asarray(rng.normal(size=shape[-1]), jnp.float32)}
        stats = variables["batch_stats"]
        (l1, (y1, s1)), g1 = bn_fwd_bwd(one, False)(x, params, stats, ct)
        xs = jax.device_put(x, NamedSharding(MESH, P("batch")))
        (l4, (y4, s4)), g4 = bn_fwd_bwd(many, True)(xs, params, stats, ct)
        what = f"{shape} offset {offset:g}"
        close(y4, y1, 2e-5, f"output {what}")
        close(s4["mean"], s1["mean"], 1e-6, f"running mean {what}")
        close(s4["var"], s1["var"], 2e-5, f"running var {what}")
        close(g4[0], g1[0], 1e-4, f"d/dx {what}")
        close(g4[1]["scale"], g1[1]["scale"], 1e-4, f"d/dgamma {what}")
        close(g4[1]["bias"], g1[1]["bias"], 1e-4, f"d/dbeta {what}")
        # Independent reference for the statistics: float64 NumPy over the whole batch.
        xd = np.asarray(x, np.float64)
        red = tuple(range(xd.ndim - 1))
        close(s4["var"], 0.8 + 0.2 * xd.var(red), 1e-6, f"running var vs NumPy {what}")
        if offset:
            sd = np.asarray(y4, np.float64).reshape(-1, shape[-1])
            expected = np.sqrt(xd.var(red) / (xd.var(red) + 1e-5))
            yd = (sd - np.asarray(params["bias"])) / np.asarray(params["scale"])
            err = np.max(np.abs(yd.std(0) / expected - 1))
            assert err <= 1e-3, f"std at offset {offset:g} under shard_map: {err}"


def check_pmap() -> None:
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(D, 3, 5)) + 2.0, jnp.float32)
    bn = lnn.BatchNorm(axis_name="batch")
    variables = bn.init(jax.random.key(0), x[0], use_running_average=False)
    y4, upd = jax.pmap(
        lambda x: bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"]),
        axis_name="batch")(x)
    y1, upd1 = bn.clone(axis_name=None).apply(variables, x.reshape(-1, 5),
                                              use_running_average=False,
                                              mutable=["batch_stats"])
    close(y4.reshape(-1, 5), y1, 2e-5, "pmap output")
    for i in range(D):
        close(upd["batch_stats"]["var"][i], upd1["batch_stats"]["var"], 1e-6, "pmap var")


def check_one_row_per_device() -> None:
    # 1 row on each of 4 devices is 4 values per feature: allowed, equal to one device.
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(D, 3)), jnp.float32)
    ct = jnp.ones_like(x)
    one, many = lnn.BatchNorm(), lnn.BatchNorm(axis_name="batch")
    v = one.init(jax.random.key(0), x, use_running_average=False)
    (_, (y1, _)), _ = bn_fwd_bwd(one, False)(x, v["params"], v["batch_stats"], ct)
    (_, (y4, _)), _ = bn_fwd_bwd(many, True)(x, v["params"], v["batch_stats"], ct)
    close(y4, y1, 2e-5, "one row per device")


def _train_step(model, tx, loss_reduce):
    def step(params, stats, opt_state, xb, yb):
        def loss(p):
            logits, upd = model.apply({"params": p, "batch_stats": stats}, xb, train=True,
                                      mutable=["batch_stats"])
            logp = jax.nn.log_softmax(logits)
            return loss_reduce(-jnp.take_along_axis(logp, yb[:, None], axis=1).mean()), upd

        (l, upd), g = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = tx.update(g, opt_state, params)
        params = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
        return params, upd["batch_stats"], opt_state, l

    return step


def check_mlp_training() -> None:
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(32, 4, 4, 1)) + 1.0, jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 32), jnp.int32)
    tx = optimizers.sgd(0.03, momentum=0.9)
    kw = {"features": (16, 12), "num_classes": 10, "batch_norm": True}
    one = lnn.MLP(**kw)
    variables = one.init(jax.random.key(0), x, train=False)
    state0 = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))

    step1 = jax.jit(_train_step(one, tx, lambda l: l))
    # (a) jit on a batch sharded over the mesh (XLA inserts the collectives itself).
    sh = NamedSharding(MESH, P("batch"))
    # (b) shard_map with BatchNorm(axis_name="batch"); the loss is the mean over devices.
    many = lnn.MLP(**kw, axis_name="batch")
    step_sm = jax.jit(jax.shard_map(
        _train_step(many, tx, lambda l: jax.lax.pmean(l, "batch")), mesh=MESH,
        in_specs=(P(), P(), P(), P("batch"), P("batch")), out_specs=(P(), P(), P(), P())))

    # Replicated state on the mesh from the start, so each step function compiles once.
    ref = state0
    sharded = smapped = jax.device_put(state0, NamedSharding(MESH, P()))
    for i in range(2):
        xb, yb = x + 0.1 * i, y
        ref = step1(*ref[:3], xb, yb)
        sharded = step1(*sharded[:3], jax.device_put(xb, sh), jax.device_put(yb, sh))
        smapped = step_sm(*smapped[:3], jax.device_put(xb, sh), jax.device_put(yb, sh))
        for name, got in [("jit sharded", sharded), ("shard_map", smapped)]:
            close(got[3], ref[3], 1e-5, f"loss step {i} {name}")
            for a, b in zip(jax.tree_util.tree_leaves(got[:3]), jax.tree_util.tree_leaves(ref[:3])):
                close(a, b, 2e-5, f"state after step {i} ({name})")
    assert sharded[0]["Dense_0"]["kernel"].sharding.is_fully_replicated


def bench() -> None:
    from lecopt.bench.timing import interleaved

    x = jax.random.normal(jax.random.key(0), (4 * 256, 1024)) + 3.0
    ct = jax.random.normal(jax.random.key(1), x.shape)
    xs = jax.device_put(x, NamedSharding(MESH, P("batch")))
    many, one = lnn.BatchNorm(axis_name="batch"), lnn.BatchNorm()
    v = one.init(jax.random.key(0), x, use_running_average=False)
    sharded, whole = bn_fwd_bwd(many, True), bn_fwd_bwd(one, False)
    fns = {"4 devices (shard_map)": lambda: jax.block_until_ready(
               sharded(xs, v["params"], v["batch_stats"], ct)),
           "1 device": lambda: jax.block_until_ready(
               whole(x, v["params"], v["batch_stats"], ct))}
    res = interleaved(fns, rounds=20, repeats=3)
    for k, r in res.items():
        print(f"{k}: {r['median'] * 1e3:.3f} ms")


if __name__ == "__main__":
    if "--bench" in sys.argv:
        bench()
        sys.exit(0)
    check_batchnorm()
    check_pmap()
    check_one_row_per_device()
    check_mlp_training()
    print("ALL OK")
