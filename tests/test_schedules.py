"""lecopt.schedules against independent references written here.

References: the lecture's tau = 4 table (linear decay); the stateful step-by-step definitions of
PyTorch's ``LinearLR``, ``CyclicLR`` (as a walker up and down the triangle),
``CosineAnnealingLR`` and ``CosineAnnealingWarmRestarts`` re-implemented in plain Python; SGDR's
closed form with cycle starts found by summing cycle lengths; Algorithm 1 from
tests/reference.py.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
import pytest
from jax import lax

from lecopt import optimizers, schedules
from tests import reference

matplotlib.use("Agg")

N = 3000


def _eval_all_ways(f, steps):
    """Values at ``steps`` three ways: jit(vmap(f)), f on the array, and a scan with a traced
    int32 scalar step (how an optimizer calls it). They agree to a few ulps (XLA may compile
    the scalar and the vector program differently, e.g. with or without FMA)."""
    steps = np.asarray(steps)
    a = np.asarray(jax.jit(jax.vmap(f))(jnp.asarray(steps, jnp.int32)))
    b = np.asarray(jax.jit(f)(jnp.asarray(steps, jnp.int32)))
    _, c = lax.scan(lambda _, t: (None, f(t)), None, jnp.asarray(steps, jnp.int32))
    tol = 8 * np.finfo(a.dtype).eps
    for other in (b, np.asarray(c)):
        assert other.dtype == a.dtype
        np.testing.assert_allclose(other, a, rtol=tol, atol=tol * np.max(np.abs(a)))
    return a


# --------------------------------------------------------------------------------------------
# Plain-Python stateful references (PyTorch's documented recursions)


def linear_lr_reference(base, start_factor, end_factor, total_iters, num_steps):
    """PyTorch LinearLR's recursive form: lr_t = lr_{t-1} (1 + (e - s)/(T s + (t-1)(e - s)))."""
    lr, out = base * start_factor, []
    for t in range(num_steps):
        if 1 <= t <= total_iters:
            lr *= 1 + (end_factor - start_factor) / (
                total_iters * start_factor + (t - 1) * (end_factor - start_factor)
            )
        out.append(lr)
    return np.array(out)


def cyclic_reference(base, top, step_size, mode, gamma=1.0, num_steps=N):
    """A walker that climbs ``step_size`` steps from base to top and back, halving the
    amplitude after every full cycle (triangular2) or multiplying it by gamma every step."""
    pos, rising, amp = 0, True, 1.0
    out = []
    for _ in range(num_steps):
        frac = pos / step_size if rising else 1 - pos / step_size
        out.append(base + (top - base) * frac * amp)
        pos += 1
        if pos == step_size:
            pos = 0
            if not rising and mode == "triangular2":
                amp /= 2
            rising = not rising
        if mode == "exp_range":
            amp *= gamma
    return np.array(out)


def cosine_annealing_reference(eta_max, eta_min, t_max, num_steps=N):
    """PyTorch CosineAnnealingLR's recursive form, held at eta_min after T."""
    eta, out = eta_max, [eta_max]
    for t in range(1, num_steps):
        if t <= t_max:
            eta = eta_min + (eta - eta_min) * (1 + math.cos(math.pi * t / t_max)) / (
                1 + math.cos(math.pi * (t - 1) / t_max)
            )
        else:
            eta = eta_min
        out.append(eta)
    return np.array(out)


