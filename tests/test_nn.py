"""Tests of lecopt.nn: BatchNorm, MLP, population_batch_stats.

References are independent of the code under test: the lecture's formulas in float64 NumPy,
PyTorch's documented running-variance rule re-implemented in NumPy, flax.linen.BatchNorm
(use_fast_variance=False), autodiff of the plain formula, and finite differences.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from lecopt import nn as lnn
from lecopt import optimizers

EPS = 1e-5
TRAIN = {"use_running_average": False, "mutable": ["batch_stats"]}


@pytest.fixture
def x64():
    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", prev)


def rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- NumPy references


def np_bn_train(z, gamma, beta, reduction, eps=EPS):
    """The lecture: mu, biased sigma^2 over the minibatch, z~ = (z - mu)/sqrt(sigma^2 + eps)."""
    z = np.asarray(z, np.float64)
    mu = z.mean(reduction, keepdims=True)
    var = ((z - mu) ** 2).mean(reduction, keepdims=True)
    return gamma * (z - mu) / np.sqrt(var + eps) + beta, mu, var


def np_bn_eval(z, mu, var, gamma, beta, eps=EPS):
    return gamma * (np.asarray(z, np.float64) - mu) / np.sqrt(var + eps) + beta


def close(a, b, rtol, atol=0.0, what=""):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol,
                               atol=atol, err_msg=what)


def random_params(r, f, dtype=np.float32):
    return {"scale": jnp.asarray(r.uniform(0.5, 2.0, f), dtype),
            "bias": jnp.asarray(r.normal(size=f), dtype)}


# ----------------------------------------------------------------------------- lecture formulas


def test_training_running_averages_and_prediction_match_lecture():
    r = rng(0)
    f, momentum = 5, 0.8
    bn = lnn.BatchNorm(momentum=momentum)
    params = random_params(r, f)
    gamma, beta = np.asarray(params["scale"], np.float64), np.asarray(params["bias"], np.float64)
    variables = bn.init(jax.random.key(0), jnp.ones((4, f)), use_running_average=False)
    # init keeps the running averages at mean 0, var 1 (as Flax/PyTorch)
    close(variables["batch_stats"]["mean"], np.zeros(f), 0)
    close(variables["batch_stats"]["var"], np.ones(f), 0)
    stats = variables["batch_stats"]
    train = jax.jit(lambda p, s, x: bn.apply({"params": p, "batch_stats": s}, x, **TRAIN))
    ra_mean, ra_var = np.zeros(f), np.ones(f)
    for k in range(4):
        z = r.normal(size=(12, f)) * r.uniform(0.5, 3, f) + r.normal(size=f) * 4
        z = z.astype(np.float32)
        y, upd = train(params, stats, jnp.asarray(z))
        stats = upd["batch_stats"]
        want, mu, var = np_bn_train(z, gamma, beta, (0,))
        close(y, want, 1e-5, 1e-5, f"output, batch {k}")
        ra_mean = momentum * ra_mean + (1 - momentum) * mu[0]
        ra_var = momentum * ra_var + (1 - momentum) * var[0]
        close(stats["mean"], ra_mean, 1e-5, 1e-6, f"running mean after batch {k}")
        close(stats["var"], ra_var, 1e-5, 0, f"running var after batch {k}")
    z = r.normal(size=(7, f)).astype(np.float32) * 2
    pred = jax.jit(lambda v, x: bn.apply(v, x, use_running_average=True))(
        {"params": params, "batch_stats": stats}, jnp.asarray(z))
    close(pred, np_bn_eval(z, ra_mean, ra_var, gamma, beta), 1e-5, 1e-5, "prediction")


def test_unbiased_running_var_follows_pytorch_rule():
    # PyTorch (torch.nn.BatchNorm1d docs): running_mean = (1 - m) running_mean + m mean,
    # running_var = (1 - m) running_var + m var_unbiased (Bessel, n/(n-1)), m = 0.1, starting at
    # 0 and 1; the output uses the biased variance. lecopt's momentum is 1 - m.
    r = rng(1)
    f, n, m = 4, 6, 0.1
    bn = lnn.BatchNorm(momentum=1 - m, unbiased_running_var=True)
    variables = bn.init(jax.random.key(0), jnp.ones((n, f)), use_running_average=False)
    params, stats = variables["params"], variables["batch_stats"]
    run_mean, run_var = np.zeros(f), np.ones(f)
    step = jax.jit(lambda s, x: bn.apply({"params": params, "batch_stats": s}, x, **TRAIN))
    for _ in range(3):
        z = (r.normal(size=(n, f)) * 3 + 1).astype(np.float32)
        y, upd = step(stats, jnp.asarray(z))
        stats = upd["batch_stats"]
        zd = z.astype(np.float64)
        mean, var_b = zd.mean(0), zd.var(0)
        run_mean = (1 - m) * run_mean + m * mean
        run_var = (1 - m) * run_var + m * zd.var(0, ddof=1)
        close(y, (zd - mean) / np.sqrt(var_b + EPS), 1e-5, 1e-5, "output uses biased var")
    close(stats["mean"], run_mean, 1e-5, 1e-6)
    close(stats["var"], run_var, 1e-5)
    # and it differs from the biased rule (the test can fail)
    assert not np.allclose(stats["var"], lnn.BatchNorm().apply(
        {"params": params, "batch_stats": variables["batch_stats"]}, jnp.asarray(z),
        **TRAIN)[1]["batch_stats"]["var"], rtol=1e-3)


# ----------------------------------------------------------------------------- parity with Flax


@pytest.mark.parametrize("shape,axis", [((16, 6), -1), ((4, 3, 3, 5), -1), ((4, 5, 3, 2), 1)])
def test_parity_with_flax_two_pass(shape, axis):
    r = rng(2)
    x = jnp.asarray(r.normal(size=shape) * 2 + 3, jnp.float32)
    ct = jnp.asarray(r.normal(size=shape), jnp.float32)
    ours = lnn.BatchNorm(axis=axis, momentum=0.9)
    theirs = fnn.BatchNorm(axis=axis, momentum=0.9, use_fast_variance=False)
    variables = ours.init(jax.random.key(0), x, use_running_average=False)
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(
        theirs.init(jax.random.key(0), x, use_running_average=False))
    params = random_params(r, shape[axis])
    stats = {"mean": jnp.asarray(r.normal(size=shape[axis]), jnp.float32),
             "var": jnp.asarray(r.uniform(1, 2, shape[axis]), jnp.float32)}

    def loss(mod):
        def f(x, p):
            y, upd = mod.apply({"params": p, "batch_stats": stats}, x, **TRAIN)
            return jnp.sum(y * ct), (y, upd["batch_stats"])
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))

    (_, (y1, s1)), g1 = loss(ours)(x, params)
    (_, (y2, s2)), g2 = loss(theirs)(x, params)
    close(y1, y2, 1e-5, 1e-5, "output")
    close(s1["mean"], s2["mean"], 1e-6, 1e-6, "running mean")
    close(s1["var"], s2["var"], 1e-5, 0, "running var")
    close(g1[0], g2[0], 1e-4, 1e-5, "d/dx")
    close(g1[1]["scale"], g2[1]["scale"], 1e-4, 1e-5, "d/dgamma")
    close(g1[1]["bias"], g2[1]["bias"], 1e-5, 1e-5, "d/dbeta")
    v = {"params": params, "batch_stats": stats}
    close(ours.apply(v, x, use_running_average=True),
          theirs.apply(v, x, use_running_average=True), 1e-6, 1e-6, "prediction")


# ----------------------------------------------------------------------------- gradients


def _apply_fn(bn, shape, stats):
    def f(x, scale, bias):
        y, _ = bn.apply({"params": {"scale": scale, "bias": bias}, "batch_stats": stats}, x,
                        **TRAIN)
        return y
    return f


@pytest.mark.parametrize("shape,order", [((5, 3), 2), ((3, 2, 2, 2), 1)])
def test_check_grads_first_and_second_order(x64, shape, order):
    r = rng(3)
    f = shape[-1]
    bn = lnn.BatchNorm(param_dtype=jnp.float64)
    stats = {"mean": jnp.zeros(f), "var": jnp.ones(f)}
    x = jnp.asarray(r.normal(size=shape) * 2 + 1)
    scale, bias = jnp.asarray(r.uniform(0.5, 2, f)), jnp.asarray(r.normal(size=f))
    # a nonlinear readout, so that second derivatives are not trivially zero
    fn = jax.jit(lambda x, s, b: jnp.sum(jnp.sin(_apply_fn(bn, shape, stats)(x, s, b))))
    check_grads(fn, (x, scale, bias), order=order, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)


def test_custom_derivative_equals_autodiff_of_the_formula(x64):
    r = rng(4)
    shape, f = (6, 4), 4
    bn = lnn.BatchNorm(param_dtype=jnp.float64)
    stats = {"mean": jnp.zeros(f), "var": jnp.ones(f)}
    ours = _apply_fn(bn, shape, stats)

    def formula(x, scale, bias):  # the lecture, plain jnp, differentiated by JAX
        mu = x.mean(0)
        var = ((x - mu) ** 2).mean(0)
        return scale * (x - mu) / jnp.sqrt(var + EPS) + bias

    args = (jnp.asarray(r.normal(size=shape) + 3), jnp.asarray(r.uniform(0.5, 2, f)),
            jnp.asarray(r.normal(size=f)))
    ct = jnp.asarray(r.normal(size=shape))
    tang = tuple(jnp.asarray(r.normal(size=a.shape)) for a in args)
    close(ours(*args), formula(*args), 1e-12, 1e-12)

    def derivatives(fn):
        def loss(x, s, b):
            return jnp.sum(jnp.tanh(fn(x, s, b)) * ct)

        def grad_x(x, s, b):
            return jax.grad(loss)(x, s, b)

        return {
            "reverse": jax.grad(loss, argnums=(0, 1, 2))(*args),
            "forward": jax.jvp(fn, args, tang)[1],
            "hessian-vector (forward over reverse)":
                jax.jvp(lambda x: grad_x(x, *args[1:]), args[:1], tang[:1])[1],
            "reverse over reverse": jax.grad(
                lambda x, s, b: jnp.sum(grad_x(x, s, b) ** 2), argnums=(0, 1, 2))(*args),
        }

    got, want = jax.jit(lambda: derivatives(ours))(), jax.jit(lambda: derivatives(formula))()
    for what in want:
        for a, b in zip(jax.tree_util.tree_leaves(got[what]),
                        jax.tree_util.tree_leaves(want[what])):
            close(a, b, 1e-8, 1e-10, what)


# ----------------------------------------------------------------------------- exactness, dtypes


def test_offset_1e4_normalized_std_is_one():
    r = rng(5)
    x = (1e4 + r.normal(size=(256, 16))).astype(np.float32)
    bn = lnn.BatchNorm()
    v = bn.init(jax.random.key(0), x, use_running_average=False)
    y, upd = jax.jit(lambda v, x: bn.apply(v, x, **TRAIN))(v, jnp.asarray(x))
    xd = x.astype(np.float64)
    expected = np.sqrt(xd.var(0) / (xd.var(0) + EPS))
    err = np.max(np.abs(np.asarray(y, np.float64).std(0) / expected - 1))
    assert err <= 1e-3, err
    assert np.max(np.abs(np.asarray(y, np.float64).mean(0))) <= 1e-3  # centred exactly too
    close(upd["batch_stats"]["var"], 0.9 + 0.1 * xd.var(0), 1e-5)
    close(upd["batch_stats"]["mean"], 0.1 * xd.mean(0), 1e-6)
    # The check is sensitive: E[x^2] - E[x]^2 in float32 misses it by far.
    xj = jnp.asarray(x)
    naive_var = jnp.maximum((xj * xj).mean(0) - xj.mean(0) ** 2, 0)
    naive_std = np.asarray((xj - xj.mean(0)) / jnp.sqrt(naive_var + EPS), np.float64).std(0)
    assert np.max(np.abs(naive_std / expected - 1)) > 1e-3


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_input_keeps_float32_statistics(dtype):
    r = rng(6)
    x = jnp.asarray(r.normal(size=(32, 8)) * 2 + 100, dtype)
    bn = lnn.BatchNorm()
    v = bn.init(jax.random.key(0), x, use_running_average=False)
    v = {"params": random_params(r, 8), "batch_stats": v["batch_stats"]}
    y, upd = jax.jit(lambda v, x: bn.apply(v, x, **TRAIN))(v, x)
    assert y.dtype == dtype
    assert upd["batch_stats"]["mean"].dtype == jnp.float32
    assert upd["batch_stats"]["var"].dtype == jnp.float32
    xd = np.asarray(x.astype(jnp.float32), np.float64)  # the exact values the module sees
    close(upd["batch_stats"]["mean"], 0.1 * xd.mean(0), 1e-6)
    close(upd["batch_stats"]["var"], 0.9 + 0.1 * xd.var(0), 1e-5)
    want, _, _ = np_bn_train(xd, np.asarray(v["params"]["scale"]),
                             np.asarray(v["params"]["bias"]), (0,))
    # only the final rounding to the low-precision dtype
    close(y, want, 2.0 ** -7, 2.0 ** -7 * 4)
    g = jax.grad(lambda x: jnp.sum(bn.apply(v, x, **TRAIN)[0].astype(jnp.float32) ** 2))(x)
    assert g.dtype == dtype and bool(jnp.all(jnp.isfinite(g.astype(jnp.float32))))
    pred = bn.apply({**v, **upd}, x, use_running_average=True)
    assert pred.dtype == dtype


@pytest.mark.parametrize("axis", [-1, 1])
def test_images_normalize_per_channel(axis):
    r = rng(7)
    shape = (3, 4, 4, 5) if axis == -1 else (3, 5, 4, 4)
    c = 5
    loc = np.arange(c) * 10.0
    bshape = [1, 1, 1, 1]
    bshape[axis] = c
    x = (r.normal(size=shape) * (1 + np.arange(c)).reshape(bshape)
         + loc.reshape(bshape)).astype(np.float32)
    bn = lnn.BatchNorm(axis=axis)
    v = bn.init(jax.random.key(0), x, use_running_average=False)
    assert v["params"]["scale"].shape == (c,)
    y, upd = jax.jit(lambda v, x: bn.apply(v, x, **TRAIN))(v, jnp.asarray(x))
    red = tuple(a for a in range(4) if a != axis % 4)
    want, mu, var = np_bn_train(x, 1.0, 0.0, red)
    close(y, want, 1e-5, 1e-5)
    close(upd["batch_stats"]["var"], 0.9 + 0.1 * var.reshape(c), 1e-5)


def test_one_value_per_feature_raises_in_training_only():
    bn = lnn.BatchNorm()
    v = bn.init(jax.random.key(0), jnp.ones((4, 8)), use_running_average=False)
    with pytest.raises(ValueError, match=r"shape \(1, 8\).*1 value"):
        bn.apply(v, jnp.ones((1, 8)), **TRAIN)
    with pytest.raises(ValueError, match=r"shape \(1, 8\)"):
        jax.jit(lambda x: bn.apply(v, x, **TRAIN))(jnp.ones((1, 8)))
    with pytest.raises(ValueError, match=r"shape \(1, 1, 1, 8\)"):
        bn.apply(v, jnp.ones((1, 1, 1, 8)), **TRAIN)
    with pytest.raises(ValueError, match=r"shape \(1, 8\)"):
        bn.init(jax.random.key(0), jnp.ones((1, 8)), use_running_average=False)
    # N*H*W = 2 is enough; prediction for a single sample is fine
    y, _ = bn.apply(v, jnp.arange(16.0).reshape(1, 2, 1, 8), **TRAIN)
    close(y[0, :, 0], np.array([[-1.0] * 8, [1.0] * 8]) * np.sqrt(16 / (16 + EPS)), 1e-6)
    pred = bn.apply(v, 3 * jnp.ones((1, 8)), use_running_average=True)
    close(pred, 3 * np.ones((1, 8)) / np.sqrt(1 + EPS), 1e-6)


# ----------------------------------------------------------------------------- API behaviour


def test_use_running_average_merge_and_flags():
    x = jnp.asarray(rng(8).normal(size=(6, 3)), jnp.float32)
    v = lnn.BatchNorm().init(jax.random.key(0), x, use_running_average=False)
    a = lnn.BatchNorm(use_running_average=False).apply(v, x, mutable=["batch_stats"])[0]
    b = lnn.BatchNorm().apply(v, x, use_running_average=False, mutable=["batch_stats"])[0]
    close(a, b, 0)
    with pytest.raises(ValueError, match="use_running_average"):
        lnn.BatchNorm().apply(v, x)
    with pytest.raises(ValueError, match="use_running_average"):
        lnn.BatchNorm(use_running_average=True).apply(v, x, use_running_average=True)
    bare = lnn.BatchNorm(use_scale=False, use_bias=False)
    vb = bare.init(jax.random.key(0), x, use_running_average=False)
    assert "params" not in vb
    y, _ = bare.apply(vb, x, **TRAIN)
    close(y, np_bn_train(x, 1.0, 0.0, (0,))[0], 1e-5, 1e-5)


@pytest.mark.parametrize("kwargs,name", [({"momentum": 1.5}, "momentum"),
                                         ({"momentum": -0.1}, "momentum"),
                                         ({"epsilon": -1.0}, "epsilon"),
                                         ({"axis": 3}, "axis")])
def test_bad_hyperparameters_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        lnn.BatchNorm(**kwargs).init(jax.random.key(0), jnp.ones((4, 3)),
                                     use_running_average=False)


def test_jit_does_not_recompile_and_vmap_matches_loop():
    bn = lnn.BatchNorm()
    v = bn.init(jax.random.key(0), jnp.ones((5, 3)), use_running_average=False)
    traces = []

    @jax.jit
    def step(v, x):
        traces.append(1)
        return bn.apply(v, x, **TRAIN)

    r = rng(9)
    for _ in range(3):
        step(v, jnp.asarray(r.normal(size=(5, 3)), jnp.float32))
    assert len(traces) == 1
    xs = jnp.asarray(r.normal(size=(4, 5, 3)) + 2, jnp.float32)
    ys, upds = jax.jit(jax.vmap(step, in_axes=(None, 0)))(v, xs)
    for i in range(4):
        y, upd = bn.apply(v, xs[i], **TRAIN)
        close(ys[i], y, 1e-6, 1e-6)
        close(upds["batch_stats"]["var"][i], upd["batch_stats"]["var"], 1e-6)


def test_axis_name_under_named_vmap_equals_whole_batch():
    # vmap with an axis name behaves like devices for the collectives (quick, in-process);
    # the real multi-device run is in test_cross_device_... below.
    r = rng(14)
    x = jnp.asarray(r.normal(size=(4, 5, 3)) + 1e4, jnp.float32)
    ct = jnp.asarray(r.normal(size=(4, 5, 3)), jnp.float32)
    one, many = lnn.BatchNorm(), lnn.BatchNorm(axis_name="batch")
    v = one.init(jax.random.key(0), x[0], use_running_average=False)
    v = {"params": random_params(r, 3), "batch_stats": v["batch_stats"]}

    def loss(mod, x, ct):
        y, upd = mod.apply(v, x, **TRAIN)
        return jnp.sum(y * ct), upd["batch_stats"]

    (l4, s4), g4 = jax.jit(jax.vmap(jax.value_and_grad(lambda x, ct: loss(many, x, ct),
                                                       has_aux=True), axis_name="batch"))(x, ct)
    (l1, s1), g1 = jax.value_and_grad(lambda x, ct: loss(one, x, ct), has_aux=True)(
        x.reshape(20, 3), ct.reshape(20, 3))
    close(l4.sum(), l1, 1e-4, 1e-4)
    close(s4["var"][2], s1["var"], 1e-6)
    close(s4["mean"][3], s1["mean"], 1e-7)
    close(g4.reshape(20, 3), g1, 1e-4, 1e-4)


# ----------------------------------------------------------------------------- MLP


def np_mlp(params, stats, x, position, train, act=lambda h: np.maximum(h, 0)):
    """The lecture's net in float64 NumPy; returns logits and the batch statistics used."""
    h = np.asarray(x, np.float64).reshape(len(x), -1)
    used = []
    n_hidden = sum(1 for k in params if k.startswith("Dense")) - 1
    for i in range(n_hidden):
        d = params[f"Dense_{i}"]
        h = h @ np.asarray(d["kernel"], np.float64) + np.asarray(d["bias"], np.float64)
        if position == "after_activation":
            h = act(h)
        if stats is not None:
            p = params[f"BatchNorm_{i}"]
            g, b = np.asarray(p["scale"], np.float64), np.asarray(p["bias"], np.float64)
            if train:
                h, mu, var = np_bn_train(h, g, b, (0,))
                used.append((mu[0], var[0]))
            else:
                s = stats[f"BatchNorm_{i}"]
                h = np_bn_eval(h, np.asarray(s["mean"], np.float64),
                               np.asarray(s["var"], np.float64), g, b)
        if position == "before_activation":
            h = act(h)
    d = params[f"Dense_{n_hidden}"]
    return h @ np.asarray(d["kernel"], np.float64) + np.asarray(d["bias"], np.float64), used


