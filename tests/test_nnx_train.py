"""train.fit / evaluate / sweep / loss_function on flax.nnx modules (lecopt.nnx.MLP).

The reference is the linen path: the same net (lecopt.nn.MLP) given the same initial weights
must train to the same history (float32 rounding)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lecopt
import lecopt.nnx as lnnx
from lecopt import data, nn, optimizers, train
from lecopt.train import nnx_models

N_TRAIN, N_TEST = 512, 256


@pytest.fixture(scope="module")
def small():
    ds = data.load("mnist-5k")
    return {"x_train": ds.x_train[:N_TRAIN], "y_train": ds.y_train[:N_TRAIN],
            "x_test": ds.x_test[:N_TEST], "y_test": ds.y_test[:N_TEST]}


def nnx_model(seed=0):
    return lnnx.MLP(784, (16,), 10, batch_norm=True, rngs=nnx.Rngs(seed))


LINEN = nn.MLP(features=(16,), batch_norm=True)


def linen_variables(model):
    """The linen MLP's variables holding the NNX MLP's weights."""
    params = {"Dense_0": model.hidden[0], "Dense_1": model.head}
    params = {k: {"kernel": m.kernel[...], "bias": m.bias[...]} for k, m in params.items()}
    bn = model.norms[0]
    params["BatchNorm_0"] = {"scale": bn.scale[...], "bias": bn.bias[...]}
    return {"params": params, "batch_stats": {"BatchNorm_0": {"mean": bn.mean[...],
                                                             "var": bn.var[...]}}}


def linen_start(model, optimizer, small):
    """The linen TrainState holding the NNX module's weights."""
    v = linen_variables(model)
    state = train.init_state(LINEN, optimizer, small["x_train"], seed=0)
    state = state.replace(params=v["params"], batch_stats=v["batch_stats"],
                          opt_state=optimizer.init(v["params"]))
    return state


def max_rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30)))


def history_close(h1, h2, rtol=1e-5):
    for f in ("step_loss", "train_loss", "test_loss", "test_error", "learning_rate"):
        np.testing.assert_allclose(getattr(h1, f), getattr(h2, f), rtol=rtol, atol=1e-6,
                                   err_msg=f)


def linen_fit(model, optimizer, small, epochs):
    """The linen run from the NNX weights: fit(linen) starts from init_state(seed), so run
    its compiled epoch (the same order, seed 0) from those weights by hand."""
    from lecopt import partition
    from lecopt.train import programs
    from lecopt.train.inputs import prepare
    setup = prepare(LINEN, small, 128, 1024, None)
    hp, structure = partition.split(optimizer)
    compiled = programs.train_programs(setup.program_key("stop", structure))
    losses = []
    state = linen_start(model, optimizer, small)
    _, data_key = programs.seed_keys(0)
    buf = jnp.zeros([setup.steps], jnp.float32)
    test = []
    for e in range(epochs):
        order = programs.epoch_order(data_key, e, setup.n, setup.steps, 128)
        state, ls, _, _, _ = compiled.train_steps(state, hp, setup.x, setup.y, order, 0,
                                                  setup.steps, jnp.asarray(-1), buf, buf)
        losses += np.asarray(ls).tolist()
        test.append(train.evaluate(LINEN, state.variables, small["x_test"], small["y_test"]))
    return state, losses, test


def test_fit_equals_the_linen_fit_from_the_same_weights(small):
    model = nnx_model()
    kept = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model)))
    opt = optimizers.sgd(0.05, momentum=0.9)
    trained, history = train.fit(model, opt, small, epochs=2, progress=False)
    assert isinstance(trained, lnnx.MLP) and trained is not model
    # The module given is left as it was.
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(model)), kept)
    state, losses, test = linen_fit(model, opt, small, 2)
    worst = max_rel(history.step_loss, losses)
    assert worst < 1e-5, worst
    np.testing.assert_allclose(history.test_loss, [t.loss for t in test], rtol=1e-5)
    np.testing.assert_allclose(trained.head.kernel[...], state.params["Dense_1"]["kernel"],
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(trained.norms[0].var[...],
                               state.batch_stats["BatchNorm_0"]["var"], rtol=1e-5)
    # evaluate on the module equals evaluate on the linen variables
    ev = train.evaluate(trained, small["x_test"], small["y_test"])
    np.testing.assert_allclose(ev.loss, test[-1].loss, rtol=1e-5)


def test_second_fit_with_new_hyperparameters_compiles_nothing(small, compile_counter):
    train.fit(nnx_model(0), optimizers.sgd(0.05, momentum=0.9), small, epochs=1,
              progress=False)
    with compile_counter.expect(0):
        m, h = train.fit(nnx_model(1), optimizers.sgd(0.01, momentum=0.5), small, epochs=1,
                         progress=False)
        train.evaluate(m, small["x_test"], small["y_test"])
    assert np.isfinite(h.train_loss[0])


def test_checkpoint_resume_equals_the_uninterrupted_run(small, tmp_path):
    opt = optimizers.sgd(0.05, momentum=0.9)
    whole, h_whole = train.fit(nnx_model(), opt, small, epochs=2, progress=False)
    # "Killed" after one epoch: a first run of 1 epoch leaves its checkpoint; the second
    # resumes from it (mid-epoch checkpoints too: every 3 steps).
    d = tmp_path / "ckpt"
    train.fit(nnx_model(), opt, small, epochs=1, progress=False, checkpoint_dir=d,
              checkpoint_every=3)
    resumed, h = train.fit(nnx_model(), opt, small, epochs=2, progress=False,
                           checkpoint_dir=d, checkpoint_every=3)
    assert h.step_loss == h_whole.step_loss and h.test_loss == h_whole.test_loss
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(resumed)),
                 nnx.to_pure_dict(nnx.state(whole)))


