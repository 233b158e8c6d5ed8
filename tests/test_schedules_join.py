"""join, warmup, one_cycle and one_cycle_momentum against references written here.

References: a NumPy piecewise evaluation (find the piece by scanning the boundaries, evaluate the
piece's closed form at its own step) for ``join``; PyTorch ``OneCycleLR``'s published phase
definition and annealing functions re-written in float64 NumPy for ``one_cycle`` (PyTorch is not
imported).
"""

from __future__ import annotations

import doctest
import math

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
import pytest

import lecopt
from lecopt import schedules
from lecopt.bench import schedules as bench_schedules
from tests.test_schedules import _eval_all_ways, sgdr_closed_form

matplotlib.use("Agg")


# --------------------------------------------------------------------------------------------
# NumPy references


def linear_ref(a0, a1, tau):
    return lambda t: a0 + (a1 - a0) * min(max(t, 0), tau) / tau


def cosine_ref(hi, lo, period):
    return lambda t: lo + (hi - lo) * (1 + math.cos(math.pi * min(max(t, 0), period) / period)) / 2


def constant_ref(v):
    return lambda t: v


def sgdr_ref(*args):
    return lambda t: sgdr_closed_form(*args, t)


def join_ref(pieces, boundaries):
    """f(t) = piece_i(t - b_i) for the last boundary b_i <= t (b_0 = 0)."""
    starts = [0, *boundaries]

    def f(t):
        i = max(k for k, s in enumerate(starts) if s <= t) if t >= 0 else 0
        return pieces[i](t - starts[i])

    return f


def around(boundaries, last):
    steps = {0, 1, last}
    for b in boundaries:
        steps |= {b - 2, b - 1, b, b + 1, b + 2}
    return np.array(sorted(s for s in steps if 0 <= s <= last))


def warmup_sgdr_cosine():
    ours = [
        schedules.linear_decay(0.0, 0.1, 50),
        schedules.sgdr(0.1, 0.001, 20, 2, 0.7),
        schedules.constant(0.003),
        schedules.cosine_annealing(0.05, 1e-4, 300),
        schedules.linear_decay(0.02, 0.0, 7),
    ]
    refs = [
        linear_ref(0.0, 0.1, 50),
        sgdr_ref(0.1, 0.001, 20, 2, 0.7),
        constant_ref(0.003),
        cosine_ref(0.05, 1e-4, 300),
        linear_ref(0.02, 0.0, 7),
    ]
    return ours, refs, [50, 470, 471, 900]


# --------------------------------------------------------------------------------------------
# join


@pytest.mark.parametrize("use_x64", [False, True])
def test_join_matches_piecewise_reference_around_every_boundary(use_x64, request):
    if use_x64:
        request.getfixturevalue("x64")
    ours, refs, boundaries = warmup_sgdr_cosine()
    f = schedules.join(ours, boundaries)
    steps = np.concatenate([around(boundaries, 1500), np.arange(0, 1500, 7)])
    got = _eval_all_ways(f, steps)
    assert got.dtype == (np.float64 if use_x64 else np.float32)
    ref = np.array([join_ref(refs, boundaries)(int(t)) for t in steps])
    np.testing.assert_allclose(got, ref, rtol=1e-12 if use_x64 else 2e-6, atol=1e-15)
    # Exact at the boundaries: the new piece's own first value, bit for bit.
    for k, b in enumerate(boundaries, start=1):
        assert got[steps == b][0] == np.asarray(ours[k](0))