def warm_restarts_reference(eta_max, eta_min, t_0, t_mult, decay, num_steps=N):
    """PyTorch CosineAnnealingWarmRestarts stepped once per step (T_cur, T_i), with the peak
    multiplied by ``decay`` at every restart."""
    t_cur, t_i, peak, out = 0, t_0, eta_max, []
    for _ in range(num_steps):
        out.append(eta_min + (peak - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2)
        t_cur += 1
        if t_cur >= t_i:
            t_cur -= t_i
            t_i *= t_mult
            peak *= decay
    return np.array(out)


def sgdr_closed_form(eta_max, eta_min, period, mult, decay, t):
    """Closed form at one step: find the cycle by summing the lengths period * mult**i."""
    if mult == 1:
        i, start = t // period, (t // period) * period
    else:
        start, i = 0, 0
    while start + period * mult**i <= t:
        start += period * mult**i
        i += 1
    length = period * mult**i
    peak = eta_max * decay**i
    # (1 + cos(pi x))/2 = sin(pi (1 - x)/2)**2: the right side keeps float64's relative
    # precision at the end of a cycle of 10**9 steps, where 1 + cos cancels.
    weight = math.sin(math.pi * (length - (t - start)) / (2 * length)) ** 2
    return eta_min + (peak - eta_min) * weight


# --------------------------------------------------------------------------------------------
# The lecture's linear decay


@pytest.mark.usefixtures("x64")
def test_linear_decay_lecture_table_tau_4():
    a0, at = 0.3, 0.02
    f = schedules.linear_decay(a0, at, 4)
    table = {
        0: a0,
        1: 3 / 4 * a0 + 1 / 4 * at,
        2: 2 / 4 * a0 + 2 / 4 * at,
        3: 1 / 4 * a0 + 3 / 4 * at,
        4: 0 + at,
        5: at,
        6: at,
        1000: at,
    }
    got = _eval_all_ways(f, list(table))
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, np.array(list(table.values())))


@pytest.mark.parametrize("use_x64", [False, True])
def test_linear_decay_matches_linear_lr_recursion(use_x64, request):
    if use_x64:
        request.getfixturevalue("x64")
    a0, at, tau = 0.1, 0.004, 1000
    ref = linear_lr_reference(a0, 1.0, at / a0, tau, N)
    got = _eval_all_ways(schedules.linear_decay(a0, at, tau), np.arange(N))
    assert got.dtype == (np.float64 if use_x64 else np.float32)
    np.testing.assert_allclose(got, ref, rtol=1e-11 if use_x64 else 2e-6, atol=0)
    assert got[tau] == np.asarray(at, got.dtype) and got[0] == np.asarray(a0, got.dtype)


# --------------------------------------------------------------------------------------------
# Cyclical learning rates


@pytest.mark.parametrize("step_size", [7, 50])
@pytest.mark.parametrize(
    "mode, gamma",
    [("triangular", 1.0), ("triangular2", 1.0), ("exp_range", 0.999)],
)
def test_cyclical_matches_stateful_walker(mode, gamma, step_size, x64):
    base, top = 0.001, 0.006
    if mode == "triangular":
        f = schedules.triangular(base, top, step_size)
    elif mode == "triangular2":
        f = schedules.triangular2(base, top, step_size)
    else:
        f = schedules.exp_range(base, top, step_size, gamma)
    ref = cyclic_reference(base, top, step_size, mode, gamma)
    got = _eval_all_ways(f, np.arange(N))
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-15)
    # The bottoms are exactly base_lr; the first top exactly max_lr (but for exp_range).
    assert np.all(got[:: 2 * step_size] == base)
    assert mode == "exp_range" or got[step_size] == top


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
def test_cyclical_float32(mode):
    base, top, s = 0.001, 0.006, 50
    f = {
        "triangular": schedules.triangular(base, top, s),
        "triangular2": schedules.triangular2(base, top, s),
        "exp_range": schedules.exp_range(base, top, s, 0.999),
    }[mode]
    got = _eval_all_ways(f, np.arange(N))
    assert got.dtype == np.float32
    # gamma as float32 holds it: 0.999's rounding alone grows to 5e-5 in gamma**1650.
    ref = cyclic_reference(base, top, s, mode, float(np.float32(0.999)))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-9)


def test_triangular2_halves_each_cycle():
    f = schedules.triangular2(0.0, 1.0, 10)
    np.testing.assert_array_equal(np.asarray(f(jnp.array([10, 30, 50, 70]))), [1, 0.5, 0.25, 0.125])


# --------------------------------------------------------------------------------------------
# Cosine annealing and SGDR