def test_sweep_vmap_equals_separate_fits(small):
    make = lambda lr: optimizers.sgd(lr, momentum=0.9)  # noqa: E731
    runs = train.sweep(nnx_model(), make, {"lr": [0.01, 0.05]}, small, epochs=1,
                       strategy="vmap", progress=False)
    for run in runs:
        trained, h = train.fit(nnx_model(), make(run.setting["lr"]), small, epochs=1,
                               progress=False)
        history_close(run.history, h)
        ev = train.evaluate(trained, run.state.variables, small["x_test"], small["y_test"])
        np.testing.assert_allclose(ev.loss, run.history.test_loss[-1], rtol=1e-5)
        module = nnx_models.merge(nnx_models.as_model(trained)[0], run.state.variables)
        np.testing.assert_allclose(module.head.kernel[...], trained.head.kernel[...],
                                   rtol=1e-4, atol=1e-6)


def test_lr_range_test_recipe(small):
    """The README's recipe: loss_function of the module over its pure-dict state."""
    model = nnx_model()
    loss_fn = train.loss_function(model)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    batches = (small["x_train"].reshape(4, 128, -1), small["y_train"].reshape(4, 128))
    res = lecopt.lr_range_test(loss_fn, params, batches, lambda lr: optimizers.sgd(lr),
                               num_steps=20, min_lr=1e-3, max_lr=1.0, model_state=stats)
    # The first recorded loss is the module's own training-mode loss on the first batch.
    model.train()
    logits = model(batches[0][0])
    import optax
    want = optax.softmax_cross_entropy_with_integer_labels(logits, batches[1][0]).mean()
    np.testing.assert_allclose(res.losses[0], want, rtol=1e-6)
    # Same as the linen module's range test from the same weights.
    v = linen_variables(nnx_model())
    ref = lecopt.lr_range_test(train.loss_function(LINEN), v["params"], batches,
                               lambda lr: optimizers.sgd(lr), num_steps=20, min_lr=1e-3,
                               max_lr=1.0, model_state=v["batch_stats"])
    np.testing.assert_allclose(res.losses, ref.losses, rtol=1e-5)


def test_rejects_other_variable_types():
    class WithDropout(nnx.Module):
        def __init__(self):
            self.lin = nnx.Linear(4, 2, rngs=nnx.Rngs(0))
            self.drop = nnx.Dropout(0.5, rngs=nnx.Rngs(1))

        def __call__(self, x):
            return self.drop(self.lin(x))

    x = jnp.zeros((8, 4))
    with pytest.raises(ValueError, match="nnx.Param and nnx.BatchStat"):
        train.fit(WithDropout(), optimizers.sgd(0.1), (x, jnp.zeros(8, jnp.int32)), epochs=1,
                  batch_size=4, progress=False)


def test_mesh_and_nonfinite(small):
    opt = optimizers.sgd(0.05, momentum=0.9)
    _, h = train.fit(nnx_model(), opt, small, epochs=1, progress=False)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    on_mesh, h_mesh = train.fit(nnx_model(), opt, small, epochs=1, progress=False, mesh=mesh)
    history_close(h_mesh, h)
    assert isinstance(on_mesh, lnnx.MLP)
    with pytest.raises(train.NonFiniteError) as e:
        train.fit(nnx_model(), optimizers.sgd(1e30), small, epochs=1, progress=False)
    assert e.value.history.stopped is not None
    assert np.isfinite(np.asarray(e.value.state.params["head"]["kernel"])).all()


def test_checkpoint_of_other_starting_weights_is_refused(small, tmp_path):
    opt = optimizers.sgd(0.05)
    train.fit(nnx_model(0), opt, small, epochs=1, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(train.CheckpointMismatchError):
        train.fit(nnx_model(1), opt, small, epochs=2, progress=False, checkpoint_dir=tmp_path)


def test_bench_contestants_do_the_same_work():
    """The bench's fit epoch and its nnx.jit loop take the same steps: the same losses."""
    from lecopt.bench import nnx as _bench_nnx

    contestants, flops = _bench_nnx.fit_contestants(widths=(32,))
    fit_losses, loop_losses = (f() for f in contestants.values())
    assert len(fit_losses) == len(loop_losses) == 4000 // 128
    np.testing.assert_allclose(fit_losses, np.asarray(loop_losses), rtol=1e-5)
    assert flops == 31 * 6 * 128 * (784 * 32 + 32 * 10 + 32 + 10 + 2 * 32)


def test_init_state_and_loss_function_start_from_the_module(small):
    model = nnx_model(3)
    state = train.init_state(model, optimizers.sgd(0.1, momentum=0.9), small["x_train"])
    jax.tree.map(np.testing.assert_array_equal, state.params,
                 nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    v = linen_variables(model)
    batch = (small["x_train"][:64], small["y_train"][:64])
    loss, stats = jax.jit(train.loss_function(model))(state.params, state.batch_stats, batch)
    ref, ref_stats = train.loss_function(LINEN)(v["params"], v["batch_stats"], batch)
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    np.testing.assert_allclose(stats["norms"][0]["var"], ref_stats["BatchNorm_0"]["var"],
                               rtol=1e-6)