def test_join_nests_and_restarts_each_piece_at_its_boundary(x64):
    inner = schedules.join([schedules.constant(0.5), schedules.linear_decay(0.5, 0.0, 10)], [3])
    outer = schedules.join([schedules.cosine_annealing(1.0, 0.0, 20), inner,
                            schedules.triangular(0.0, 0.2, 5)], [20, 40])
    ref = join_ref(
        [cosine_ref(1.0, 0.0, 20),
         join_ref([constant_ref(0.5), linear_ref(0.5, 0.0, 10)], [3]),
         lambda t: 0.2 * (1 - abs(t % 10 - 5) / 5)],
        [20, 40],
    )
    steps = np.arange(80)
    np.testing.assert_allclose(_eval_all_ways(outer, steps), [ref(int(t)) for t in steps],
                               rtol=1e-12, atol=1e-15)
    # A join of joins of the same structure is one kind: its numbers are stacked.
    twice = schedules.join([inner, schedules.join([schedules.constant(0.1),
                                                   schedules.linear_decay(0.1, 0.0, 4)], [2])],
                           [30])
    ref2 = join_ref([join_ref([constant_ref(0.5), linear_ref(0.5, 0.0, 10)], [3]),
                     join_ref([constant_ref(0.1), linear_ref(0.1, 0.0, 4)], [2])], [30])
    np.testing.assert_allclose(_eval_all_ways(twice, steps), [ref2(int(t)) for t in steps],
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("num_pieces", [2, 3, 16, 17, 40])
def test_join_of_many_pieces_finds_every_piece(num_pieces):
    # Up to 16 pieces a tree of compares finds the piece, beyond a binary search: both checked.
    boundaries = [3 * k + k * k for k in range(1, num_pieces)]
    ours = [schedules.linear_decay(float(k), float(k) + 0.5, 2) for k in range(num_pieces)]
    refs = [linear_ref(float(k), float(k) + 0.5, 2) for k in range(num_pieces)]
    steps = around(boundaries, boundaries[-1] + 5)
    got = _eval_all_ways(schedules.join(ours, boundaries), steps)
    np.testing.assert_array_equal(got, [join_ref(refs, boundaries)(int(t)) for t in steps])


def test_traced_numbers_and_boundaries_build_a_join_under_jit():
    @jax.jit
    def at(a, b, t):
        f = schedules.join([schedules.constant(a), schedules.linear_decay(a, 0.0, 4)], [b])
        return f(t), schedules.one_cycle(a, 100)(t)

    v, w = at(0.5, 3, 5)
    assert float(v) == pytest.approx(0.25) and float(at(0.5, 7, 5)[0]) == 0.5
    assert float(w) == pytest.approx(one_cycle_reference(0.5, 100, 0.3, 25.0, 1e4, "cos",
                                                         False)[0][5], rel=1e-5)


def test_join_equals_optax_join_schedules():
    ours = [schedules.linear_decay(0.0, 0.1, 10), schedules.cosine_annealing(0.1, 0.0, 40)]
    theirs = [optax.linear_schedule(0.0, 0.1, 10), optax.cosine_decay_schedule(0.1, 40)]
    steps = jnp.arange(80)
    np.testing.assert_allclose(np.asarray(schedules.join(ours, [10])(steps)),
                               np.asarray(optax.join_schedules(theirs, [10])(steps)),
                               rtol=1e-6, atol=1e-8)
    # A plain function (here optax's closure) is a piece too.
    mixed = schedules.join([ours[0], theirs[1]], [10])
    np.testing.assert_allclose(np.asarray(jax.jit(mixed)(steps)),
                               np.asarray(optax.join_schedules(theirs, [10])(steps)),
                               rtol=1e-6, atol=1e-8)


def _batch(scheds):
    return jax.tree.map(lambda *xs: jnp.asarray(np.stack([np.asarray(x) for x in xs])), *scheds)


@pytest.mark.parametrize("mixed", [False, True])
def test_vmap_over_a_batch_of_joined_schedules(mixed):
    def make(k):
        a = 0.1 * (k + 1)
        pieces = [schedules.cosine_annealing(a, 0.0, 10 + k),
                  schedules.cosine_annealing(a / 2, 0.0, 30)]
        if mixed:
            pieces = [schedules.linear_decay(0.0, a, 5 + k), *pieces]
            return schedules.join(pieces, [5 + k, 20 + 2 * k])
        return schedules.join(pieces, [10 + k])

    scheds = [make(k) for k in range(4)]
    steps = jnp.arange(60)
    together = jax.jit(jax.vmap(lambda s: s(steps)))(_batch(scheds))
    for row, s in zip(np.asarray(together), scheds):
        np.testing.assert_allclose(row, np.asarray(s(steps)), rtol=1e-6, atol=1e-9)


def test_new_values_of_the_same_structure_compile_nothing(compile_counter):
    @jax.jit
    def at(schedule, t):
        return schedule(t)

    ours, refs, boundaries = warmup_sgdr_cosine()
    a = at(schedules.join(ours, boundaries), 60)
    other = [schedules.linear_decay(0.0, 0.3, 10), schedules.sgdr(0.3, 0.0, 7, 3, 0.5),
             schedules.constant(0.01), schedules.cosine_annealing(0.2, 0.0, 50),
             schedules.linear_decay(0.1, 0.0, 70)]
    with compile_counter.expect(0):
        b = at(schedules.join(other, [10, 20, 30, 40]), 60)
        # The pieces of one kind in another order: the same program too.
        c = at(schedules.join([other[4], other[1], other[2], other[3], other[0]],
                              [10, 20, 30, 40]), 60)
    assert float(a) == pytest.approx(join_ref(refs, boundaries)(60), rel=1e-5)
    assert float(b) == pytest.approx(linear_ref(0.1, 0.0, 70)(20), rel=1e-6)
    assert float(c) == pytest.approx(linear_ref(0.0, 0.3, 10)(20), rel=1e-6)
    assert float(at(schedules.join(other, [10, 20, 30, 40]), 15)) == pytest.approx(
        sgdr_closed_form(0.3, 0.0, 7, 3, 0.5, 5), rel=1e-5)
    with compile_counter.expect(1):  # another order of the kinds is another program
        at(schedules.join([other[1], other[0], other[2], other[3], other[4]],
                          [10, 20, 30, 40]), 60)


def test_join_in_an_optimizer_kth_update_uses_f_of_k():
    sched = schedules.warmup(0.1, 3, schedules.triangular(0.01, 0.1, 4))
    tx = lecopt.sgd(sched)
    params = jnp.ones(2)
    state = tx.init(params)
    for k in range(12):
        updates, state = tx.update(jnp.ones(2), state, params)
        np.testing.assert_allclose(np.asarray(updates), -float(sched(k)), rtol=1e-6)


def test_warmup_is_a_linear_ramp_then_the_schedule():
    then = schedules.cosine_annealing(0.2, 0.0, 10)
    f = schedules.warmup(0.2, 4, then, init_value=0.02)
    got = np.asarray(f(jnp.arange(20)))
    np.testing.assert_allclose(got[:4], 0.02 + 0.18 * np.arange(4) / 4, rtol=1e-6)
    np.testing.assert_allclose(got[4:], np.asarray(then(jnp.arange(16))), rtol=1e-6)


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: schedules.join([schedules.constant(1.0)] * 3, [5]), "boundaries"),
        (lambda: schedules.join([schedules.constant(1.0)] * 3, [5, 5]), "boundaries"),
        (lambda: schedules.join([schedules.constant(1.0)] * 3, [6, 5]), "boundaries"),
        (lambda: schedules.join([schedules.constant(1.0)] * 2, [0]), "boundaries"),
        (lambda: schedules.join([schedules.constant(1.0)] * 2, [2.5]), "boundaries"),
        (lambda: schedules.warmup(0.1, 0, schedules.constant(0.1)), "warmup_steps"),
        (lambda: schedules.warmup(-0.1, 5, schedules.constant(0.1)), "end_value"),
    ],
)
def test_join_invalid_arguments_raise_naming_the_argument(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_join_bad_types_raise_type_error():
    with pytest.raises(TypeError, match="schedules"):
        schedules.join([], [])
    with pytest.raises(TypeError, match=r"schedules\[1\]"):
        schedules.join([schedules.constant(1.0), 3.0], [4])
    with pytest.raises(TypeError, match="boundaries"):
        schedules.join([schedules.constant(1.0)] * 2, 4)


# --------------------------------------------------------------------------------------------
# one_cycle: PyTorch OneCycleLR's definition in NumPy


def one_cycle_reference(max_lr, total, pct, div, final_div, anneal, three_phase,
                        base_m=0.85, max_m=0.95):
    """PyTorch OneCycleLR.get_lr for steps 0 .. total-1: (learning rates, momenta)."""
    initial = max_lr / div
    min_lr = initial / final_div
    if three_phase:
        phases = [(float(pct * total) - 1, initial, max_lr, max_m, base_m),
                  (float(2 * pct * total) - 2, max_lr, initial, base_m, max_m),
                  (total - 1, initial, min_lr, max_m, max_m)]
    else:
        phases = [(float(pct * total) - 1, initial, max_lr, max_m, base_m),
                  (total - 1, max_lr, min_lr, base_m, max_m)]
    if anneal == "cos":
        fn = lambda start, end, p: end + (start - end) / 2.0 * (np.cos(np.pi * p) + 1)  # noqa: E731
    else:
        fn = lambda start, end, p: (end - start) * p + start  # noqa: E731
    lrs, moms = [], []
    for step in range(total):
        start = 0.0
        for i, (end, lr0, lr1, m0, m1) in enumerate(phases):
            if step <= end or i == len(phases) - 1:
                p = (step - start) / (end - start)
                lrs.append(fn(lr0, lr1, p))
                moms.append(fn(m0, m1, p))
                break
            start = end
    return np.array(lrs), np.array(moms)


SETTINGS = [
    # max_lr, total, pct, div, final_div, anneal, three_phase
    (0.1, 100, 0.3, 25.0, 1e4, "cos", False),
    (0.1, 100, 0.3, 25.0, 1e4, "linear", False),
    (0.4, 1000, 0.25, 10.0, 100.0, "cos", True),
    (0.4, 1000, 0.25, 10.0, 100.0, "linear", True),
    (3e-3, 37, 0.45, 4.0, 1e3, "cos", False),
    (1.0, 57, 0.33, 25.0, 1e4, "linear", True),
]


@pytest.mark.parametrize("setting", SETTINGS)
def test_one_cycle_matches_pytorch_formula(setting, x64):
    max_lr, total, pct, div, final_div, anneal, three = setting
    lr_ref, m_ref = one_cycle_reference(*setting)
    f = schedules.one_cycle(max_lr, total, pct, div, final_div, anneal, three)
    m = schedules.one_cycle_momentum(total, pct, 0.85, 0.95, anneal, three)
    steps = np.arange(total)
    got, mom = _eval_all_ways(f, steps), _eval_all_ways(m, steps)
    np.testing.assert_allclose(got, lr_ref, rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(mom, m_ref, rtol=1e-12, atol=1e-15)
    # First and last steps: initial_lr and min_lr (to the ulp of the division that makes it),
    # max_momentum at both ends exactly; past the end the rate stays at the last value.
    initial = max_lr / div
    assert got[0] == initial and mom[0] == 0.95 and mom[-1] == 0.95
    np.testing.assert_allclose(got[-1], initial / final_div, rtol=4e-16, atol=0)
    assert float(f(total + 10)) == float(f(total - 1))


@pytest.mark.parametrize("setting", SETTINGS[:3])
def test_one_cycle_float32(setting):
    lr_ref, m_ref = one_cycle_reference(*setting)
    max_lr, total, pct, div, final_div, anneal, three = setting
    got = _eval_all_ways(schedules.one_cycle(max_lr, total, pct, div, final_div, anneal, three),
                         np.arange(total))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, lr_ref, rtol=2e-5, atol=1e-12)


def test_one_cycle_is_a_pytree_of_its_numbers(compile_counter):
    @jax.jit
    def at(schedule, t):
        return schedule(t)

    at(schedules.one_cycle(0.1, 100), 40)
    with compile_counter.expect(0):
        v = at(schedules.one_cycle(0.5, 300, 0.4, 10.0, 100.0), 40)
    lr_ref, _ = one_cycle_reference(0.5, 300, 0.4, 10.0, 100.0, "cos", False)
    assert float(v) == pytest.approx(lr_ref[40], rel=1e-5)
    assert jax.tree.leaves(schedules.one_cycle(0.1, 100)) == [0.1, 25.0, 1e4, 0.3, 100]
    batch = _batch([schedules.one_cycle(a, 100) for a in (0.1, 0.2, 0.4)])
    vals = jax.vmap(lambda s: s(29))(batch)
    np.testing.assert_allclose(np.asarray(vals), [0.1, 0.2, 0.4], rtol=1e-6)


def test_one_cycle_from_range_test():
    plan = schedules.one_cycle_from_range_test(jnp.float32(0.25), 200, three_phase=True)
    lr_ref, m_ref = one_cycle_reference(float(jnp.float32(0.25)), 200, 0.3, 25.0, 1e4, "cos",
                                        True)
    np.testing.assert_allclose(np.asarray(plan.learning_rate(jnp.arange(200))), lr_ref, rtol=2e-5)
    np.testing.assert_allclose(np.asarray(plan.momentum(jnp.arange(200))), m_ref, rtol=1e-5)
    assert plan.initial_lr == pytest.approx(0.01) and plan.min_lr == pytest.approx(1e-6)
    assert plan.peak_step == pytest.approx(59.0)


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: schedules.one_cycle(0.0, 100), "max_lr"),
        (lambda: schedules.one_cycle(0.1, 1), "total_steps"),
        (lambda: schedules.one_cycle(0.1, 100, pct_start=1.0), "pct_start"),
        (lambda: schedules.one_cycle(0.1, 100, pct_start=0.01), "pct_start"),
        (lambda: schedules.one_cycle(0.1, 100, pct_start=0.6, three_phase=True), "pct_start"),
        (lambda: schedules.one_cycle(0.1, 100, div_factor=0.0), "div_factor"),
        (lambda: schedules.one_cycle(0.1, 100, final_div_factor=-1.0), "final_div_factor"),
        (lambda: schedules.one_cycle(0.1, 100, anneal="cosine"), "anneal"),
        (lambda: schedules.one_cycle_momentum(100, base_momentum=0.96), "base_momentum"),
        (lambda: schedules.one_cycle_momentum(100, max_momentum=1.5), "max_momentum"),
    ],
)
def test_one_cycle_invalid_arguments_raise_naming_the_argument(make, name):
    with pytest.raises(ValueError, match=name):
        make()


