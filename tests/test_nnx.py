"""Tests of lecopt.nnx: the NNX BatchNorm drop-in, MLP and population_batch_stats.

References are independent of the code under test: flax.nnx.BatchNorm
(use_fast_variance=False, autodiff of the two-pass formula), the lecture's formulas in float64
NumPy, and the linen module for bit-for-bit agreement of the shared implementation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lecopt
from lecopt import nn as lnn
from lecopt import nnx as lnnx


def close(a, b, rtol, atol=0.0, what=""):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol,
                               atol=atol, err_msg=what)


def make_pair(num_features, **kw):
    """lecopt's and Flax's layer with the same random scale/bias."""
    ours = lnnx.BatchNorm(num_features, rngs=nnx.Rngs(0), **kw)
    ref = nnx.BatchNorm(num_features, use_fast_variance=False, rngs=nnx.Rngs(0), **kw)
    r = np.random.default_rng(1)
    for layer in (ours, ref):
        if layer.scale is not None:
            layer.scale[...] = jnp.asarray(r.uniform(0.5, 2, num_features), layer.scale.dtype)
        if layer.bias is not None:
            layer.bias[...] = jnp.asarray(r.normal(size=num_features), layer.bias.dtype)
        r = np.random.default_rng(1)
    return ours, ref


def value_and_grads(layer, x, ct):
    """nnx.jit(nnx.value_and_grad) of sum(out * ct) w.r.t. the Params and x; new statistics."""

    @nnx.jit
    def f(layer, x):
        def loss(layer, x):
            y = layer(x)
            return jnp.sum(y.astype(jnp.float32) * ct), y
        return nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(layer, x)

    (_, y), (gp, gx) = f(layer, x)
    return y, nnx.state(layer, nnx.BatchStat), gx, gp


CASES = [((32, 6), -1), ((4, 3, 3, 6), -1), ((4, 3, 3, 6), 1), ((6, 16), 0)]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape,axis", CASES)
@pytest.mark.parametrize("use_scale,use_bias", [(True, True), (False, False)])
def test_values_and_grads_match_flax_two_pass(dtype, shape, axis, use_scale, use_bias):
    r = np.random.default_rng(2)
    x = jnp.asarray(r.normal(size=shape) * 2 + 3, dtype)
    ct = jnp.asarray(r.normal(size=shape), jnp.float32)
    c = shape[axis]
    ours, ref = make_pair(c, axis=axis, momentum=0.9, use_scale=use_scale, use_bias=use_bias)
    y1, s1, gx1, gp1 = value_and_grads(ours, x, ct)
    y2, s2, gx2, gp2 = value_and_grads(ref, x, ct)
    assert y1.dtype == y2.dtype and gx1.dtype == gx2.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    close(y1, y2, tol, tol, "output")
    close(s1["mean"][...], s2["mean"][...], 1e-5, 1e-6, "running mean")
    close(s1["var"][...], s2["var"][...], 1e-5, 1e-6, "running var")
    close(gx1, gx2, tol * 10, tol * 10, "grad x")
    assert jax.tree.structure(gp1) == jax.tree.structure(gp2)
    for a, b in zip(jax.tree.leaves(gp1), jax.tree.leaves(gp2), strict=True):
        close(a, b, 1e-4, 1e-4, "grad params")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_bit_for_bit_with_the_linen_module(dtype):
    r = np.random.default_rng(3)
    x = jnp.asarray(r.normal(size=(4, 5, 5, 8)) + 1e3, dtype)
    ours = lnnx.BatchNorm(8, momentum=0.9, dtype=dtype, rngs=nnx.Rngs(0))
    ours.scale[...] = jnp.asarray(r.uniform(0.5, 2, 8), jnp.float32)
    ours.bias[...] = jnp.asarray(r.normal(size=8), jnp.float32)
    linen = lnn.BatchNorm(momentum=0.9)
    v = {"params": {"scale": ours.scale[...], "bias": ours.bias[...]},
         "batch_stats": {"mean": ours.mean[...], "var": ours.var[...]}}
    y_lin, upd = linen.apply(v, x, use_running_average=False, mutable=["batch_stats"])
    y = ours(x)
    assert y.dtype == y_lin.dtype == dtype
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_lin, np.float32))
    np.testing.assert_array_equal(ours.mean[...], upd["batch_stats"]["mean"])
    np.testing.assert_array_equal(ours.var[...], upd["batch_stats"]["var"])
    ours.eval()
    np.testing.assert_array_equal(
        np.asarray(ours(x), np.float32),
        np.asarray(linen.apply({**v, **upd}, x, use_running_average=True), np.float32))


def state_signature(module):
    return {path: (type(v).__name__, v.shape, v.dtype)
            for path, v in nnx.to_flat_state(nnx.state(module))}


@pytest.mark.parametrize("kw", [{}, {"use_scale": False}, {"use_bias": False},
                                {"param_dtype": jnp.bfloat16}])
def test_state_tree_equals_flax_and_restores_both_ways(kw):
    ours = lnnx.BatchNorm(5, rngs=nnx.Rngs(0), **kw)
    ref = nnx.BatchNorm(5, rngs=nnx.Rngs(0), **kw)
    assert state_signature(ours) == state_signature(ref)
    r = np.random.default_rng(4)
    x = jnp.asarray(r.normal(size=(16, 5)), jnp.float32)
    ref(x)  # move Flax's running averages, then load them into lecopt's layer
    nnx.update(ours, nnx.state(ref))
    np.testing.assert_array_equal(ours.var[...], ref.var[...])
    # and the other way round, through split/merge
    ours(x + 1.0)
    graphdef, _ = nnx.split(ref)
    restored = nnx.merge(graphdef, nnx.state(ours))
    assert isinstance(restored, nnx.BatchNorm)
    np.testing.assert_array_equal(restored.mean[...], ours.mean[...])


def test_train_eval_switching_and_running_averages_only_in_training():
    r = np.random.default_rng(5)
    x = r.normal(size=(20, 3)) * 3 + 2
    layer = lnnx.BatchNorm(3, momentum=0.8, epsilon=1e-5, rngs=nnx.Rngs(0))
    layer(jnp.asarray(x, jnp.float32))  # training is the default, as in Flax
    mu, var = x.mean(0), x.var(0)
    close(layer.mean[...], 0.2 * mu, 1e-6, 1e-6)
    close(layer.var[...], 0.8 + 0.2 * var, 1e-6)
    layer.eval()
    assert layer.use_running_average is True
    before = np.asarray(layer.var[...])
    y = layer(jnp.asarray(x, jnp.float32))
    np.testing.assert_array_equal(layer.var[...], before)
    close(y, (x - 0.2 * mu) / np.sqrt(before + 1e-5), 1e-5, 1e-5)
    y_train = layer(jnp.asarray(x, jnp.float32), use_running_average=False)  # call wins
    close(y_train, (x - mu) / np.sqrt(var + 1e-5), 1e-5, 1e-5)
    layer.train()
    assert layer.use_running_average is False


def test_unbiased_running_var_and_errors():
    x = np.random.default_rng(6).normal(size=(10, 4))
    layer = lnnx.BatchNorm(4, momentum=0.0, unbiased_running_var=True, rngs=nnx.Rngs(0))
    layer(jnp.asarray(x, jnp.float32))
    close(layer.var[...], x.var(0, ddof=1), 1e-5)
    with pytest.raises(ValueError, match="1 value"):
        layer(jnp.ones((1, 4)))
    with pytest.raises(ValueError, match="num_features=4"):
        layer(jnp.ones((3, 5)))
    with pytest.raises(ValueError, match="momentum"):
        lnnx.BatchNorm(4, momentum=1.5, rngs=nnx.Rngs(0))
    layer.eval()
    assert layer(jnp.ones((1, 4))).shape == (1, 4)  # prediction for one sample is fine


def test_nnx_jit_compiles_once_vmap_scan_and_eval_shape():
    traces = []

    @nnx.jit
    def step(m, x):
        traces.append(1)
        return m(x)

    r = np.random.default_rng(7)
    xs = jnp.asarray(r.normal(size=(3, 8, 4)) + 5, jnp.float32)
    a = lnnx.BatchNorm(4, rngs=nnx.Rngs(0))
    ys_loop = [step(a, x) for x in xs]
    assert len(traces) == 1
    b = lnnx.BatchNorm(4, rngs=nnx.Rngs(0))

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def scan(m, x):
        return m, m(x)

    _, ys = scan(b, xs)
    close(b.mean[...], a.mean[...], 1e-6)
    close(ys, jnp.stack(ys_loop), 1e-6, 1e-6)
    # nnx.vmap with axis_name: 4 chunks share statistics and equal the whole batch.
    whole = lnnx.BatchNorm(4, rngs=nnx.Rngs(0))
    split = lnnx.BatchNorm(4, axis_name="batch", rngs=nnx.Rngs(0))
    x = xs.reshape(24, 4)
    y_whole = whole(x)
    y_split = nnx.vmap(lambda m, x: m(x), in_axes=(None, 0), axis_name="batch")(
        split, x.reshape(4, 6, 4))
    close(y_split.reshape(24, 4), y_whole, 1e-5, 1e-5)
    close(split.var[...], whole.var[...], 1e-6)
    abstract = nnx.eval_shape(lambda: lnnx.BatchNorm(4, rngs=nnx.Rngs(0)))
    assert state_signature(abstract) == state_signature(whole)


def test_optimizer_wrt_param_leaves_batch_stats_to_the_module():
    r = np.random.default_rng(8)
    x = jnp.asarray(r.normal(size=(16, 3)), jnp.float32)
    model = nnx.Sequential(nnx.Linear(3, 5, rngs=nnx.Rngs(0)),
                           lnnx.BatchNorm(5, momentum=0.9, rngs=nnx.Rngs(1)))
    kernel0 = np.asarray(model.layers[0].kernel[...], np.float64)
    h = np.asarray(x, np.float64) @ kernel0  # the BatchNorm input before the update
    opt = nnx.Optimizer(model, lecopt.sgd(0.1), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, opt, x):
        grads = nnx.grad(lambda m: jnp.mean(m(x) ** 3))(model)
        opt.update(model, grads)

    train_step(model, opt, x)
    assert not jax.tree.leaves(nnx.state(opt, nnx.BatchStat))
    close(model.layers[1].mean[...], 0.1 * h.mean(0), 1e-5, 1e-6)
    close(model.layers[1].var[...], 0.9 + 0.1 * h.var(0), 1e-5)
    assert not np.allclose(model.layers[0].kernel[...], kernel0)


@pytest.mark.parametrize("position", ["before_activation", "after_activation"])
def test_mlp_equals_the_linen_mlp_with_the_same_weights(position):
    r = np.random.default_rng(9)
    x = jnp.asarray(r.normal(size=(8, 2, 3)), jnp.float32)
    model = lnnx.MLP(6, (5, 4), 3, batch_norm=True, batch_norm_position=position,
                     rngs=nnx.Rngs(0))
    linen = lnn.MLP(features=(5, 4), num_classes=3, batch_norm=True,
                    batch_norm_position=position)
    params = {"Dense_0": model.hidden[0], "Dense_1": model.hidden[1], "Dense_2": model.head}
    params = {k: {"kernel": m.kernel[...], "bias": m.bias[...]} for k, m in params.items()}
    for i, bn in enumerate(model.norms):
        params[f"BatchNorm_{i}"] = {"scale": bn.scale[...], "bias": bn.bias[...]}
    stats = {f"BatchNorm_{i}": {"mean": bn.mean[...], "var": bn.var[...]}
             for i, bn in enumerate(model.norms)}
    v = {"params": params, "batch_stats": stats}
    y_lin, upd = linen.apply(v, x, train=True, mutable=["batch_stats"])
    np.testing.assert_array_equal(model(x), y_lin)
    np.testing.assert_array_equal(model.norms[1].var[...], upd["batch_stats"]["BatchNorm_1"]["var"])
    model.eval()
    np.testing.assert_array_equal(model(x), linen.apply({**v, **upd}, x, train=False))
    with pytest.raises(ValueError, match="batch_norm_position"):
        lnnx.MLP(6, (5,), batch_norm_position="middle", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("bn_class", [lnnx.BatchNorm, nnx.BatchNorm])
def test_population_batch_stats_equals_float64_numpy(bn_class):
    r = np.random.default_rng(10)
    x = r.normal(size=(37, 4)) * 2 + 5  # the f32 Linear layers' rounding sets the tolerance
    model = nnx.Sequential(nnx.Linear(4, 6, rngs=nnx.Rngs(0)), bn_class(6, rngs=nnx.Rngs(1)),
                           jax.nn.relu, nnx.Linear(6, 5, rngs=nnx.Rngs(2)),
                           bn_class(5, rngs=nnx.Rngs(3)))
    before = nnx.clone(nnx.state(model))
    new = lnnx.population_batch_stats(model, jnp.asarray(x, jnp.float32), batch_size=8)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(model), before)  # left as it was
    xf = np.asarray(jnp.asarray(x, jnp.float32), np.float64)

    def lin(m, h):
        return h @ np.asarray(m.kernel[...], np.float64) + np.asarray(m.bias[...], np.float64)

    def bn(m, h):
        g, b = np.asarray(m.scale[...], np.float64), np.asarray(m.bias[...], np.float64)
        return g * (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5) + b

    h1 = lin(model.layers[0], xf)
    h2 = lin(model.layers[3], np.maximum(bn(model.layers[1], h1), 0))
    for layer, h in ((new.layers[1], h1), (new.layers[4], h2)):
        close(layer.mean[...], h.mean(0), 1e-5, 1e-5)
        close(layer.var[...], h.var(0), 1e-5, 1e-5)


def _spread_error(layer, offset):
    x = jax.random.normal(jax.random.key(3), (256, 64), jnp.float32) + offset
    xd = np.asarray(x, np.float64)
    expected = np.sqrt(xd.var(0) / (xd.var(0) + 1e-5))
    y = nnx.jit(lambda m, x: m(x))(layer, x)
    return float(np.max(np.abs(np.asarray(y, np.float64).std(0) / expected - 1.0)))


def test_fast_variance_error_table_flax_default_against_lecopt():
    table = {}
    for offset in (1e2, 1e3, 1e4):
        table[offset] = (_spread_error(nnx.BatchNorm(64, rngs=nnx.Rngs(0)), offset),
                         _spread_error(lnnx.BatchNorm(64, rngs=nnx.Rngs(0)), offset))
    print({f"{k:g}": f"flax {v[0]:.2e} lecopt {v[1]:.2e}" for k, v in table.items()})
    for offset, (_, ours) in table.items():
        assert ours < 1e-5, (offset, ours)
    assert table[1e4][0] > 1.0  # Flax's E[z^2] - E[z]^2 has lost the variance entirely
    assert table[1e3][0] > 1e-2


_GROUPS_SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from lecopt import nnx as lnnx
assert len(jax.devices()) == 4
x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6, 3)) * 2 + 1e3, jnp.float32)
layer = lnnx.BatchNorm(3, axis_name="d", axis_index_groups=[[0, 2], [1, 3]], rngs=nnx.Rngs(0))
graphdef, state = nnx.split(layer)

def call(state, x):
    m = nnx.merge(graphdef, state)
    return m(x), nnx.state(m)["var"][...]

y, var = jax.pmap(call, in_axes=(None, 0), axis_name="d")(state, x)
for group in ([0, 2], [1, 3]):
    ref = lnnx.BatchNorm(3, rngs=nnx.Rngs(0))
    y_ref = ref(x[np.array(group)].reshape(12, 3))
    np.testing.assert_allclose(y[np.array(group)].reshape(12, 3), y_ref, rtol=1e-5, atol=1e-5)
    for d in group:
        np.testing.assert_allclose(var[d], ref.var[...], rtol=1e-6)
print("GROUPS OK")
"""


def test_axis_index_groups_share_statistics_within_each_group():
    import os
    import subprocess
    import sys

    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    proc = subprocess.run([sys.executable, "-c", _GROUPS_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert "GROUPS OK" in proc.stdout, proc.stderr[-3000:]