@pytest.mark.parametrize("position", ["before_activation", "after_activation"])
def test_mlp_matches_numpy_net(position):
    r = rng(10)
    x = jnp.asarray(r.normal(size=(9, 4, 4, 1)) + 0.5, jnp.float32)
    model = lnn.MLP(features=(12, 8), num_classes=10, batch_norm=True,
                    batch_norm_position=position)
    v = model.init(jax.random.key(1), x, train=False)
    assert v["params"]["Dense_0"]["kernel"].shape == (16, 12)
    assert set(v["batch_stats"]) == {"BatchNorm_0", "BatchNorm_1"}
    # non-trivial gamma/beta
    params = jax.tree_util.tree_map(lambda a: a, v["params"])
    for k in ("BatchNorm_0", "BatchNorm_1"):
        params[k] = random_params(r, params[k]["scale"].shape[0])
    logits, upd = jax.jit(lambda p, s, x: model.apply({"params": p, "batch_stats": s}, x,
                                                      train=True, mutable=["batch_stats"]))(
        params, v["batch_stats"], x)
    want, used = np_mlp(params, v["batch_stats"], x, position, train=True)
    assert logits.shape == (9, 10)
    close(logits, want, 1e-4, 1e-4, "training logits")
    for i, (_, var) in enumerate(used):
        close(upd["batch_stats"][f"BatchNorm_{i}"]["var"], 0.9 + 0.1 * var, 1e-4)
    pred = model.apply({"params": params, **upd}, x, train=False)
    want, _ = np_mlp(params, upd["batch_stats"], x, position, train=False)
    close(pred, want, 1e-4, 1e-4, "prediction logits")


