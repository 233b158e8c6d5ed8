"""lecopt's optimizers against the lecture's algorithm boxes (tests/reference.py), closed forms
and optax where the formulas coincide."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from flax.training import train_state
from hypothesis import given, settings
from hypothesis import strategies as st

import lecopt
from tests import reference as ref

NUM_STEPS = 64
SHAPES = {"w": (3, 4), "b": (4,), "v": (5,)}


def _theta0() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=s) for k, s in SHAPES.items()}


_CURV = {k: np.linspace(0.5, 3.0, int(np.prod(s))).reshape(s) for k, s in SHAPES.items()}


def _grad(theta, k, xp):
    # Depends on the params (curvature and a cosine) and on the step (a drifting offset).
    return {
        n: _CURV[n] * theta[n] + 0.3 * xp.cos(theta[n]) + 0.1 * xp.sin(0.37 * k + 1.0)
        for n in theta
    }


def np_grad(theta, k):
    return _grad(theta, k, np)


def _run_lecopt(tx, num_steps=NUM_STEPS, lookahead=False):
    """Runs tx through one jitted step (tx passed as data); returns the params after each step."""
    # optax transformations are closures, not pytrees: they cannot be jit arguments.
    as_arg = not isinstance(tx.update, jax.tree_util.Partial)

    @jax.jit
    def step(params, state, tx_arg, k):
        tx_ = tx if as_arg else tx_arg
        at = lecopt.lookahead_params(params, state, tx_) if lookahead else params
        g = _grad(at, k, jnp)
        updates, state = tx_.update(g, state, params)
        return lecopt.apply_updates(params, updates), state

    params = {k: jnp.asarray(v) for k, v in _theta0().items()}
    state = tx.init(params)
    out = [params]
    for k in range(num_steps):
        params, state = step(params, state, None if as_arg else tx, k)
        out.append(params)
    return out


def _assert_paths_close(got, want, rtol=1e-9):
    assert len(got) == len(want)
    for t, (g, w) in enumerate(zip(got, want)):
        for n in w:
            gn = np.asarray(g[n], dtype=np.float64)
            # Relative to the leaf's largest entry: entries crossing zero have no relative scale.
            err = np.max(np.abs(gn - w[n])) / np.max(np.abs(w[n]))
            assert err <= rtol, f"step {t}, leaf {n}: relative error {err:.3e}"


# ---------------------------------------------------------------------------------------------
# Algorithms 1-5 literally, float64.


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.9])
def test_momentum_matches_algorithm_1(x64, phi):
    want = ref.momentum(_theta0(), np_grad, 0.05, phi, NUM_STEPS)
    _assert_paths_close(_run_lecopt(lecopt.sgd(0.05, momentum=phi)), want)


def test_momentum_with_schedule_matches_algorithm_1_with_alpha_t(x64):
    def alpha(k):
        # The step arrives as an int32 counter; the rate is computed in float64.
        t = k / 100 if isinstance(k, int) else k.astype(jnp.float64) / 100
        return 0.08 * (1 - t) + 0.002 * t

    want = ref.momentum(_theta0(), np_grad, alpha, 0.9, NUM_STEPS)
    _assert_paths_close(_run_lecopt(lecopt.sgd(alpha, momentum=0.9)), want)
    # optax puts alpha outside the velocity: with a schedule it is a different algorithm.
    theirs = _run_lecopt(optax.sgd(alpha, momentum=0.9))
    assert not np.allclose(np.asarray(theirs[-1]["w"]), want[-1]["w"], rtol=1e-6)


def test_momentum_with_weight_decay(x64):
    want = ref.momentum(_theta0(), np_grad, 0.03, 0.9, NUM_STEPS, weight_decay=1e-3)
    tx = lecopt.sgd(0.03, momentum=0.9, weight_decay=1e-3)
    _assert_paths_close(_run_lecopt(tx), want)


def test_nesterov_literally_via_lookahead_params(x64):
    want = ref.nesterov(_theta0(), np_grad, 0.04, 0.9, NUM_STEPS)
    got = _run_lecopt(lecopt.sgd(0.04, momentum=0.9), lookahead=True)
    _assert_paths_close(got, want)


def test_nesterov_true_tracks_the_lookahead_point(x64):
    phi = 0.9
    want = ref.nesterov(_theta0(), np_grad, 0.04, phi, NUM_STEPS)
    # Algorithm 2's look-ahead point theta_t + phi nu_t, with nu_t = theta_t - theta_{t-1}.
    look = [want[0]] + [
        {n: want[t][n] + phi * (want[t][n] - want[t - 1][n]) for n in want[t]}
        for t in range(1, len(want))
    ]
    got = _run_lecopt(lecopt.sgd(0.04, momentum=phi, nesterov=True))
    _assert_paths_close(got, look)


def test_adagrad_matches_algorithm_3(x64):
    want = ref.adagrad(_theta0(), np_grad, 0.1, 1e-7, NUM_STEPS)
    _assert_paths_close(_run_lecopt(lecopt.adagrad(0.1, eps=1e-7)), want)


def test_adagrad_eps_is_outside_the_root(x64):
    want = ref.adagrad(_theta0(), np_grad, 0.1, 1e-1, NUM_STEPS)
    _assert_paths_close(_run_lecopt(lecopt.adagrad(0.1, eps=1e-1)), want)


@pytest.mark.parametrize("eps", [1e-6, 1e-1])
def test_rmsprop_matches_algorithm_4(x64, eps):
    want = ref.rmsprop(_theta0(), np_grad, 0.01, 0.9, eps, NUM_STEPS)
    _assert_paths_close(_run_lecopt(lecopt.rmsprop(0.01, decay=0.9, eps=eps)), want)


@pytest.mark.parametrize("eps", [1e-8, 1e-2])
def test_adam_matches_algorithm_5(x64, eps):
    want = ref.adam(_theta0(), np_grad, 0.02, 0.9, 0.999, eps, NUM_STEPS)
    _assert_paths_close(_run_lecopt(lecopt.adam(0.02, eps=eps)), want)


def test_adam_large_eps_distinguishes_placement(x64):
    # eps = 1e-2 outside the root (optax's default placement) is a different optimizer:
    # lecopt must follow the lecture, and differ from optax's default by far more than 1e-9.
    want = ref.adam(_theta0(), np_grad, 0.02, 0.9, 0.999, 1e-2, NUM_STEPS)
    ours = _run_lecopt(lecopt.adam(0.02, eps=1e-2))
    outside = _run_lecopt(optax.adam(0.02, eps=1e-2))
    _assert_paths_close(ours, want)
    assert not np.allclose(np.asarray(ours[-1]["w"]), np.asarray(outside[-1]["w"]), rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Closed forms.


@pytest.mark.parametrize("phi", [0.5, 0.9, 0.99])
def test_terminal_velocity(x64, phi):
    alpha, g = 0.01, jnp.array([2.0, -1.0])
    tx = lecopt.sgd(alpha, momentum=phi)
    state = tx.init(g)
    update = jax.jit(tx.update)
    for _ in range(3000):
        u, state = update(g, state)
    np.testing.assert_allclose(u, -alpha * np.asarray(g) / (1 - phi), rtol=1e-9)


class ClosedFormsTest(parameterized.TestCase):
    """Closed forms, each with and without jit (chex variants)."""

    def setUp(self):
        super().setUp()
        self._x64 = jax.config.jax_enable_x64
        jax.config.update("jax_enable_x64", True)

    def tearDown(self):
        jax.config.update("jax_enable_x64", self._x64)
        super().tearDown()

    @chex.variants(with_jit=True, without_jit=True)
    def test_adam_bias_correction_exact_from_step_one(self):
        g = jnp.array([0.3, -2.0, 5.0])
        alpha, eps = 0.1, 1e-8
        tx = lecopt.adam(alpha, eps=eps)
        update = self.variant(tx.update)
        state = tx.init(g)
        for _ in range(1, 6):
            u, state = update(g, state)
            # s_hat = g and r_hat = g*g exactly, at every step t >= 1.
            np.testing.assert_allclose(u, -alpha * g / np.sqrt(g * g + eps), rtol=1e-12)
        assert int(state[0].count) == 5

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(0.5, 0.9)
    def test_scheduled_momentum_constant_gradient_closed_form(self, phi):
        # nu_t = -alpha g (1 - phi^t) / (1 - phi) for constant phi and alpha.
        alpha, g = 0.01, jnp.array([2.0, -1.0])
        tx = lecopt.sgd(lecopt.schedules.constant(alpha),
                        momentum=lecopt.schedules.constant(phi))
        update = self.variant(tx.update)
        state = tx.init(g)
        for t in range(1, 20):
            u, state = update(g, state)
            want = -alpha * np.asarray(g) * (1 - phi**t) / (1 - phi)
            np.testing.assert_allclose(u, want, rtol=1e-9)


def test_bias_correction_function(x64):
    rho, g = 0.9, 1.7
    s = 0.0
    for t in range(1, 8):
        s = rho * s + (1 - rho) * g
        got = lecopt.bias_correction({"s": jnp.array(s)}, rho, t)["s"]
        assert abs(float(got) - g) < 1e-12
    # bfloat16 moments: the divisor is computed in float32 (1 - 0.999 would round to 0).
    got = lecopt.bias_correction(jnp.array(1e-3, jnp.bfloat16), 0.999, 1)
    assert got.dtype == jnp.bfloat16 and abs(float(got) - 1.0) < 1e-2


def test_counter_saturates_at_int32_max():
    tx = lecopt.adam(1e-3)
    params = jnp.ones(2)
    state = tx.init(params)
    big = jnp.iinfo(jnp.int32).max - 1
    state = (state[0]._replace(count=jnp.array(big, jnp.int32)), state[1]._replace(
        count=jnp.array(big, jnp.int32)))
    for _ in range(3):
        u, state = tx.update(params, state)
    assert int(state[0].count) == jnp.iinfo(jnp.int32).max
    assert int(state[1].count) == jnp.iinfo(jnp.int32).max
    assert np.all(np.isfinite(u))


# ---------------------------------------------------------------------------------------------
# optax parity where the math coincides (float32).


def _trajectory(tx, steps=30):
    params = {k: jnp.asarray(v, jnp.float32) for k, v in _theta0().items()}
    state = tx.init(params)

    @jax.jit
    def step(params, state, k):
        u, state = tx.update(_grad(params, k, jnp), state, params)
        return optax.apply_updates(params, u), state

    for k in range(steps):
        params, state = step(params, state, k)
    return params


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lecopt.sgd(0.05), optax.sgd(0.05)),
        (lecopt.sgd(0.05, momentum=0.9), optax.sgd(0.05, momentum=0.9)),
        (lecopt.sgd(0.05, momentum=0.9, nesterov=True),
         optax.sgd(0.05, momentum=0.9, nesterov=True)),
        (lecopt.adam(0.01, eps=1e-8), optax.adam(0.01, eps=0.0, eps_root=1e-8)),
        (lecopt.rmsprop(0.01, 0.9, 1e-6), optax.rmsprop(0.01, 0.9, 1e-6, eps_in_sqrt=False)),
    ],
    ids=["sgd", "momentum", "nesterov", "adam", "rmsprop"],
)
def test_optax_parity(ours, theirs):
    chex.assert_trees_all_close(_trajectory(ours), _trajectory(theirs), rtol=2e-5, atol=1e-6)


def test_chained_after_optax_transformation():
    ours = optax.chain(optax.clip_by_global_norm(0.5), lecopt.adam(0.01))
    theirs = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(0.01, eps=0.0, eps_root=1e-8))
    a, b = _trajectory(ours), _trajectory(theirs)
    chex.assert_trees_all_close(a, b, rtol=2e-5, atol=1e-6)
    # lecopt.chain accepts optax parts too and has optax.chain's state layout.
    mixed = lecopt.chain(optax.clip_by_global_norm(0.5), lecopt.adam(0.01))
    chex.assert_trees_all_close(a, _trajectory(mixed), rtol=1e-6)
    params = {"w": jnp.ones(3)}
    chex.assert_trees_all_equal_structs(mixed.init(params), ours.init(params))


# ---------------------------------------------------------------------------------------------
# Hyperparameters as data: jit, vmap, inject_hyperparams, no recompilation.


OPTIMIZERS = {
    "sgd": lambda lr: lecopt.sgd(lr),
    "momentum": lambda lr: lecopt.sgd(lr, momentum=0.9),
    "nesterov": lambda lr: lecopt.sgd(lr, momentum=0.9, nesterov=True),
    "adagrad": lambda lr: lecopt.adagrad(lr),
    "rmsprop": lambda lr: lecopt.rmsprop(lr),
    "adam": lambda lr: lecopt.adam(lr),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_new_hyperparameters_do_not_recompile(name, compile_counter):
    make = OPTIMIZERS[name]
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    traces = []

    @jax.jit
    def step(params, state, tx):
        traces.append(1)
        g = jax.tree.map(lambda p: p + 1.0, params)
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state

    tx = make(0.1)
    out = step(params, tx.init(params), tx)
    with compile_counter.expect(0):
        for lr in (0.01, 0.3, 1.5):
            tx = make(lr)
            out2 = step(params, tx.init(params), tx)
    assert len(traces) == 1
    assert not np.allclose(out[0]["w"], out2[0]["w"])


def test_momentum_value_does_not_recompile(compile_counter):
    params = jnp.ones(4)

    @jax.jit
    def run(tx):
        state = tx.init(params)
        u, state = tx.update(params, state, params)
        u, state = tx.update(params, state, params)
        return u

    run(lecopt.sgd(0.03, momentum=0.9))
    with compile_counter.expect(0):
        u = run(lecopt.sgd(0.01, momentum=0.5))
    # nu1 = -0.01; nu2 = 0.5 * nu1 - 0.01
    np.testing.assert_allclose(u, -0.015, rtol=1e-6)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_vmap_over_learning_rates_equals_separate_runs(name):
    make = OPTIMIZERS[name]
    lrs = jnp.array([0.01, 0.05, 0.2])
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)}

    def run(tx):
        p, state = params, tx.init(params)
        for k in range(5):
            u, state = tx.update(_grad(p, k, jnp), state, p)
            p = optax.apply_updates(p, u)
        return p["w"]

    # A batch of optimizers (leaves stacked) and optimizers built from a traced rate.
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[make(float(lr)) for lr in lrs])
    batched = jax.jit(jax.vmap(run))(stacked)
    built = jax.jit(jax.vmap(lambda lr: run(make(lr))))(lrs)
    for i, lr in enumerate(lrs):
        separate = run(make(float(lr)))
        np.testing.assert_allclose(batched[i], separate, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(built[i], separate, rtol=1e-5, atol=1e-7)


def test_vmap_over_momenta_equals_separate_runs(compile_counter):
    phis = jnp.array([0.0, 0.5, 0.9, 0.99])
    params = jnp.array([1.0, -2.0, 0.5, 3.0])

    def run(tx):
        p, state = params, tx.init(params)
        for k in range(10):
            u, state = tx.update(_grad({"b": p}, k, jnp)["b"], state, p)
            p = p + u
        return p

    batched = jax.vmap(lambda phi: run(lecopt.sgd(0.05, momentum=phi)))(phis)
    for i, phi in enumerate(phis):
        np.testing.assert_allclose(batched[i], run(lecopt.sgd(0.05, momentum=float(phi))),
                                   rtol=1e-5)


def test_inject_hyperparams():
    params = {"w": jnp.ones(3)}
    tx = optax.inject_hyperparams(lecopt.adam)(learning_rate=0.1, b1=0.8)
    state = tx.init(params)
    ref_tx = lecopt.adam(0.1, b1=0.8)
    ref_state = ref_tx.init(params)
    g = {"w": jnp.array([1.0, -2.0, 0.5])}
    step = jax.jit(tx.update)
    for _ in range(3):
        u, state = step(g, state, params)
        v, ref_state = ref_tx.update(g, ref_state, params)
        np.testing.assert_allclose(u["w"], v["w"], rtol=1e-6)
    state.hyperparams["learning_rate"] = jnp.array(0.01)
    u, state = step(g, state, params)
    v, _ = lecopt.adam(0.01, b1=0.8).update(g, ref_state, params)
    np.testing.assert_allclose(u["w"], v["w"], rtol=1e-6)


def test_grad_through_an_update_with_respect_to_the_learning_rate():
    params = jnp.array([1.0, 2.0])

    def loss_after_step(lr):
        tx = lecopt.sgd(lr, momentum=0.9)
        u, _ = tx.update(2 * params, tx.init(params), params)
        return jnp.sum((params + u) ** 2)

    # d/dlr sum((p - 2 lr p)^2) = sum(2 (p - 2 lr p) (-2 p))
    lr = 0.1
    want = np.sum(2 * (np.array([1.0, 2.0]) * (1 - 2 * lr)) * (-2 * np.array([1.0, 2.0])))
    np.testing.assert_allclose(jax.grad(loss_after_step)(lr), want, rtol=1e-5)


def test_train_state_integration():
    def apply_fn(params, x):
        return x @ params["w"]

    params = {"w": jnp.zeros((3, 1))}
    state = train_state.TrainState.create(apply_fn=apply_fn, params=params,
                                          tx=lecopt.sgd(0.1, momentum=0.9))
    x = jnp.eye(3)
    y = jnp.ones((3, 1))

    @jax.jit
    def step(state):
        loss, g = jax.value_and_grad(lambda p: jnp.mean((state.apply_fn(p, x) - y) ** 2))(
            state.params)
        return state.apply_gradients(grads=g), loss

    losses = []
    for _ in range(30):
        state, loss = step(state)
        losses.append(float(loss))
    assert losses[-1] < 1e-2 * losses[0]
    assert int(state.step) == 30


# ---------------------------------------------------------------------------------------------
# Errors.


def test_structure_mismatch_is_reported():
    tx = lecopt.adam(1e-3)
    state = tx.init({"a": jnp.ones(2)})
    with pytest.raises(ValueError, match="structure"):
        tx.update({"a": jnp.ones(2), "b": jnp.ones(2)}, state)


def test_weight_decay_needs_params():
    tx = lecopt.sgd(0.1, weight_decay=1e-3)
    with pytest.raises(ValueError, match="params"):
        tx.update(jnp.ones(2), tx.init(jnp.ones(2)))


def test_nesterov_must_be_bool():
    with pytest.raises(TypeError, match="nesterov"):
        lecopt.sgd(0.1, momentum=0.9, nesterov=1)


def test_lookahead_params_needs_a_momentum_state():
    tx = lecopt.adam(1e-3)
    with pytest.raises(ValueError, match="momentum"):
        lecopt.lookahead_params(jnp.ones(2), tx.init(jnp.ones(2)), tx)


BAD = [
    ("learning_rate", lambda v: lecopt.sgd(v), [-0.1, float("nan"), float("inf")]),
    ("momentum", lambda v: lecopt.sgd(0.1, momentum=v), [-0.1, 1.0, 1.5]),
    ("weight_decay", lambda v: lecopt.sgd(0.1, weight_decay=v), [-1e-3]),
    ("eps", lambda v: lecopt.adagrad(0.1, eps=v), [-1e-7]),
    ("decay", lambda v: lecopt.rmsprop(0.1, decay=v), [1.0, -0.5]),
    ("b1", lambda v: lecopt.adam(0.1, b1=v), [1.0, -0.1]),
    ("b2", lambda v: lecopt.adam(0.1, b2=v), [1.0]),
    ("eps", lambda v: lecopt.adam(0.1, eps=v), [-1.0]),
    ("learning_rate", lambda v: lecopt.adam(v), [-1e-3]),
    ("momentum", lambda v: lecopt.sgd(0.1, momentum=jnp.array([0.5, v])), [1.0]),
]


@settings(max_examples=40, deadline=None)
@given(case=st.sampled_from(BAD), data=st.data())
def test_out_of_range_values_raise_with_the_name(case, data):
    name, make, values = case
    v = data.draw(st.sampled_from(values))
    with pytest.raises(ValueError, match=name):
        make(v)


# ---------------------------------------------------------------------------------------------
# Property-based: random valid settings stay finite.


def _make_any(kind, lr, phi, decay, eps):
    return {
        "sgd": lambda: lecopt.sgd(lr, momentum=phi, weight_decay=decay * 1e-2),
        "nesterov": lambda: lecopt.sgd(lr, momentum=phi, nesterov=True),
        "adagrad": lambda: lecopt.adagrad(lr, eps=eps),
        "rmsprop": lambda: lecopt.rmsprop(lr, decay=decay, eps=eps),
        "adam": lambda: lecopt.adam(lr, b1=phi, b2=decay, eps=eps),
    }[kind]()


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(["sgd", "nesterov", "adagrad", "rmsprop", "adam"]),
    lr=st.floats(0.0, 1.0),
    phi=st.floats(0.0, 0.999),
    decay=st.floats(0.0, 0.999),
    eps=st.floats(1e-8, 1.0),
    shape=st.sampled_from([(), (3,), (2, 3), (1, 1, 4)]),
    dtype=st.sampled_from(["float32", "bfloat16"]),
    seed=st.integers(0, 2**16),
)
def test_random_valid_settings_stay_finite(kind, lr, phi, decay, eps, shape, dtype, seed):
    tx = _make_any(kind, lr, phi, decay, eps)
    rng = np.random.default_rng(seed)
    params = {"a": jnp.asarray(rng.normal(size=shape), dtype), "b": jnp.ones(2, dtype)}
    state = tx.init(params)
    for _ in range(3):
        g = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        u, state = tx.update(g, state, params)
        params = optax.apply_updates(params, u)
    for leaf in jax.tree.leaves(params):
        assert leaf.dtype == jnp.dtype(dtype)
        assert np.all(np.isfinite(np.asarray(leaf, np.float32)))


@settings(max_examples=10, deadline=None)
@given(kind=st.sampled_from(["sgd", "nesterov", "adagrad", "rmsprop", "adam"]),
       lr=st.floats(1e-4, 1.0), phi=st.floats(0.0, 0.99))
def test_float64_stays_float64(kind, lr, phi):
    with jax.enable_x64(True):
        tx = _make_any(kind, lr, phi, 0.9, 1e-7)
        params = jnp.arange(3.0, dtype=jnp.float64)
        u, _ = tx.update(params + 1.0, tx.init(params), params)
    assert u.dtype == jnp.float64 and np.all(np.isfinite(u))


@pytest.mark.parametrize("name", ["momentum", "nesterov", "adagrad", "rmsprop", "adam"])
def test_bfloat16_params_follow_the_float32_run(name):
    # bfloat16 params with float32 state: the trajectory stays within bfloat16 rounding of
    # the float32 one (before the fix, Adam's r stayed 0 in bfloat16: steps 1e4x too large).
    make = {
        "momentum": lambda: lecopt.sgd(0.01, momentum=0.9),
        "nesterov": lambda: lecopt.sgd(0.01, momentum=0.9, nesterov=True),
        "adagrad": lambda: lecopt.adagrad(0.01),
        "rmsprop": lambda: lecopt.rmsprop(0.01, decay=0.999),
        "adam": lambda: lecopt.adam(0.01),
    }[name]
    g = jnp.array([0.5, -1.0, 2.0, 0.25])

    def run(dtype):
        tx = make()
        p = jnp.ones(4, dtype)
        state = tx.init(p)
        for _ in range(5):
            u, state = tx.update(g.astype(dtype), state, p)
            chex.assert_type(u, dtype)
            p = optax.apply_updates(p, u)
        return np.asarray(p, np.float32), state

    p16, state16 = run(jnp.bfloat16)
    p32, _ = run(jnp.float32)
    np.testing.assert_allclose(p16, p32, rtol=0, atol=2e-2)
    chex.assert_type([x for x in jax.tree.leaves(state16) if x.ndim], jnp.float32)