def test_cosine_annealing_matches_recursion(x64):
    ref = cosine_annealing_reference(0.1, 0.001, 700)
    got = _eval_all_ways(schedules.cosine_annealing(0.1, 0.001, 700), np.arange(N))
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-13)
    assert got[0] == 0.1 and np.all(got[700:] == 0.001)


@pytest.mark.parametrize(
    "period, mult, decay",
    [(10, 1, 1.0), (7, 1, 0.8), (10, 2, 1.0), (3, 2, 0.7), (1, 3, 0.5), (5, 4, 0.9)],
)
def test_sgdr_matches_warm_restarts_recursion(period, mult, decay, x64):
    ref = warm_restarts_reference(0.05, 0.0005, period, mult, decay)
    got = _eval_all_ways(schedules.sgdr(0.05, 0.0005, period, mult, decay), np.arange(N))
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-15)


def test_sgdr_float32_matches_recursion():
    ref = warm_restarts_reference(0.05, 0.0005, 10, 2, 0.7)
    got = _eval_all_ways(schedules.sgdr(0.05, 0.0005, 10, 2, 0.7), np.arange(N))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-8)


def test_sgdr_mult3_decay_half_closed_form(x64):
    f = schedules.sgdr(0.2, 0.001, 1, 3, 0.5)
    rng = np.random.default_rng(0)
    steps = np.unique(np.concatenate([np.arange(400), rng.integers(0, 10**6, 300)]))
    ref = np.array([sgdr_closed_form(0.2, 0.001, 1, 3, 0.5, int(t)) for t in steps])
    np.testing.assert_allclose(_eval_all_ways(f, steps), ref, rtol=1e-12, atol=1e-15)


def test_sgdr_restarts_exactly_at_121_and_364():
    # Cycle starts for period 1, mult 3: 0, 1, 4, 13, 40, 121, 364, 1093, ...
    f = schedules.sgdr(1.0, 0.0, 1, 3)
    got = _eval_all_ways(f, np.arange(1100))
    restarts = set(np.flatnonzero(got == 1.0).tolist())
    assert {0, 1, 4, 13, 40, 121, 364, 1093} <= restarts
    assert np.all(got[41:121] < 1.0) and np.all(got[122:364] < 1.0)
    assert np.all(np.diff(got[121:364]) < 0) and got[120] < 1e-3 and got[363] < 1e-4
    # With a decaying peak the value at a restart tells the cycle index: 0.5**5 and 0.5**6.
    g = schedules.sgdr(1.0, 0.0, 1, 3, 0.5)
    assert float(g(121)) == 0.5**5 and float(g(364)) == 0.5**6
    assert float(g(120)) < 0.5**4 * 1e-3 and float(g(363)) < 0.5**5 * 1e-4


def _starts(period, mult, upto):
    if mult == 1:
        return list(range(0, upto + 1, period))[-60:]
    out, s, length = [], 0, period
    while s <= upto:
        out.append(s)
        s += length
        length *= mult
    return out