# --------------------------------------------------------------------------------------------
# Docstring examples, plotting, benchmark


@pytest.mark.parametrize("name", ["join", "warmup", "one_cycle", "one_cycle_momentum",
                                  "one_cycle_from_range_test"])
def test_docstring_examples_run_and_print_what_they_show(name):
    fn = getattr(schedules, name)
    test = doctest.DocTestParser().get_doctest(fn.__doc__, {"lecopt": lecopt, "jnp": jnp},
                                               name, None, 0)
    assert test.examples
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.failures == 0


def test_plot_draws_joined_and_one_cycle_schedules():
    import matplotlib.pyplot as plt

    f = schedules.warmup(0.1, 50, schedules.cosine_annealing(0.1, 0.0, 100))
    ax = schedules.plot(f, 400)
    y = ax.lines[0].get_ydata()
    assert len(y) == 400 and y[50] == pytest.approx(0.1) and y[100] == pytest.approx(0.05)
    assert ax.get_title() and "join" in ax.lines[0].get_label()
    ax = schedules.plot(schedules.one_cycle(0.1, 300), 300)
    assert ax.lines[0].get_ydata().max() == pytest.approx(0.1)
    plt.close("all")


def test_bench_quick_rows():
    res = bench_schedules.run(quick=True)
    assert len(res["rows"]) == 8
    assert all(r["median_s"] > 0 and r["per_step_ns"] > 0 for r in res["rows"])
    assert any("lecopt join 8 / 1 piece" == k for k in res["ratios"])
    assert any("optax join 8 / 1 piece" == k for k in res["ratios"])


def test_join_step_fuses_into_as_many_kernels_as_one_piece():
    # _piece_index's compare tree and the read of the piece's numbers fuse with the piece's
    # arithmetic; a searchsorted would be a kernel of its own (the loop body's count grows).
    ours, _, boundaries = bench_schedules._pieces()
    one = bench_schedules.kernels_per_step(ours[0], 10)
    joined = bench_schedules.kernels_per_step(schedules.join(ours, boundaries), 10)
    assert joined == one == ["fusion", "fusion"]

    def searched(step):
        starts = jnp.asarray([0, *boundaries])
        return jnp.searchsorted(starts, step, side="right").astype(jnp.float32)

    assert len(bench_schedules.kernels_per_step(searched, 10)) > len(one)