def test_mlp_without_batch_norm_and_errors():
    x = jnp.ones((3, 7))
    model = lnn.MLP(features=(5,), num_classes=2)
    v = model.init(jax.random.key(0), x)
    assert "batch_stats" not in v
    want, _ = np_mlp(v["params"], None, x, "before_activation", train=False)
    close(model.apply(v, x), want, 1e-5, 1e-5)
    with pytest.raises(TypeError, match="train"):
        lnn.MLP(batch_norm=True).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="batch_norm_position"):
        lnn.MLP(batch_norm_position="middle").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"features\[1\]"):
        lnn.MLP(features=(4, 0)).init(jax.random.key(0), x)


def test_mlp_training_step_compiles_once_and_learns():
    r = rng(11)
    x = jnp.asarray(r.normal(size=(64, 6)), jnp.float32)
    y = jnp.asarray((np.asarray(x[:, 0]) > 0).astype(np.int32))
    model = lnn.MLP(features=(16,), num_classes=2, batch_norm=True)
    v = model.init(jax.random.key(0), x, train=False)
    tx = optimizers.sgd(0.1, momentum=0.9)
    traces = []

    @jax.jit
    def step(params, stats, opt_state, x, y):
        traces.append(1)

        def loss(p):
            logits, upd = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                      mutable=["batch_stats"])
            logp = jax.nn.log_softmax(logits)
            return -jnp.take_along_axis(logp, y[:, None], 1).mean(), upd["batch_stats"]

        (l, stats), g = jax.value_and_grad(loss, has_aux=True)(params)
        upd, opt_state = tx.update(g, opt_state, params)
        return jax.tree_util.tree_map(jnp.add, params, upd), stats, opt_state, l

    state = (v["params"], v["batch_stats"], tx.init(v["params"]))
    losses = []
    for i in range(30):
        *state, l = step(*state, x[(i % 4) * 16:(i % 4 + 1) * 16], y[(i % 4) * 16:(i % 4 + 1) * 16])
        losses.append(float(l))
    assert len(traces) == 1
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])


