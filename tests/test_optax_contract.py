"""optax's contract, as an optax user meets it: complex parameters, inject_hyperparams,
optax's wrappers, sharded state, the learning rate read back from the state, low-precision
moments; and the schedules of issue 18 (scheduled momentum and b1, AdamW).

References are independent of lecopt: the algorithm boxes in complex/float64 NumPy
(tests/reference.py), and optax's own optimizers inside the same optax wrapper.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

import lecopt
from lecopt import schedules
from tests import reference as ref

ROOT = Path(__file__).resolve().parents[1]
NUM_STEPS = 40
SHAPES = {"w": (3, 4), "b": (4,)}


def _max_rel(got, want) -> float:
    got, want = np.asarray(got), np.asarray(want)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def _assert_paths_close(got, want, rtol=1e-9):
    assert len(got) == len(want)
    for t, (g, w) in enumerate(zip(got, want)):
        for n in w:
            err = _max_rel(np.asarray(g[n]), w[n])
            assert err <= rtol, f"step {t}, leaf {n}: relative error {err:.3e}"


def _run(tx, theta0, grad, num_steps=NUM_STEPS, lookahead=False):
    """Runs ``tx`` through one jitted step; returns the params after every step. A lecopt
    optimizer is passed as data (a pytree), an optax one (a closure) is closed over."""
    as_data = _is_pytree(tx)

    @jax.jit
    def step(params, state, tx_arg, k):
        tx_ = tx_arg if as_data else tx
        at = lecopt.lookahead_params(params, state, tx_) if lookahead else params
        updates, state = tx_.update(grad(at, k, jnp), state, params)
        return optax.apply_updates(params, updates), state

    params = {k: jnp.asarray(v) for k, v in theta0.items()}
    state = tx.init(params)
    out = [params]
    for k in range(num_steps):
        params, state = step(params, state, tx if as_data else None, k)
        out.append(params)
    return out


# ---------------------------------------------------------------------------------------------
# 1. Complex parameters.

_CURV = {k: np.linspace(0.5, 3.0, int(np.prod(s))).reshape(s) for k, s in SHAPES.items()}


def _complex_theta0():
    rng = np.random.default_rng(1)
    return {k: rng.normal(size=s) + 1j * rng.normal(size=s) for k, s in SHAPES.items()}


def _complex_grad(theta, k, xp):
    # A conjugate-gradient estimate: curvature, a non-analytic conj term, a drifting offset.
    return {n: _CURV[n] * theta[n] + 0.2 * xp.conj(theta[n]) * 1j
            + (0.1 + 0.05j) * xp.sin(0.37 * k + 1.0) for n in theta}


COMPLEX_CASES = {
    "momentum": (lambda: lecopt.sgd(0.05, momentum=0.9),
                 lambda th, g: ref.momentum(th, g, 0.05, 0.9, NUM_STEPS)),
    "adagrad": (lambda: lecopt.adagrad(0.1, eps=1e-7),
                lambda th, g: ref.adagrad(th, g, 0.1, 1e-7, NUM_STEPS)),
    "rmsprop": (lambda: lecopt.rmsprop(0.01, decay=0.9, eps=1e-6),
                lambda th, g: ref.rmsprop(th, g, 0.01, 0.9, 1e-6, NUM_STEPS)),
    "adam": (lambda: lecopt.adam(0.02, eps=1e-8),
             lambda th, g: ref.adam(th, g, 0.02, 0.9, 0.999, 1e-8, NUM_STEPS)),
}


@pytest.mark.parametrize("name", list(COMPLEX_CASES))
def test_complex_matches_the_algorithm_box_with_conj(x64, name):
    make, reference = COMPLEX_CASES[name]
    want = reference(_complex_theta0(), lambda th, k: _complex_grad(th, k, np))
    _assert_paths_close(_run(make(), _complex_theta0(), _complex_grad), want)


@pytest.mark.parametrize("name", ["rmsprop", "adagrad", "adam"])
def test_complex_second_moments_are_real_first_moments_complex(name):
    tx = COMPLEX_CASES[name][0]()
    params = jnp.ones(3, jnp.complex64)
    _, state = tx.update(jnp.array([1 + 2j, -1j, 3.0], jnp.complex64), tx.init(params), params)
    moments = state[0]
    second = getattr(moments, "second_moment", getattr(moments, "sum_of_squares", None))
    assert second.dtype == jnp.float32
    np.testing.assert_array_less(-1e-12, np.asarray(second))
    if name == "adam":
        assert moments.first_moment.dtype == jnp.complex64


_TARGET = np.array([1.0 - 2.0j, 0.5 + 0.25j, -3.0 + 1.0j])
CONVERGING = {
    "sgd": lambda: lecopt.sgd(0.1),
    "momentum": lambda: lecopt.sgd(0.05, momentum=0.9),
    "nesterov": lambda: lecopt.sgd(0.05, momentum=0.9, nesterov=True),
    "adagrad": lambda: lecopt.adagrad(1.0),
    "rmsprop": lambda: lecopt.rmsprop(0.01),
    "adam": lambda: lecopt.adam(0.1),
    "adamw": lambda: lecopt.adamw(0.1, weight_decay=0.0),
}


@pytest.mark.parametrize("dtype", [jnp.complex64, jnp.complex128])
@pytest.mark.parametrize("name", list(CONVERGING))
def test_complex_quadratic_converges_to_the_optimum(name, dtype):
    # The parabola: sum |theta - theta*|^2 from 0, 2,000 steps, conjugate gradient.
    with jax.enable_x64(dtype == jnp.complex128):
        target = jnp.asarray(_TARGET, dtype)
        loss = lambda z: jnp.sum(jnp.abs(z - target) ** 2)  # noqa: E731
        tx = CONVERGING[name]()

        def step(carry, _):
            z, state = carry
            u, state = tx.update(jax.grad(loss)(z).conj(), state, z)
            return (optax.apply_updates(z, u), state), None

        z0 = jnp.zeros(3, dtype)
        (z, _), _ = jax.jit(lambda: jax.lax.scan(step, (z0, tx.init(z0)), None, 2000))()
        assert z.dtype == dtype
        # Adam and RMSProp at a constant rate end in a limit cycle of size ~ alpha.
        tol = {"adam": 1e-2, "adamw": 1e-2, "rmsprop": 2e-2}.get(name, 1e-4)
        np.testing.assert_allclose(np.asarray(z), _TARGET, atol=tol)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lecopt.sgd(0.05, momentum=0.9), optax.sgd(0.05, momentum=0.9)),
        (lecopt.adam(0.02), optax.adam(0.02, eps=0.0, eps_root=1e-8)),
        (lecopt.rmsprop(0.01), optax.rmsprop(0.01, 0.9, 1e-6, eps_in_sqrt=False)),
    ],
    ids=["momentum", "adam", "rmsprop"],
)
def test_complex_equals_optax(ours, theirs):
    theta0 = {k: v.astype(np.complex64) for k, v in _complex_theta0().items()}
    a, b = _run(ours, theta0, _complex_grad, 30)[-1], _run(theirs, theta0, _complex_grad, 30)[-1]
    chex.assert_trees_all_close(a, b, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# 2. optax.inject_hyperparams: same updates, same inner state (structure and values).

_COSINE = schedules.cosine_annealing(0.1, 0.01, 6)
_MOMENTUM_CYCLE = schedules.triangular(0.85, 0.95, 3)
INJECTED = [
    ("sgd", lecopt.sgd, {"learning_rate": 0.001}, ()),
    ("momentum", lecopt.sgd, {"learning_rate": 0.001, "momentum": 0.9}, ()),
    ("momentum_0", lecopt.sgd, {"learning_rate": 0.01, "momentum": 0.0}, ()),
    ("nesterov", lecopt.sgd, {"learning_rate": 0.01, "momentum": 0.9, "nesterov": True}, ()),
    ("weight_decay", lecopt.sgd, {"learning_rate": 0.01, "momentum": 0.9,
                                  "weight_decay": 1e-2}, ()),
    ("weight_decay_0", lecopt.sgd, {"learning_rate": 0.01, "weight_decay": 0.0}, ()),
    ("lr_schedule", lecopt.sgd, {"learning_rate": _COSINE, "momentum": 0.9}, ()),
    ("momentum_schedule", lecopt.sgd, {"learning_rate": 0.01, "momentum": _MOMENTUM_CYCLE}, ()),
    ("adagrad", lecopt.adagrad, {"learning_rate": 0.1}, ()),
    ("rmsprop", lecopt.rmsprop, {"learning_rate": 0.01, "decay": 0.95}, ()),
    ("adam", lecopt.adam, {"learning_rate": 0.01, "b1": 0.8}, ()),
    ("adam_schedule", lecopt.adam, {"learning_rate": _COSINE, "b1": _MOMENTUM_CYCLE}, ()),
    ("adam_mu_bf16", lecopt.adam, {"learning_rate": 0.01, "mu_dtype": jnp.bfloat16},
     ("mu_dtype",)),
    ("adamw", lecopt.adamw, {"learning_rate": 0.01, "weight_decay": 0.1}, ()),
    ("adamw_mask", lecopt.adamw,
     {"learning_rate": 0.01, "weight_decay": 0.1,
      "mask": lambda p: jax.tree.map(lambda x: x.ndim > 1, p)}, ("mask",)),
]


class InjectHyperparamsTest(parameterized.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*INJECTED)
    def test_same_updates_and_inner_state(self, factory, kwargs, static):
        params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.array([0.5, -0.5])}
        wrapped = optax.inject_hyperparams(factory, static_args=static)(**kwargs)
        plain = factory(**kwargs)
        init_w, init_p = self.variant(wrapped.init), self.variant(plain.init)
        sw, sp = init_w(params), init_p(params)
        chex.assert_trees_all_equal_structs(sw.inner_state, sp)
        chex.assert_trees_all_close(sw.inner_state, sp)
        update_w, update_p = self.variant(wrapped.update), self.variant(plain.update)
        for k in range(4):
            g = jax.tree.map(lambda p, k=k: jnp.cos(3.0 * p + k), params)
            uw, sw = update_w(g, sw, params)
            up, sp = update_p(g, sp, params)
            chex.assert_trees_all_close(uw, up, rtol=1e-6, atol=1e-9)
            chex.assert_trees_all_equal_structs(sw.inner_state, sp)
            chex.assert_trees_all_close(sw.inner_state, sp, rtol=1e-6, atol=1e-9)
            params = optax.apply_updates(params, up)


def test_state_structure_does_not_depend_on_literal_or_array():
    params = {"w": jnp.ones(3)}
    for kw in ({"momentum": 0.0}, {"weight_decay": 0.0}, {"momentum": 0.9, "weight_decay": 0.0}):
        literal = lecopt.sgd(0.1, **kw)
        array = lecopt.sgd(jnp.asarray(0.1), **{k: jnp.asarray(v) for k, v in kw.items()})
        assert jax.tree.structure(literal) == jax.tree.structure(array)
        assert jax.tree.structure(literal.init(params)) == jax.tree.structure(array.init(params))
    # The case: the injected default no longer adds an EmptyState.
    injected = optax.inject_hyperparams(lecopt.sgd)(learning_rate=0.001, momentum=0.9)
    plain = lecopt.sgd(learning_rate=0.001, momentum=0.9)
    assert [type(s).__name__ for s in injected.init(params).inner_state] == [
        "ScaleByLearningRateState", "ScaleByMomentumState"]
    assert jax.tree.structure(injected.init(params).inner_state) == jax.tree.structure(
        plain.init(params))


def test_vmap_over_momenta_and_decays_containing_zero():
    params = jnp.array([1.0, -2.0, 0.5])

    def run(phi, lam):
        tx = lecopt.sgd(0.05, momentum=phi, weight_decay=lam)
        p, state = params, tx.init(params)
        for _ in range(5):
            u, state = tx.update(2 * p + 1, state, p)
            p = p + u
        return p

    phis, lams = jnp.array([0.0, 0.5, 0.9]), jnp.array([0.0, 0.1, 0.0])
    batched = jax.jit(jax.vmap(run))(phis, lams)
    for i in range(3):
        want = ref.momentum({"p": np.asarray(params, np.float64)},
                            lambda th, k: {"p": 2 * th["p"] + 1}, 0.05, float(phis[i]), 5,
                            weight_decay=float(lams[i]))[-1]["p"]
        np.testing.assert_allclose(batched[i], want, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# 3. optax's wrappers around lecopt, against the same wrapper around optax.

PAIRS = {
    "momentum": (lambda: lecopt.sgd(0.05, momentum=0.9), lambda: optax.sgd(0.05, momentum=0.9)),
    "adam": (lambda: lecopt.adam(0.02), lambda: optax.adam(0.02, eps=0.0, eps_root=1e-8)),
    "rmsprop": (lambda: lecopt.rmsprop(0.01),
                lambda: optax.rmsprop(0.01, 0.9, 1e-6, eps_in_sqrt=False)),
    "adamw": (lambda: lecopt.adamw(0.02, weight_decay=0.1),
              lambda: optax.adamw(0.02, eps=0.0, eps_root=1e-8, weight_decay=0.1)),
}
_BIAS_MASK = {"w": True, "b": False}
WRAPPERS = {
    "multi_steps": lambda t: optax.MultiSteps(t, every_k_schedule=3).gradient_transformation(),
    "masked": lambda t: optax.masked(t, _BIAS_MASK),
    "partition": lambda t: optax.partition({"w": t, "b": optax.sgd(0.1)},
                                           {"w": "w", "b": "b"}),
    "apply_if_finite": lambda t: optax.apply_if_finite(t, max_consecutive_errors=2),
    "clip_chain": lambda t: optax.chain(optax.clip_by_global_norm(0.5), t),
    "reduce_on_plateau": lambda t: optax.chain(
        t, optax.contrib.reduce_on_plateau(patience=2, cooldown=0, factor=0.5,
                                           accumulation_size=1)),
    "flatten": lambda t: optax.flatten(t),
}


def _wrapped_run(tx, dtype, steps=12):
    """Params after ``steps`` updates of a jitted loop on a quadratic; a nan gradient at step
    4 (for apply_if_finite) and the loss passed as ``value`` (for reduce_on_plateau)."""
    params = {"w": jnp.linspace(-1.0, 2.0, 6, dtype=dtype).reshape(2, 3),
              "b": jnp.array([0.5, -1.5], dtype)}
    loss = lambda p: sum(jnp.sum(jnp.cos(x.astype(jnp.float32)) + x.astype(jnp.float32) ** 2)  # noqa: E731
                         for x in jax.tree.leaves(p))

    def step(carry, k):
        p, state = carry
        value, g = jax.value_and_grad(loss)(p)
        g = jax.tree.map(lambda x: jnp.where(k == 4, jnp.nan, x).astype(dtype), g)
        u, state = tx.update(g, state, p, value=value)
        return (optax.apply_updates(p, u), state), None

    (p, state), _ = jax.jit(lambda: jax.lax.scan(step, (params, tx.init(params)),
                                                 jnp.arange(steps)))()
    return p, state


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
@pytest.mark.parametrize("name", list(PAIRS))
def test_optax_wrapper_matches_optax(wrapper, name):
    wrap = WRAPPERS[wrapper]
    ours, _ = _wrapped_run(_nan_guard(wrapper, wrap(PAIRS[name][0]())), jnp.float32)
    theirs, _ = _wrapped_run(_nan_guard(wrapper, wrap(PAIRS[name][1]())), jnp.float32)
    chex.assert_trees_all_close(ours, theirs, rtol=2e-5, atol=2e-6)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(ours))


def _nan_guard(wrapper, tx):
    # Only apply_if_finite is meant to see the nan gradient; others get it zeroed out first.
    if wrapper == "apply_if_finite":
        return tx
    return optax.chain(optax.zero_nans(), tx)


@pytest.mark.parametrize("wrapper", ["multi_steps", "masked", "apply_if_finite", "flatten",
                                     "reduce_on_plateau"])
def test_bfloat16_params_with_float32_state_inside_wrappers(wrapper):
    tx = lambda: _nan_guard(wrapper, WRAPPERS[wrapper](lecopt.adam(0.02)))  # noqa: E731
    p16, state16 = _wrapped_run(tx(), jnp.bfloat16)
    p32, _ = _wrapped_run(tx(), jnp.float32)
    for a, b in zip(jax.tree.leaves(p16), jax.tree.leaves(p32)):
        assert a.dtype == jnp.bfloat16
        # bfloat16 rounding of the params (2**-8 relative) over 12 steps; masked-off leaves
        # take the raw gradient and grow large, hence the relative part.
        np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=3e-2, atol=5e-2)
    moments = [x for x in jax.tree.leaves(state16) if x.ndim and x.size > 1]
    adam_moments = [x for x in moments if x.dtype == jnp.float32]
    assert len(adam_moments) >= 2  # s and r of at least one leaf stay float32


# ---------------------------------------------------------------------------------------------
# 4. State sharded like the params (4 simulated CPU devices, in a subprocess).


def test_state_is_sharded_like_the_params(tmp_path):
    out = tmp_path / "sharding.json"
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4")
    env["PYTHONPATH"] = str(ROOT)
    subprocess.run([sys.executable, str(ROOT / "tests" / "_optax_sharding.py"), str(out)],
                   env=env, check=True, timeout=600, cwd=ROOT)
    result = json.loads(out.read_text())
    assert result["devices"] == 4
    for name, r in result["optimizers"].items():
        assert r["init_mismatches"] == [], (name, r["init_mismatches"])
        assert r["update_mismatches"] == [], (name, r["update_mismatches"])
        assert r["collectives"] == [], (name, r["collectives"])
        if name != "sgd":  # every moment of "w" and "b" (sharded) is sharded
            assert r["sharded_leaves"] == (4 if name.startswith("adam") else 2), name


# ---------------------------------------------------------------------------------------------
# 5. The learning rate of the next update, read back from (tx, state).

SCHEDULES = {
    "constant": schedules.constant(0.05),
    "linear_decay": schedules.linear_decay(0.1, 0.01, 5),
    "triangular": schedules.triangular(0.01, 0.1, 2),
    "triangular2": schedules.triangular2(0.01, 0.1, 2),
    "exp_range": schedules.exp_range(0.01, 0.1, 2, 0.9),
    "cosine_annealing": schedules.cosine_annealing(0.1, 0.01, 4),
    "sgdr": schedules.sgdr(0.1, 0.01, 2, period_mult=2),
    "exponential_range": schedules.exponential_range(1e-3, 1.0, 6),
    "linear_range": schedules.linear_range(1e-3, 1.0, 6),
    "optax_cosine": optax.cosine_decay_schedule(0.1, 5),
    "python_float": 0.03,
}
MAKERS = {
    "sgd": lambda lr: lecopt.sgd(lr),
    "momentum": lambda lr: lecopt.sgd(lr, momentum=0.9, weight_decay=1e-3),
    "nesterov": lambda lr: lecopt.sgd(lr, momentum=0.9, nesterov=True),
    "adagrad": lambda lr: lecopt.adagrad(lr),
    "rmsprop": lambda lr: lecopt.rmsprop(lr),
    "adam": lambda lr: lecopt.adam(lr),
    "adamw": lambda lr: lecopt.adamw(lr),
}
LR_WRAPPERS = {
    "plain": (lambda make, lr: make(lr), lambda k: k),
    "lecopt_chain": (lambda make, lr: lecopt.chain(optax.clip(1.0), make(lr)), lambda k: k),
    "optax_chain": (lambda make, lr: optax.chain(optax.clip(1.0), make(lr)), lambda k: k),
    "multi_steps": (lambda make, lr: optax.MultiSteps(make(lr), every_k_schedule=2),
                    lambda k: k // 2),
    "inject": (lambda make, lr: optax.inject_hyperparams(make)(lr), lambda k: k),
}


def _value(schedule, k):
    return schedule(k) if callable(schedule) else schedule


def _check_read_back(tx, schedule, applied):
    params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}
    state = tx.init(params)
    read = jax.jit(lecopt.current_learning_rate)
    update = jax.jit(tx.update)
    for k in range(6):
        want = float(_value(schedule, applied(k)))
        np.testing.assert_allclose(float(read(tx, state)) if _is_pytree(tx) else
                                   float(lecopt.current_learning_rate(tx, state)), want,
                                   rtol=1e-6, err_msg=f"after {k} updates")
        _, state = update(params, state, params)


def _is_pytree(tx):
    return isinstance(getattr(tx, "update", None), jax.tree_util.Partial)


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_current_learning_rate_for_every_schedule(schedule):
    _check_read_back(lecopt.sgd(SCHEDULES[schedule], momentum=0.9), SCHEDULES[schedule],
                     lambda k: k)


@pytest.mark.parametrize("wrapper", list(LR_WRAPPERS))
@pytest.mark.parametrize("name", list(MAKERS))
def test_current_learning_rate_for_every_optimizer_and_wrapper(name, wrapper):
    build, applied = LR_WRAPPERS[wrapper]
    schedule = SCHEDULES["cosine_annealing"]
    _check_read_back(build(MAKERS[name], schedule), schedule, applied)


def test_current_learning_rate_inside_a_compiled_loop_with_tx_as_argument():
    schedule = schedules.linear_decay(0.1, 0.0, 10)
    params = jnp.ones(3)

    @jax.jit
    def epoch(tx, state):
        def body(state, _):
            _, state = tx.update(params, state, params)
            return state, lecopt.current_learning_rate(tx, state)
        return jax.lax.scan(body, state, None, 4)

    tx = lecopt.sgd(schedule, momentum=0.9)
    _, rates = epoch(tx, tx.init(params))
    np.testing.assert_allclose(rates, [0.1 * (1 - k / 10) for k in range(1, 5)], rtol=1e-6)


def test_current_learning_rate_of_an_injected_optax_optimizer_and_errors():
    schedule = schedules.cosine_annealing(0.1, 0.01, 4)
    _check_read_back(optax.inject_hyperparams(optax.adam)(learning_rate=schedule), schedule,
                     lambda k: k)
    with pytest.raises(ValueError, match="learning_rate"):
        lecopt.current_learning_rate(optax.sgd(0.1), optax.sgd(0.1).init(jnp.ones(2)))
    two = optax.partition({"a": lecopt.sgd(0.1), "b": lecopt.adam(0.1)}, {"w": "a", "b": "b"})
    with pytest.raises(ValueError, match="found 2"):
        lecopt.current_learning_rate(two, two.init({"w": jnp.ones(2), "b": jnp.ones(2)}))
    with pytest.raises(TypeError, match="tx"):
        lecopt.current_learning_rate(0.1, None)


# ---------------------------------------------------------------------------------------------
# 6. Low-precision first moment.


def test_mu_dtype_stores_the_first_moment_and_matches_optax():
    tx = lecopt.adam(0.02, mu_dtype=jnp.bfloat16)
    state = tx.init({"w": jnp.ones(3)})
    assert state[0].first_moment["w"].dtype == jnp.bfloat16
    assert state[0].second_moment["w"].dtype == jnp.float32
    assert lecopt.adam(0.02).init({"w": jnp.ones(3)})[0].first_moment["w"].dtype == jnp.float32
    theta0 = {k: np.random.default_rng(2).normal(size=s).astype(np.float32)
              for k, s in SHAPES.items()}
    grad = lambda th, k, xp: {n: _CURV[n] * th[n] + 0.1 * xp.sin(0.37 * k) for n in th}  # noqa: E731
    ours = _run(tx, theta0, grad, 30)[-1]
    theirs = _run(optax.adam(0.02, eps=0.0, eps_root=1e-8, mu_dtype=jnp.bfloat16), theta0,
                  grad, 30)[-1]
    # optax multiplies the bfloat16 moment by b1 in bfloat16, lecopt in float32: the two
    # differ by bfloat16 rounding (2**-8) of s, relative to the largest update.
    for n in ours:
        assert _max_rel(ours[n], theirs[n]) < 1e-2, n
    with pytest.raises(TypeError, match="mu_dtype"):
        lecopt.adam(mu_dtype=jnp.int32)


# ---------------------------------------------------------------------------------------------
# Issue 18: scheduled momentum and b1 (Algorithm 1 / 2 / 5 with phi_t), AdamW.

_THETA0 = {k: np.random.default_rng(0).normal(size=s) for k, s in SHAPES.items()}


def _real_grad(theta, k, xp):
    return {n: _CURV[n] * theta[n] + 0.3 * xp.cos(theta[n]) + 0.1 * xp.sin(0.37 * k + 1.0)
            for n in theta}


def _np_grad(theta, k):
    return _real_grad(theta, k, np)


_ALPHA = schedules.linear_decay(0.08, 0.002, NUM_STEPS)


def _alpha_np(k):
    return 0.08 + (0.002 - 0.08) * min(k, NUM_STEPS) / NUM_STEPS


def test_scheduled_momentum_matches_algorithm_1_with_phi_t(x64):
    # A CLR cycle of phi between 0.85 and 0.95 (Smith's formula re-written in NumPy).
    phi = schedules.triangular(0.85, 0.95, 10)

    def phi_np(k):
        return 0.85 + 0.1 * max(0.0, 1 - abs(k / 10 - 2 * np.floor(1 + k / 20) + 1))

    want = ref.momentum(_THETA0, _np_grad, _alpha_np, phi_np, NUM_STEPS)
    _assert_paths_close(_run(lecopt.sgd(_ALPHA, momentum=phi), _THETA0, _real_grad), want)
    # Through scale_by_momentum directly, chained as Algorithm 1.
    tx = lecopt.chain(lecopt.scale_by_learning_rate(_ALPHA), lecopt.scale_by_momentum(phi))
    _assert_paths_close(_run(tx, _THETA0, _real_grad), want)


def test_scheduled_momentum_nesterov_both_ways_matches_algorithm_2(x64):
    want = ref.nesterov(_THETA0, _np_grad, 0.04, _phi_np_down, NUM_STEPS)
    literal = _run(lecopt.sgd(0.04, momentum=_PHI_DOWN), _THETA0, _real_grad, lookahead=True)
    _assert_paths_close(literal, want)
    # nesterov=True holds the look-ahead point theta_t + phi_t nu_t.
    look = [want[0]] + [{n: want[t][n] + _phi_np_down(t) * (want[t][n] - want[t - 1][n])
                         for n in want[t]} for t in range(1, len(want))]
    held = _run(lecopt.sgd(0.04, momentum=_PHI_DOWN, nesterov=True), _THETA0, _real_grad)
    _assert_paths_close(held, look)


def _phi_np_down(k):
    return 0.95 - 0.1 * min(k, 30) / 30


_PHI_DOWN = schedules.linear_decay(0.95, 0.85, 30)


def test_scheduled_b1_matches_algorithm_5_with_rho1_t(x64):
    want = ref.adam(_THETA0, _np_grad, 0.02, _phi_np_down, 0.999, 1e-8, NUM_STEPS)
    _assert_paths_close(_run(lecopt.adam(0.02, b1=_PHI_DOWN), _THETA0, _real_grad), want)


def test_current_momentum_follows_the_schedule():
    tx = lecopt.sgd(0.1, momentum=_PHI_DOWN)
    state = tx.init(jnp.ones(2))
    for k in range(4):
        np.testing.assert_allclose(float(lecopt.current_momentum(tx, state)), _phi_np_down(k),
                                   rtol=1e-6)
        _, state = tx.update(jnp.ones(2), state, jnp.ones(2))


def _bias_mask(p):
    return {"w": True, "b": False}


@pytest.mark.parametrize("mask", [None, {"w": True, "b": False}, _bias_mask],
                         ids=["none", "pytree", "callable"])
def test_adamw_matches_optax_adamw_with_biases_masked(mask):
    theta0 = {k: v.astype(np.float32) for k, v in _THETA0.items()}
    ours = _run(lecopt.adamw(0.02, 0.9, 0.99, 1e-8, 0.3, mask=mask), theta0, _real_grad)
    theirs = _run(optax.adamw(0.02, 0.9, 0.99, eps=0.0, eps_root=1e-8, weight_decay=0.3,
                              mask=mask), theta0, _real_grad)
    chex.assert_trees_all_close(ours[-1], theirs[-1], rtol=2e-5, atol=2e-6)
    if mask is not None:
        # The biases follow plain Adam exactly; the weights do not.
        plain = _run(lecopt.adam(0.02, 0.9, 0.99, 1e-8), theta0, _real_grad)[-1]
        np.testing.assert_array_equal(ours[-1]["b"], plain["b"])
        assert not np.allclose(ours[-1]["w"], plain["w"], rtol=1e-3)


def test_adamw_is_a_pytree_of_its_numbers_vmap_over_weight_decay():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}

    def run(lam):
        tx = lecopt.adamw(0.1, weight_decay=lam, mask=_bias_mask)
        u, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
        return u

    out = jax.jit(jax.vmap(run))(jnp.array([0.0, 0.5]))
    np.testing.assert_allclose(out["w"][1], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_array_equal(out["w"][0], 0.0)
    np.testing.assert_array_equal(out["b"], 0.0)


def test_bad_arguments_raise_with_the_name():
    with pytest.raises(ValueError, match="nesterov"):
        lecopt.sgd(0.1, nesterov=True)
    with pytest.raises(TypeError, match="mask"):
        lecopt.adamw(0.1, mask={"w": 1.0})
    with pytest.raises(ValueError, match="weight_decay"):
        lecopt.adamw(0.1, weight_decay=-1.0)
    with pytest.raises(ValueError, match="b1"):
        lecopt.adamw(0.1, b1=1.0)