@pytest.mark.parametrize("period, mult", [(1, 3), (1, 2), (7, 2), (3, 10), (1000, 1), (13, 5)])
def test_sgdr_restarts_exact_at_large_steps_float32(period, mult):
    # Every restart up to the int32 range: at S_i the value is exactly the peak 0.5**i, and
    # its neighbours S_i - 1 (end of cycle i-1) and S_i + 1 follow the closed form.
    cap = 2**31 - 2
    starts = [s for s in _starts(period, mult, cap) if s > 0][-40:]
    steps = sorted({t for s in starts for t in (s - 1, s, s + 1) if 0 <= t <= cap})
    f = schedules.sgdr(1.0, 0.0, period, mult, 0.5)
    got = _eval_all_ways(f, steps)
    ref = np.array([sgdr_closed_form(1.0, 0.0, period, mult, 0.5, t) for t in steps])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=0)
    i_of = {s: (s // period if mult == 1 else i) for i, s in enumerate(_starts(period, mult, cap))}
    for t, v in zip(steps, got):
        if t in i_of:
            assert v == np.float32(0.5 ** i_of[t]), (t, v)
    assert max(steps) > 10**6


def test_sgdr_restarts_exact_at_huge_steps_x64(x64):
    f = schedules.sgdr(1.0, 0.0, 1, 3, 0.5)
    starts = _starts(1, 3, 10**15)
    steps = [t for s in starts[1:] for t in (s - 1, s, s + 1)]
    got = np.asarray(jax.jit(f)(jnp.asarray(steps, jnp.int64)))
    ref = np.array([sgdr_closed_form(1.0, 0.0, 1, 3, 0.5, t) for t in steps])
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=0)
    assert got[1::3].tolist() == [0.5**i for i in range(1, len(starts))]


def test_sgdr_non_integer_mult_rounds_starts(x64):
    # period * (m**i - 1)/(m - 1) rounded: 10, 25, 48, 81, ... for period 10 and m = 1.5.
    f = schedules.sgdr(1.0, 0.0, 10, 1.5, 0.5)
    starts = [round(10 * (1.5**i - 1) / 0.5) for i in range(22)]
    got = _eval_all_ways(f, np.arange(starts[-1]))
    for i, s in enumerate(starts[:-1]):
        assert got[s] == 0.5**i
        if s > 0:
            assert got[s - 1] < 0.5 ** (i - 1) * 0.05


# --------------------------------------------------------------------------------------------
# Ranges


@pytest.mark.parametrize("use_x64", [False, True])
def test_ranges_both_ends_exact(use_x64, request):
    if use_x64:
        request.getfixturevalue("x64")
    dt = np.float64 if use_x64 else np.float32
    for start, stop, n in [(1e-7, 10.0, 100), (3e-5, 0.7, 37), (0.2, 3e-3, 2)]:
        e = _eval_all_ways(schedules.exponential_range(start, stop, n), np.arange(n))
        assert e.dtype == dt and e[0] == dt(start) and e[-1] == dt(stop)
        k = np.arange(n)
        np.testing.assert_allclose(
            e, start * (stop / start) ** (k / (n - 1)), rtol=1e-13 if use_x64 else 3e-6
        )
        lin = _eval_all_ways(schedules.linear_range(start, stop, n), np.arange(n))
        assert lin[0] == dt(start) and lin[-1] == dt(stop)
        np.testing.assert_allclose(lin, start + (stop - start) * k / (n - 1), rtol=1e-6)
    # Outside [0, n-1] the range is clamped to its ends.
    f = schedules.exponential_range(1e-3, 1.0, 10)
    assert float(f(-3)) == float(dt(1e-3)) and float(f(50)) == 1.0


# --------------------------------------------------------------------------------------------
# Pytree behaviour: jit with a schedule argument, vmap over schedules, dtypes


def test_schedule_is_pytree_of_its_numbers(compile_counter):
    traces = {"n": 0}

    @jax.jit
    def at(schedule, t):
        traces["n"] += 1
        return schedule(t)

    a = at(schedules.sgdr(0.1, 0.001, 10, 2.0, 0.9), 100)
    with compile_counter.expect(0):
        b = at(schedules.sgdr(0.3, 0.0, 4, 3.0, 0.5), 100)
        c = at(schedules.sgdr(0.3, 0.0, 4, 1.0, 0.5), 100)
    assert traces["n"] == 1
    assert float(a) == pytest.approx(sgdr_closed_form(0.1, 0.001, 10, 2, 0.9, 100), rel=1e-5)
    assert float(b) == pytest.approx(sgdr_closed_form(0.3, 0.0, 4, 3, 0.5, 100), rel=1e-5)
    assert float(c) == pytest.approx(sgdr_closed_form(0.3, 0.0, 4, 1, 0.5, 100), rel=1e-5)
    leaves = jax.tree.leaves(schedules.triangular(0.1, 0.2, 5))
    assert leaves == [0.1, 0.2, 5.0]


def test_vmap_over_a_batch_of_schedules():
    settings = [(0.1, 0.0, 5, 1, 1.0), (0.2, 0.01, 3, 2, 0.5), (0.05, 0.001, 1, 3, 0.9),
                (0.3, 0.0, 10, 1.5, 1.0)]
    scheds = [schedules.sgdr(*s) for s in settings]
    batch = jax.tree.map(lambda *xs: jnp.asarray(xs), *scheds)
    steps = jnp.arange(300)
    together = jax.jit(jax.vmap(lambda s: s(steps)))(batch)
    for row, s in zip(np.asarray(together), scheds):
        np.testing.assert_allclose(row, np.asarray(s(steps)), rtol=1e-6, atol=1e-9)


def test_traced_hyperparameters_pass_validation():
    f = jax.jit(lambda lo, hi, s, t: schedules.triangular(lo, hi, s)(t))
    assert float(f(0.0, 1.0, 10.0, 5)) == 0.5
    g = jax.jit(lambda m: schedules.sgdr(1.0, 0.0, 1, m)(121))
    assert float(g(3.0)) == 1.0


def test_default_dtype_and_shapes():
    all_scheds = [
        schedules.constant(0.1),
        schedules.linear_decay(0.1, 0.0, 10),
        schedules.triangular(0.0, 1.0, 3),
        schedules.triangular2(0.0, 1.0, 3),
        schedules.exp_range(0.0, 1.0, 3, 0.9),
        schedules.cosine_annealing(1.0, 0.0, 10),
        schedules.sgdr(1.0, 0.0, 3, 2),
        schedules.exponential_range(1e-3, 1.0, 10),
        schedules.linear_range(0.0, 1.0, 10),
    ]
    for f in all_scheds:
        assert f(3).dtype == jnp.float32 and f(3).shape == ()
        assert f(jnp.int32(3)).dtype == jnp.float32
        assert f(jnp.arange(6).reshape(2, 3)).shape == (2, 3)
    with jax.enable_x64(True):
        for f in all_scheds:
            assert f(3).dtype == jnp.float64
    np.testing.assert_array_equal(np.asarray(schedules.constant(0.25)(jnp.arange(4))), 0.25)


# --------------------------------------------------------------------------------------------
# Inside optimizers: the k-th update uses f(k)


def test_schedule_in_lecopt_sgd_momentum_is_algorithm_1(x64):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4, 4))
    hess = a @ a.T / 4 + np.eye(4)
    b = rng.normal(size=4)
    theta0 = {"w": rng.normal(size=4)}
    grad = lambda th, k: {"w": hess @ th["w"] - b}
    sched = schedules.sgdr(0.05, 0.001, 3, 2, 0.7)
    alpha = lambda k: sgdr_closed_form(0.05, 0.001, 3, 2, 0.7, k)
    ref = reference.momentum(theta0, grad, alpha, 0.9, 40)

    tx = optimizers.sgd(sched, momentum=0.9)
    h, bj = jnp.asarray(hess), jnp.asarray(b)

    @jax.jit
    def run(params):
        def step(carry, _):
            p, s = carry
            u, s = tx.update({"w": h @ p["w"] - bj}, s, p)
            p = optax.apply_updates(p, u)
            return (p, s), p["w"]
        return lax.scan(step, (params, tx.init(params)), None, length=40)[1]

    traj = np.asarray(run({"w": jnp.asarray(theta0["w"])}))
    np.testing.assert_allclose(traj, np.stack([r["w"] for r in ref[1:]]), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("make", [optimizers.adagrad, optimizers.rmsprop, optimizers.adam])
def test_kth_update_of_adaptive_optimizers_uses_f_of_k(make):
    # The moments do not depend on alpha, so the k-th update is f(k) times that of alpha = 1.
    sched = schedules.triangular2(0.01, 0.1, 3)
    with_sched, with_one = make(sched), make(1.0)
    params = jnp.array([0.5, -1.0, 2.0])
    s1, s2 = with_sched.init(params), with_one.init(params)
    for k in range(14):
        g = jnp.array([1.0, -2.0, 0.5]) * (1 + 0.1 * k)
        u1, s1 = with_sched.update(g, s1, params)
        u2, s2 = with_one.update(g, s2, params)
        np.testing.assert_allclose(np.asarray(u1), float(sched(k)) * np.asarray(u2), rtol=2e-6)


def test_optimizer_with_schedule_is_jit_data(compile_counter):
    @jax.jit
    def steps(tx, params):
        state = tx.init(params)
        for _ in range(3):
            u, state = tx.update(params, state, params)  # gradient of |theta|^2 / 2
            params = optax.apply_updates(params, u)
        return params

    p0 = jnp.array([1.0, 2.0])
    a = steps(optimizers.sgd(schedules.sgdr(0.1, 0.01, 2, 2), momentum=0.9), p0)
    with compile_counter.expect(0):
        b = steps(optimizers.sgd(schedules.sgdr(0.3, 0.0, 5, 3, 0.5), momentum=0.5), p0)
    assert not np.allclose(np.asarray(a), np.asarray(b))


def test_schedule_as_optax_schedule():
    sched = schedules.triangular(0.01, 0.1, 4)
    tx = optax.sgd(sched)
    params = jnp.ones(3)
    state = tx.init(params)
    for k in range(12):
        updates, state = tx.update(jnp.ones(3), state, params)
        np.testing.assert_allclose(np.asarray(updates), -float(sched(k)), rtol=1e-7)


# --------------------------------------------------------------------------------------------
# Validation and plotting


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: schedules.constant(-0.1), "value"),
        (lambda: schedules.constant(float("nan")), "value"),
        (lambda: schedules.linear_decay(0.1, -0.1, 10), "end_value"),
        (lambda: schedules.linear_decay(0.1, 0.0, 0), "transition_steps"),
        (lambda: schedules.linear_decay(float("inf"), 0.0, 10), "init_value"),
        (lambda: schedules.triangular(0.2, 0.1, 10), "base_lr"),
        (lambda: schedules.triangular(0.0, 0.1, 0), "step_size"),
        (lambda: schedules.triangular2(-1.0, 0.1, 10), "base_lr"),
        (lambda: schedules.triangular2(0.0, 0.1, -3), "step_size"),
        (lambda: schedules.exp_range(0.0, 0.1, 10, 1.5), "gamma"),
        (lambda: schedules.exp_range(0.0, 0.1, 10, 0.0), "gamma"),
        (lambda: schedules.cosine_annealing(0.1, 0.2, 10), "min_lr"),
        (lambda: schedules.cosine_annealing(0.1, 0.0, 0), "period"),
        (lambda: schedules.sgdr(0.1, 0.2, 10), "min_lr"),
        (lambda: schedules.sgdr(0.1, 0.0, 0), "period"),
        (lambda: schedules.sgdr(0.1, 0.0, 2.5), "period"),
        (lambda: schedules.sgdr(0.1, 0.0, 10, 0.5), "period_mult"),
        (lambda: schedules.sgdr(0.1, 0.0, 10, float("inf")), "period_mult"),
        (lambda: schedules.sgdr(0.1, 0.0, 10, 2, 1.5), "max_lr_decay"),
        (lambda: schedules.sgdr(0.1, 0.0, 10, 2, 0.0), "max_lr_decay"),
        (lambda: schedules.sgdr(float("nan"), 0.0, 10), "max_lr"),
        (lambda: schedules.exponential_range(0.0, 1.0, 10), "start"),
        (lambda: schedules.exponential_range(1e-3, 1.0, 1), "num_steps"),
        (lambda: schedules.linear_range(0.0, -1.0, 10), "stop"),
        (lambda: schedules.linear_range(0.0, 1.0, 1), "num_steps"),
    ],
)
def test_invalid_arguments_raise_naming_the_argument(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_plot_labels_and_axes():
    import matplotlib.pyplot as plt

    ax = schedules.plot(schedules.triangular2(0.001, 0.006, 50), 400)
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    y = ax.lines[0].get_ydata()
    assert len(y) == 400 and y.max() == pytest.approx(0.006)
    fig, given = plt.subplots()
    assert schedules.plot(schedules.sgdr(0.1, 0.0, 10, 2), 100, ax=given) is given
    plt.close("all")