# ----------------------------------------------------------------------------- population stats


@pytest.mark.parametrize("position", ["before_activation", "after_activation"])
def test_population_batch_stats_layer_by_layer(position):
    r = rng(12)
    x = (r.normal(size=(50, 3, 3)) * 2 + 30).astype(np.float32)  # large mean: exactness
    model = lnn.MLP(features=(7, 6, 5), num_classes=3, batch_norm=True,
                    batch_norm_position=position)
    v = model.init(jax.random.key(2), x, train=False)
    params = jax.tree_util.tree_map(lambda a: a, v["params"])
    for k in ("BatchNorm_0", "BatchNorm_1", "BatchNorm_2"):
        params[k] = random_params(r, params[k]["scale"].shape[0])
    variables = {"params": params, "batch_stats": v["batch_stats"]}
    before = jax.tree_util.tree_map(np.asarray, variables)
    new = lnn.population_batch_stats(model, variables, x, batch_size=16)
    # nothing mutated, params untouched
    for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(variables)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(new["params"])):
        np.testing.assert_array_equal(a, b)
    # NumPy: layer k's input computed with layers < k already set to their population stats
    stats = {k: dict(s) for k, s in v["batch_stats"].items()}
    for k in range(3):
        # run the net up to BatchNorm_k's input, with the stats fixed so far
        h = x.astype(np.float64).reshape(len(x), -1)
        for i in range(k + 1):
            d = params[f"Dense_{i}"]
            h = h @ np.asarray(d["kernel"], np.float64) + np.asarray(d["bias"], np.float64)
            if position == "after_activation":
                h = np.maximum(h, 0)
            if i < k:
                p, s = params[f"BatchNorm_{i}"], stats[f"BatchNorm_{i}"]
                h = np_bn_eval(h, s["mean"], s["var"], np.asarray(p["scale"], np.float64),
                               np.asarray(p["bias"], np.float64))
                if position == "before_activation":
                    h = np.maximum(h, 0)
        stats[f"BatchNorm_{k}"] = {"mean": h.mean(0), "var": h.var(0)}
        got = new["batch_stats"][f"BatchNorm_{k}"]
        close(got["mean"], h.mean(0), 1e-5, 1e-5, f"population mean, layer {k}")
        close(got["var"], h.var(0), 1e-4, 1e-6, f"population var, layer {k}")
    # and the running averages were really replaced
    assert not np.allclose(new["batch_stats"]["BatchNorm_2"]["var"], 1.0)


def test_population_batch_stats_bare_module_unbiased_and_errors():
    r = rng(13)
    x = (r.normal(size=(21, 2, 4)) + 1e4).astype(np.float32)
    bn = lnn.BatchNorm(unbiased_running_var=True)
    v = bn.init(jax.random.key(0), x, use_running_average=False)
    new = lnn.population_batch_stats(bn, v, x, batch_size=8)
    xd = x.astype(np.float64).reshape(-1, 4)
    close(new["batch_stats"]["mean"], xd.mean(0), 1e-7)
    close(new["batch_stats"]["var"], xd.var(0, ddof=1), 1e-5)
    # flax.linen.BatchNorm layers are handled too (biased variance)
    fb = fnn.BatchNorm()
    newf = lnn.population_batch_stats(fb, fb.init(jax.random.key(0), x,
                                                  use_running_average=False), x, batch_size=5)
    close(newf["batch_stats"]["var"], xd.var(0), 1e-5)
    model = lnn.MLP(features=(4,), batch_norm=True)
    vm = model.init(jax.random.key(0), x, train=False)
    with pytest.raises(ValueError, match="prediction"):
        lnn.population_batch_stats(model, vm, x, apply_kwargs={"train": True})
    with pytest.raises(ValueError, match="batch_size"):
        lnn.population_batch_stats(model, vm, x, batch_size=0)


# ----------------------------------------------------------------------------- several devices


def test_cross_device_batch_norm_and_training_step_equal_one_device():
    script = Path(__file__).with_name("_multidevice_nn.py")
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=4")
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ALL OK" in proc.stdout
