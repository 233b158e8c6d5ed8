"""The learning-rate range test as one compiled, pure program (lecture: "Learning Rate").

"Start at a very low learning rate and gradually increase it (linearly or exponentially) after
each mini-batch ... A good learning rate is one that results in a steep decline in the loss."

:func:`lr_range_test` hands the optimizer the whole sweep as a schedule
(:func:`lecopt.schedules.exponential_range` or :func:`~lecopt.schedules.linear_range`), so the
k-th update uses ``alpha_k`` and every step of the sweep is one iteration of a ``lax.scan``
inside one jitted program: no Python loop, no mutation and restoring of a model, and
``jax.vmap`` runs several sweeps (several initialisations or seeds) in one program.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from lecopt import schedules, transforms
from lecopt._checks import check_range

__all__ = [
    "RULES",
    "Curve",
    "LRRangeTestResult",
    "lecopt_rule",
    "local_quadratic",
    "lr_range_test",
    "plot",
    "suggest",
]

_MODES = ("exponential", "linear")


class LRRangeTestResult(NamedTuple):
    """What :func:`lr_range_test` measured (a pytree: under ``vmap`` every field gains an axis).

    Attributes:
      learning_rates: ``alpha_k`` of step ``k``, shape ``(num_steps,)``: the full grid.
      losses: the raw minibatch loss at step ``k``, taken before the ``k``-th update (so it
        reflects the rates ``alpha_0 .. alpha_{k-1}``); NaN after ``stopped_at``. With
        ``seeds``: shape ``(num_seeds, num_steps)``, one row per seed (as every per-sweep
        field below).
      smoothed_losses: the bias-corrected exponential moving average of ``losses``
        (``avg_k = beta avg_{k-1} + (1 - beta) loss_k``, ``smooth_k = avg_k / (1 - beta**(k+1))``);
        NaN after ``stopped_at``.
      stopped_at: the last recorded step (int32): the step at which the smoothed loss
        diverged, or ``num_steps - 1`` when it never did.
      diverged: whether the sweep stopped early (bool).
      suggestion: lecopt's rule (``suggestions["lecopt"]``, see :func:`lecopt_rule`); with
        seeds, the median over the seeds (of the logarithms).
      suggestions: every rule of :data:`RULES` by name (medians over seeds). No rule
        suggests a rate at or beyond the divergence; NaN when too few points remain.
      seed_suggestions: with seeds, ``{name: array (num_seeds,)}``: each seed's suggestion;
        None without.
      spread: with seeds, ``{name: max / min}`` of the seeds' suggestions (1 for one seed);
        None without.
    """

    learning_rates: jax.Array
    losses: jax.Array
    smoothed_losses: jax.Array
    stopped_at: jax.Array
    diverged: jax.Array
    suggestion: Any
    suggestions: dict[str, Any]
    seed_suggestions: dict[str, np.ndarray] | None = None
    spread: dict[str, float] | None = None

    def plot(self, ax: Any = None, rules: Sequence[str] | None = None) -> Any:
        """Draws raw and smoothed losses against the rate (log axis), suggestions marked.

        The y-range runs from a little below the lowest smoothed loss to a little above the
        starting loss (as fastai clips it), so a spike at the divergence does not flatten the
        curve. With several seeds: each seed's raw curve, the median smoothed curve and the
        band between the lowest and highest smoothed loss.

        Args:
          ax: a matplotlib ``Axes``; a new figure is made when None.
          rules: the names of the suggestions to mark (default: all).

        Returns:
          The ``Axes``.
        """
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(7, 4.5))
        _draw_range_test(ax, self, rules)
        return ax


_MARKERS = "ovs^Dp*hX"


# --------------------------------------------------------------------------------------------
# Suggestions: small NumPy functions of one recorded sweep (host side, float64).
#
# Every rule sees the same record: the rates, the raw losses, fastai's smoothed losses and the
# number ``end`` of points before the divergence (the point that diverged and everything after
# it are never candidates). Each returns a rate, or NaN when too few points remain.


class Curve(NamedTuple):
    """One recorded sweep as the rules read it (float64 NumPy; see :func:`suggest`).

    Attributes:
      learning_rates: ``alpha_k``, shape ``(n,)``.
      losses: raw minibatch losses, NaN after the stop.
      smoothed_losses: fastai's debiased moving average of ``losses``.
      end: number of points before the divergence: ``0 .. end-1`` may be suggested.
      num_steps: ``n`` (fastai and torch-lr-finder skip a fixed share of it).
    """

    learning_rates: np.ndarray
    losses: np.ndarray
    smoothed_losses: np.ndarray
    end: int
    num_steps: int


def _rate(curve: Curve, idx: int | np.integer) -> float:
    return float(curve.learning_rates[idx]) if 0 <= idx < curve.end else math.nan


def local_quadratic(u: np.ndarray, y: np.ndarray, half_width: float) -> tuple[np.ndarray, ...]:
    """Zero-phase smoothing: a least-squares parabola around every point (Savitzky-Golay).

    For each ``i`` fits ``y_j ~ a + b (u_j - u_i) + c (u_j - u_i)**2`` over the points with
    ``|u_j - u_i| <= half_width`` and returns ``(a, b)``: the smoothed value and its slope
    ``dy/du`` at ``u_i``. On evenly spaced ``u`` away from the ends this is the Savitzky-Golay
    filter of degree 2; the window is measured in units of ``u`` (decades of rate), not in
    points, so it covers the same rates at any resolution, and it is centred, so the result
    has no lag. Near the ends the window is cut (a one-sided fit).

    Reference: A. Savitzky and M. J. E. Golay, "Smoothing and differentiation of data by
    simplified least squares procedures", Anal. Chem. 36 (1964).
    """
    # Window sums by prefix sums (O(n)): with c = u - u_i, sum_j c**p y_j expands binomially
    # into sums of u_j**q y_j; u is centred first so the powers stay well conditioned.
    u = u - np.mean(u)
    lo = np.searchsorted(u, u - half_width - 1e-12, side="left")
    hi = np.searchsorted(u, u + half_width + 1e-12, side="right")

    def window_sum(v):
        c = np.concatenate([[0.0], np.cumsum(v)])
        return c[hi] - c[lo]

    raw_u = [window_sum(u**q) for q in range(5)]
    raw_uy = [window_sum(u**q * y) for q in range(3)]

    def centred(sums, p):
        return sum(math.comb(p, q) * (-u) ** (p - q) * sums[q] for q in range(p + 1))

    m = [centred(raw_u, p) for p in range(5)]
    a = np.stack([np.stack(m[r : r + 3], -1) for r in range(3)], -2)
    rhs = np.stack([centred(raw_uy, p) for p in range(3)], -1)
    # A tiny ridge keeps windows of fewer than three points solvable (they fit a line).
    scale = np.maximum(m[0], 1.0)[:, None, None]
    coef = np.linalg.solve(a + 1e-12 * scale * np.eye(3), rhs[..., None])[..., 0]
    return coef[:, 0], coef[:, 1]


SMOOTHING_DECADES = 0.5
"""Width of lecopt's zero-phase window, in decades of rate (half of it on each side)."""


def _zero_phase(curve: Curve, of_log: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    u = np.log10(curve.learning_rates[: curve.end])
    y = curve.losses[: curve.end]
    y = np.log(y) if of_log else y
    value, slope = local_quadratic(u, y, SMOOTHING_DECADES / 2)
    return u, value, slope


def lecture_rule(curve: Curve) -> float:
    """The lecture's rule taken literally: the rate of the steepest decline of the loss
    against ``log alpha``, read off a lag-free (zero-phase) smoothing of the raw losses, over
    the descent before the smoothed minimum."""
    if curve.end < 5:
        return math.nan
    _, value, slope = _zero_phase(curve, of_log=False)
    lowest = int(np.argmin(value))
    if lowest == 0:
        return math.nan
    return _rate(curve, int(np.argmin(slope[: lowest + 1])))


def _fastai_trim(curve: Curve) -> tuple[np.ndarray, np.ndarray, int]:
    # fastai's lr_find: lrs[num_it//10 : -5], losses likewise (of the recorded, smoothed ones).
    lo = curve.num_steps // 10
    hi = curve.end - 5
    return curve.learning_rates[lo:hi], curve.smoothed_losses[lo:hi], lo


def fastai_steep(curve: Curve) -> float:
    """fastai's ``steep``: the steepest finite-difference slope of the smoothed loss against
    ``log alpha`` (the rate at the left end of that step)."""
    lrs, sm, lo = _fastai_trim(curve)
    if len(sm) < 2:
        return math.nan
    grads = np.diff(sm) / np.diff(np.log(lrs))
    return _rate(curve, lo + int(np.argmin(grads)))


def fastai_minimum(curve: Curve) -> float:
    """fastai's ``minimum``: a tenth of the rate of the smallest smoothed loss."""
    lrs, sm, lo = _fastai_trim(curve)
    if len(sm) < 1:
        return math.nan
    return _rate(curve, lo + int(np.argmin(sm))) / 10


def fastai_valley(curve: Curve) -> float:
    """fastai's ``valley``: in the longest decreasing subsequence of the smoothed loss (start
    ``s``, end ``e``), the rate at ``s + (e-s)//3 + (e-s)//6``-ish, about the middle of its
    later part: ``idx = s + int(L/3) + int(L/6)``, ``L = e - s``."""
    lrs, sm, lo = _fastai_trim(curve)
    n = len(sm)
    if n < 2:
        return math.nan
    lds = np.ones(n, int)
    for i in range(1, n):
        earlier = np.nonzero(sm[:i] > sm[i])[0]
        if earlier.size:
            lds[i] = lds[earlier].max() + 1
    end = int(np.argmax(lds))
    start = end - int(lds[end]) + 1
    span = (end - start) / 3
    return _rate(curve, lo + start + int(span) + int(span / 2))


def fastai_slide(curve: Curve, lr_diff: int = 15, thresh: float = 0.005) -> float:
    """fastai's ``slide``: from the right end, slide a window of ``lr_diff`` points to the left
    while the slopes (``np.gradient`` of the smoothed loss) at its two ends differ by more
    than ``thresh``; the rate at the window's left end where they first agree."""
    lrs, sm, lo = _fastai_trim(curve)
    n = len(sm)
    if n <= lr_diff:
        return math.nan
    grad = np.gradient(sm)
    right, left = n - 1, n - 1 - lr_diff
    found = left
    while left >= 0 and abs(grad[right] - grad[left]) > thresh:
        found = left
        right, left = right - 1, left - 1
    return _rate(curve, lo + found)


def lightning_rule(curve: Curve, skip_begin: int = 10, skip_end: int = 1) -> float:
    """PyTorch Lightning's ``suggestion()``: the steepest ``np.gradient`` of the smoothed
    (debiased, beta 0.98) loss after dropping ``skip_begin`` points at the start and
    ``skip_end`` at the end of the recorded ones."""
    sm = curve.smoothed_losses[skip_begin : curve.end + 1 - skip_end]
    keep = np.nonzero(np.isfinite(sm))[0]
    if keep.size < 2:
        return math.nan
    return _rate(curve, skip_begin + int(keep[np.argmin(np.gradient(sm[keep]))]))


def torch_lr_finder_rule(curve: Curve, smooth_f: float = 0.05, diverge_th: float = 5.0,
                         skip_start: int = 10, skip_end: int = 5) -> float:
    """torch-lr-finder's suggestion: its own smoothing of the raw losses (``s_0 = l_0``,
    ``s_k = smooth_f l_k + (1 - smooth_f) s_{k-1}``, stopping once ``s_k > diverge_th`` times
    the best), then the steepest ``np.gradient`` after dropping ``skip_start`` and
    ``skip_end`` points."""
    raw = curve.losses[: curve.end + 1]
    smoothed, best = [], math.inf
    for k, loss in enumerate(raw):
        s = loss if k == 0 else smooth_f * loss + (1 - smooth_f) * smoothed[-1]
        smoothed.append(s)
        if not np.isfinite(s) or s > diverge_th * best:
            break
        best = min(best, s)
    sm = np.asarray(smoothed)[skip_start : len(smoothed) - skip_end]
    if sm.size < 2:
        return math.nan
    return _rate(curve, skip_start + int(np.argmin(np.gradient(sm))))


LECOPT_FACTOR = 1.5
"""lecopt's rule divides the rate of the lowest zero-phase-smoothed loss by this factor.

Chosen on :mod:`lecopt.bench.lr_suggest` (9 tasks x 3 resolutions): factors 1, 1.5, 2, 2.5,
3, 4 hit the grid-best loss within 1.25x on 67%, 81%, 63%, 48%, 48%, 30% of the cases; the
suite is also the test set, so the figure is in-sample."""


def lecopt_rule(curve: Curve) -> float:
    """lecopt's rule: the largest stable rate over a safety factor.

    The log-loss is smoothed by a centred local parabola half a decade wide
    (:func:`local_quadratic`): no lag, and the same window at any resolution. Its lowest point
    before the divergence is the largest rate at which the sweep still made progress; the
    suggestion is that rate over :data:`LECOPT_FACTOR`.

    Why: a short run at a constant rate does best close to the edge of stability, and the
    edge is where the (lag-free) loss stops falling. The steepest decline (the lecture's
    rule, read without lag) sits 2-10x lower; the EMA-based rules land near the edge only by
    their lag, which depends on the resolution. Measured on the suite (exact rates,
    ``lecopt bench --only lr-suggest``): regret <= 1.25 in 81% of the (task, resolution)
    cases, median regret 1.11, against at most 33% for the other rules. It misses on the
    10-epoch Adam task at 100 and 1000 steps (regret 24.8x and 5.3x; at 400 steps 1.5x), and
    the suggestion moves by a median 2.3x between 100 and 1000 steps: the curve's minimum,
    not the smoothing, moves with the training the sweep does. ``lecopt bench --only
    lr-dependence`` shows the rest: the swept range moves it by 1.2-2.0x, about as much as the
    seed, and the best constant rate moves by at most 1.8x between 1 and 10 epochs, so the
    rule takes no budget (a budget term, the factor growing as epochs**p for p = 0.125-0.5,
    raised the suite's hit rate above 81% for no p and factor, read off its grids by
    interpolation).
    """
    if curve.end < 5:
        return math.nan
    _, value, _ = _zero_phase(curve, of_log=True)
    return _rate(curve, int(np.argmin(value))) / LECOPT_FACTOR


RULES: dict[str, Callable[[Curve], float]] = {
    "lecopt": lecopt_rule,
    "lecture": lecture_rule,
    "fastai steep": fastai_steep,
    "fastai minimum/10": fastai_minimum,
    "fastai valley": fastai_valley,
    "fastai slide": fastai_slide,
    "lightning": lightning_rule,
    "torch-lr-finder": torch_lr_finder_rule,
}
"""Every suggestion rule by name; ``"lecopt"`` is :attr:`LRRangeTestResult.suggestion`."""


def _end(stopped_at: int, diverged: bool, num_steps: int) -> int:
    return int(stopped_at) if diverged else num_steps


def suggest(learning_rates: Any, losses: Any, smoothed_losses: Any, stopped_at: Any,
            diverged: Any) -> dict[str, float]:
    """Every rule of :data:`RULES` on one recorded sweep (the fields of a one-seed result).

    Args:
      learning_rates, losses, smoothed_losses: shape ``(n,)``.
      stopped_at, diverged: as in :class:`LRRangeTestResult`.

    Returns:
      ``{name: rate}`` (NaN where a rule has too few points before the divergence).
    """
    lrs = np.asarray(learning_rates, np.float64)
    curve = Curve(lrs, np.asarray(losses, np.float64), np.asarray(smoothed_losses, np.float64),
                  _end(stopped_at, diverged, lrs.shape[0]), lrs.shape[0])
    out = {}
    for name, rule in RULES.items():
        with np.errstate(all="ignore"):
            out[name] = float(rule(curve))
    return out


# --------------------------------------------------------------------------------------------
# The compiled sweep


def _loss_and_state(loss_fn, with_state, params, model_state, batch):
    if with_state:
        out = loss_fn(params, model_state, batch)
        if not (isinstance(out, tuple | list) and len(out) == 2):
            raise TypeError(
                "loss_fn: with model_state given, loss_fn(params, model_state, batch) must "
                f"return (loss, new_model_state); got {type(out).__name__}"
            )
        return out[0], out[1]
    return loss_fn(params, batch), model_state


class _Curves(NamedTuple):
    learning_rates: jax.Array
    losses: jax.Array
    smoothed_losses: jax.Array
    stopped_at: jax.Array
    diverged: jax.Array


def _sweep_impl(
    params,
    model_state,
    batches,
    order,
    min_lr,
    max_lr,
    smoothing,
    diverge_factor,
    *,
    loss_fn,
    optimizer,
    num_steps,
    mode,
    with_state,
) -> _Curves:
    # Module-level jit with the functions as static arguments: jax's own cache, keyed on
    # (loss_fn, optimizer, num_steps, mode, with_state) and the arguments' shapes and dtypes,
    # makes a second call with the same objects reuse the compiled sweep. The rates, smoothing,
    # divergence factor and minibatch order are traced: new values reuse it too.
    make_range = schedules.exponential_range if mode == "exponential" else schedules.linear_range
    schedule = make_range(min_lr, max_lr, num_steps)
    tx = optimizer(schedule)
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(
            "optimizer: expected a function learning_rate -> optax.GradientTransformation "
            f"(e.g. lambda lr: lecopt.sgd(lr, momentum=0.9)); it returned {type(tx).__name__}"
        )
    nb = jax.tree.leaves(batches)[0].shape[0]
    value_fn = partial(_loss_and_state, loss_fn, with_state)
    # Minibatch k is batches[order[k % nb]] (cycled when there are fewer than num_steps).
    first = jax.tree.map(lambda x: x[0], batches)
    loss_aval, state_aval = jax.eval_shape(value_fn, params, model_state, first)
    if getattr(loss_aval, "shape", None) != () or not jnp.issubdtype(
        loss_aval.dtype, jnp.floating
    ):
        raise ValueError(
            "loss_fn must return a scalar floating-point loss; it returned "
            f"shape {getattr(loss_aval, 'shape', None)} dtype {getattr(loss_aval, 'dtype', None)}"
        )
    if with_state and jax.tree.structure(state_aval) != jax.tree.structure(model_state):
        raise ValueError(
            "loss_fn: the new model_state it returns must have the structure of model_state; "
            f"got {jax.tree.structure(state_aval)}, expected {jax.tree.structure(model_state)}"
        )
    fdt = jnp.promote_types(loss_aval.dtype, jnp.float32)
    grad_fn = jax.value_and_grad(value_fn, has_aux=True)
    beta = jnp.asarray(smoothing, fdt)
    factor = jnp.asarray(diverge_factor, fdt)

    def step(carry, item):
        # k counts the steps of the scan (the same for every seed under vmap, so it stays
        # unbatched); while a sweep is live, it is also its number of updates so far.
        k, params, opt_state, ms, avg, best, diverged, recorded = carry
        batch = item if order is None else jax.tree.map(
            lambda x: lax.dynamic_index_in_dim(x, item, keepdims=False), batches)
        live = (k < num_steps) & ~diverged
        (loss, new_ms), grads = grad_fn(params, ms, batch)
        loss = loss.astype(fdt)
        # fastai's smoothing is Adam's debiased first moment of the losses: one formula.
        new_avg = transforms._ema(avg, loss, beta)
        smooth = transforms.bias_correction(new_avg, beta, k + 1)
        new_best = jnp.minimum(best, smooth)
        # fastai's rule; NaN or inf (in the loss or its average) counts as divergence too.
        bad = ~jnp.isfinite(loss) | ~jnp.isfinite(smooth) | (smooth > factor * new_best)
        updates, new_opt = tx.update(grads, opt_state, params)
        # Once stopped, the step still runs (a branch would copy the whole state every step,
        # which costs more than the few steps left) but changes nothing that is returned:
        # the params are not returned, and the record, counters and averages hold still.
        carry = (
            k + 1,
            optax.apply_updates(params, updates),
            new_opt,
            new_ms,
            jnp.where(live, new_avg, avg),
            jnp.where(live, new_best, best),
            diverged | (live & bad),
            recorded + live.astype(recorded.dtype),
        )
        return carry, (jnp.where(live, loss, jnp.nan), jnp.where(live, smooth, jnp.nan))

    # Without an order the minibatches are the scanned-over sequence (xs) of an inner scan,
    # once per cycle through them: each step slices out its own minibatch (one minibatch
    # copy). With an order (a seed's, batched under vmap over seeds) the scan runs
    # over the indices and each step gathers its own minibatch from the shared batches:
    # permuting the whole data set once per seed up front cost more than the sweep itself
    # for a small model, and a batched xs is sliced along its second axis every step.
    in_order = batches if order is None else order
    cycles = -(-num_steps // nb)

    init = (
        jnp.asarray(0, jnp.int32),
        params,
        tx.init(params),
        model_state,
        jnp.zeros((), fdt),
        jnp.asarray(jnp.inf, fdt),
        jnp.asarray(False),
        jnp.asarray(0, jnp.int32),
    )
    out, (losses, smoothed) = lax.scan(lambda c, _: lax.scan(step, c, in_order), init, None,
                                       length=cycles)
    ks = jnp.arange(num_steps, dtype=jnp.int32)
    return _Curves(
        learning_rates=jax.vmap(schedule)(ks),
        losses=losses.reshape(-1)[:num_steps],
        smoothed_losses=smoothed.reshape(-1)[:num_steps],
        stopped_at=out[7] - 1,
        diverged=out[6],
    )


_STATIC = ("loss_fn", "optimizer", "num_steps", "mode", "with_state")
_sweep = jax.jit(_sweep_impl, static_argnames=_STATIC)


@partial(jax.jit, static_argnames=_STATIC)
def _sweep_seeds(params, model_state, batches, orders, min_lr, max_lr, smoothing,
                 diverge_factor, **static) -> _Curves:
    # All seeds in one program: the sweep vmapped over (params, order); the rates are shared.
    one = lambda p, o: _sweep_impl(p, model_state, batches, o, min_lr, max_lr, smoothing,
                                   diverge_factor, **static)
    curves = jax.vmap(one)(params, orders)
    return curves._replace(learning_rates=curves.learning_rates[0])


def _check_batches(batches: Any) -> None:
    leaves, _ = jax.tree_util.tree_flatten_with_path(batches)
    if not leaves:
        raise ValueError("batches: expected a pytree of arrays, got no arrays")
    leading = {}
    for path, leaf in leaves:
        shape = np.shape(leaf)
        name = jax.tree_util.keystr(path) or "batches"
        if len(shape) == 0:
            raise ValueError(
                f"batches{name if name != 'batches' else ''} is a scalar; every array needs a "
                "leading axis that indexes minibatches"
            )
        leading[name] = shape[0]
    sizes = set(leading.values())
    if len(sizes) > 1:
        listing = ", ".join(f"{k or 'batches'}: {v}" for k, v in leading.items())
        raise ValueError(
            "batches: every array must have the same leading axis (the number of minibatches); "
            f"got {listing}"
        )
    if sizes == {0}:
        raise ValueError("batches: the leading axis is 0; at least one minibatch is needed")


# --------------------------------------------------------------------------------------------
# The public range test


@partial(jax.jit, static_argnames=("nb",))
def _seed_keys(seeds: jax.Array, nb: int) -> tuple[jax.Array, jax.Array]:
    # Seed s: init_key, order_key = split(key(s)); the minibatch order permutation(order_key).
    def one(s):
        init_key, order_key = jax.random.split(jax.random.key(s))
        return init_key, jax.random.permutation(order_key, nb).astype(jnp.int32)

    return jax.vmap(one)(seeds)


def _seed_inputs(params: Any, nb: int, seeds: list[int]) -> tuple[Any, jax.Array]:
    """Each seed's initial params (``params(init_key)`` when params is a function of a key,
    else the given params for all) and its minibatch order, in one compiled call each."""
    init_keys, orders = _seed_keys(jnp.asarray(seeds, jnp.uint32), nb)
    if callable(params):
        stacked = jax.vmap(params)(init_keys)
    else:
        stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (len(seeds), *jnp.shape(x))),
                               params)
    return stacked, orders


def _seed_list(seeds: Any) -> list[int] | None:
    if seeds is None:
        return None
    if isinstance(seeds, bool):
        raise TypeError(f"seeds: expected a count or a sequence of integers, got {seeds!r}")
    if isinstance(seeds, int | np.integer):
        if seeds < 1:
            raise ValueError(f"seeds={seeds!r} is out of range; a count of seeds must be >= 1")
        return list(range(int(seeds)))
    out = list(seeds)
    if not out or not all(isinstance(s, int | np.integer) and not isinstance(s, bool)
                          and s >= 0 for s in out):
        raise ValueError(f"seeds={seeds!r}: expected a non-empty sequence of integers >= 0")
    return [int(s) for s in out]


def _host_suggestions(curves: _Curves) -> tuple[dict, dict]:
    """Per rule: the median over seeds and the per-seed rates (NumPy, on the host)."""
    per_seed = {name: [] for name in RULES}
    for i in range(np.shape(curves.losses)[0]):
        one = suggest(curves.learning_rates, curves.losses[i], curves.smoothed_losses[i],
                      curves.stopped_at[i], curves.diverged[i])
        for name, v in one.items():
            per_seed[name].append(v)
    per_seed = {k: np.asarray(v) for k, v in per_seed.items()}
    return {name: geometric_median(v) for name, v in per_seed.items()}, per_seed


def geometric_median(rates: Any) -> float:
    """The median of rates on a log scale (the median of their logarithms), over the finite
    positive ones; NaN when there are none."""
    v = np.asarray(rates, np.float64).reshape(-1)
    v = v[np.isfinite(v) & (v > 0)]
    return float(np.exp(np.median(np.log(v)))) if v.size else math.nan


def _callback_suggestions(curves: _Curves) -> jax.Array:
    # The NumPy rules inside a traced program (under jit or vmap): a host callback.
    def host(lrs, losses, smoothed, stopped_at, diverged):
        return np.asarray(list(suggest(lrs, losses, smoothed, stopped_at, diverged).values()),
                          np.float32)

    return jax.pure_callback(host, jax.ShapeDtypeStruct((len(RULES),), jnp.float32), *curves,
                             vmap_method="sequential")


def lr_range_test(
    loss_fn: Callable[..., Any],
    params: Any,
    batches: Any,
    optimizer: Callable[[Any], optax.GradientTransformation],
    *,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    num_steps: int = 100,
    mode: str = "exponential",
    smoothing: float = 0.98,
    diverge_factor: float = 4.0,
    model_state: Any = None,
    seeds: int | Sequence[int] | None = None,
) -> LRRangeTestResult:
    """The learning-rate range test: raise ``alpha`` after every minibatch, record the loss.

    Step ``k = 0 .. num_steps-1`` computes the loss of minibatch ``k`` (cycled) at the current
    params, records it, then updates with ``alpha_k``, where ``alpha`` runs from ``min_lr`` to
    ``max_lr`` geometrically (``mode="exponential"``: ``alpha_k = min (max/min)**(k/(n-1))``)
    or linearly. The losses are smoothed by the bias-corrected moving average
    ``avg_k = beta avg_{k-1} + (1 - beta) loss_k``, ``smooth_k = avg_k / (1 - beta**(k+1))``
    (as fastai). Once ``smooth_k > diverge_factor * min_{j<=k} smooth_j`` (or a loss is not
    finite) the sweep stops. Then every rule of :data:`RULES` reads the record (NumPy, on the
    host); ``suggestion`` is lecopt's (:func:`lecopt_rule`), checked against grid search by
    :mod:`lecopt.bench.lr_suggest`.

    The sweep is one ``lax.while_loop`` in one jitted program, cached on ``(loss_fn,
    optimizer)`` (by identity), the shapes and dtypes of the inputs, ``num_steps`` and
    ``mode``: call again with the same objects (and any rates, smoothing or factor) and no
    compilation happens. Nothing given is modified. With ``seeds`` the sweeps of all seeds are
    one ``vmap``-ed program; the function can also be ``jax.vmap``-ed itself (the rules then
    run as a host callback).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``; with ``model_state``,
        ``loss_fn(params, model_state, batch) -> (scalar, new_model_state)``. The divergence
        rule assumes positive losses (as every practical training loss).
      params: the initial parameters (a pytree); with ``seeds`` also a function
        ``key -> params`` that initialises each seed's own.
      batches: a pytree of arrays whose leading axis indexes minibatches (e.g.
        ``{"x": (num_batches, m, d), "y": (num_batches, m)}``), cycled if shorter than
        ``num_steps``.
      optimizer: a function of the learning rate (a number or schedule) returning a
        transformation: ``lambda lr: lecopt.sgd(lr, momentum=0.9)``, ``lecopt.adam``,
        ``optax.adam``. Keep the same object between calls to reuse the compiled sweep.
      min_lr: the first rate, > 0.
      max_lr: the last rate, > ``min_lr``.
      num_steps: the number of minibatches (and rates), an integer >= 2.
      mode: ``"exponential"`` (the usual) or ``"linear"`` spacing of the rates.
      smoothing: ``beta`` in [0, 1) of the moving average (0: no smoothing).
      diverge_factor: stop once the smoothed loss exceeds this multiple (> 1) of its best.
      model_state: mutable model state such as Flax's ``{"batch_stats": ...}``, threaded
        through the sweep; None for a stateless ``loss_fn``.
      seeds: None (one sweep, minibatches in the given order), a count ``S`` (seeds
        ``0..S-1``) or a sequence of seeds. Seed ``s`` splits ``jax.random.key(s)`` into
        ``(init_key, order_key)``, takes the minibatches in the order
        ``jax.random.permutation(order_key, num_batches)`` and, if ``params`` is a function,
        starts from ``params(init_key)``.

    Returns:
      An :class:`LRRangeTestResult`; with ``seeds`` its curves have a leading seed axis and
      the suggestions are medians over the seeds.

    Raises:
      ValueError: ``min_lr >= max_lr``, rates out of range, ``num_steps < 2``, an unknown
        ``mode``, batches with inconsistent leading axes, a ``loss_fn`` that does not return
        a scalar, bad ``seeds``.
      TypeError: ``loss_fn`` or ``optimizer`` not callable, or ``optimizer`` not returning a
        transformation.

    Example:
      >>> import optax
      >>> opt = lambda lr: lecopt.sgd(lr, momentum=0.9)
      >>> xb = jax.random.normal(jax.random.key(0), (20, 32, 4))  # 20 minibatches of 32
      >>> yb = (xb.sum(-1) > 0).astype(jnp.float32)
      >>> def loss_fn(p, batch):
      ...     logits = batch["x"] @ p["w"]
      ...     return optax.sigmoid_binary_cross_entropy(logits, batch["y"]).mean()
      >>> res = lecopt.lr_range_test(loss_fn, {"w": jnp.zeros(4)}, {"x": xb, "y": yb}, opt,
      ...                            min_lr=1e-4, max_lr=100.0, num_steps=60, seeds=3)
      >>> res.losses.shape, res.seed_suggestions["lecopt"].shape
      ((3, 60), (3,))
      >>> bool(1e-4 < res.suggestion < 100.0), bool(res.spread["lecopt"] >= 1.0)
      (True, True)
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a function, got {loss_fn!r}")
    if not callable(optimizer):
        raise TypeError(
            "optimizer: expected a function learning_rate -> optax.GradientTransformation "
            f"(e.g. lambda lr: lecopt.sgd(lr, momentum=0.9)), got {optimizer!r}"
        )
    if mode not in _MODES:
        raise ValueError(f"mode={mode!r} is invalid; mode must be one of {_MODES}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer):
        raise TypeError(f"num_steps: expected an integer, got {num_steps!r}")
    if num_steps < 2:
        raise ValueError(f"num_steps={num_steps!r} is out of range; num_steps must be >= 2")
    check_range("min_lr", min_lr, 0.0, lo_open=True)
    check_range("max_lr", max_lr, 0.0, lo_open=True)
    if not isinstance(min_lr, jax.core.Tracer) and not isinstance(max_lr, jax.core.Tracer):
        if np.any(np.asarray(min_lr, dtype=np.float64) >= np.asarray(max_lr, dtype=np.float64)):
            raise ValueError(
                f"min_lr={min_lr!r} must be smaller than max_lr={max_lr!r} (the sweep raises "
                "the learning rate from min_lr to max_lr)"
            )
    check_range("smoothing", smoothing, 0.0, 1.0, hi_open=True)
    check_range("diverge_factor", diverge_factor, 1.0, lo_open=True)
    _check_batches(batches)
    seed_list = _seed_list(seeds)
    if callable(params) and seed_list is None:
        raise TypeError("params: a function key -> params needs seeds (e.g. seeds=3)")
    nb = jax.tree.leaves(batches)[0].shape[0]
    static = dict(loss_fn=loss_fn, optimizer=optimizer, num_steps=int(num_steps), mode=mode,
                  with_state=model_state is not None)
    if seed_list is None:
        curves = _sweep(params, model_state, batches, None, min_lr, max_lr, smoothing,
                        diverge_factor, **static)
        traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(curves))
        if traced:
            values = _callback_suggestions(curves)
            named = dict(zip(RULES, values))
            return LRRangeTestResult(*curves, suggestion=named["lecopt"], suggestions=named)
        single = jax.tree.map(lambda x: np.asarray(x)[None], curves)._replace(
            learning_rates=np.asarray(curves.learning_rates))
        named, _ = _host_suggestions(single)
        return LRRangeTestResult(*curves, suggestion=named["lecopt"], suggestions=named)
    stacked, orders = _seed_inputs(params, nb, seed_list)
    curves = _sweep_seeds(stacked, model_state, batches, orders, min_lr, max_lr, smoothing,
                          diverge_factor, **static)
    host = jax.tree.map(np.asarray, curves)
    named, per_seed = _host_suggestions(host)
    spread = {}
    for name, v in per_seed.items():
        finite = v[np.isfinite(v)]
        spread[name] = float(finite.max() / finite.min()) if finite.size else math.nan
    return LRRangeTestResult(*curves, suggestion=named["lecopt"], suggestions=named,
                             seed_suggestions=per_seed, spread=spread)



# --------------------------------------------------------------------------------------------
# Figures


def _one_rate(value: Any) -> float:
    # A suggestion of a vmapped result has one entry per sweep: mark their median.
    return geometric_median(value)


def _suggestion_y(lrs: np.ndarray, curve: np.ndarray, rate: float) -> float:
    ok = np.isfinite(curve)
    return float(np.interp(np.log(rate), np.log(lrs[ok]), curve[ok]))


def _draw_range_test(ax: Any, res: LRRangeTestResult, rules: Sequence[str] | None) -> None:
    lrs = np.asarray(res.learning_rates, np.float64).reshape(-1)[-np.shape(res.losses)[-1]:]
    raw = np.asarray(res.losses, np.float64).reshape(-1, lrs.size)
    sm = np.asarray(res.smoothed_losses, np.float64).reshape(-1, lrs.size)
    lag_free = []
    for i, (r, m) in enumerate(zip(raw, sm)):
        curve = _curve_of(lrs, r, m, res, i)
        if curve.end >= 5:
            with np.errstate(all="ignore"):
                lag_free.append(np.exp(_zero_phase(curve, of_log=True)[1]))
    many = raw.shape[0] > 1
    for i, r in enumerate(raw):
        ax.plot(lrs, r, color="0.6", lw=0.8, alpha=0.6,
                label="raw minibatch loss" + (" (each seed)" if many else "") if i == 0 else None)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mid = np.nanmedian(sm, axis=0)
        if many:
            ax.fill_between(lrs, np.nanmin(sm, 0), np.nanmax(sm, 0), color="C0", alpha=0.2,
                            label=f"band of {raw.shape[0]} seeds (EMA)")
    ax.plot(lrs, mid, color="C0", lw=2, label="EMA-smoothed loss (fastai, beta 0.98)"
            + (", median" if many else ""))
    for i, z in enumerate(lag_free):
        ax.plot(lrs[: z.size], z, color="C1", lw=1.5,
                label="zero-phase smoothed loss (lecopt)" if i == 0 else None)
    names = list(res.suggestions) if rules is None else list(rules)
    for j, name in enumerate(names):
        rate = _one_rate(res.suggestions[name])
        if not np.isfinite(rate):
            continue
        ax.axvline(rate, color=f"C{(j + 2) % 10}", lw=1, ls="--", alpha=0.8)
        ax.plot([rate], [_suggestion_y(lrs, mid, rate)], _MARKERS[j % len(_MARKERS)],
                color=f"C{(j + 2) % 10}", ms=8, mfc="none", mew=2, label=f"{name}: {rate:.3g}")
    finite = np.concatenate([mid[np.isfinite(mid)], raw[np.isfinite(raw)]])
    if finite.size:
        start = float(np.nanmedian(raw[:, : max(1, lrs.size // 20)]))
        low = float(np.nanmin(mid))
        ax.set_ylim(low - 0.1 * (start - low) if start > low else low * 0.9,
                    start + 0.15 * abs(start - low) if start > low else start * 1.1)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate alpha (log scale)")
    ax.set_ylabel("training loss (minibatch, nats)")
    ax.set_title("Learning-rate range test" + (f" ({raw.shape[0]} seeds)" if many else ""))
    ax.legend(fontsize="x-small", loc="lower left")
    ax.grid(True, which="both", alpha=0.3)


def _curve_of(lrs, raw, sm, res, i) -> Curve:
    stopped = np.asarray(res.stopped_at).reshape(-1)[i]
    diverged = np.asarray(res.diverged).reshape(-1)[i]
    return Curve(lrs, raw, sm, _end(stopped, diverged, lrs.size), lrs.size)


def plot(result: LRRangeTestResult, grid: Any = None,
         rules: Sequence[str] | None = None) -> Any:
    """The range test (left) and, with ``grid``, the grid search's final loss against the
    rate with every suggestion on it (right).

    Args:
      result: an :class:`LRRangeTestResult` (one seed or several).
      grid: a :class:`GridSearchResult` of the same model and optimizer, or None.
      rules: names of the suggestions to mark (default: all).

    Returns:
      The matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if grid is not None else 1,
                             figsize=(13 if grid is not None else 7, 4.8), squeeze=False)
    _draw_range_test(axes[0, 0], result, rules)
    if grid is not None:
        ax = axes[0, 1]
        rates, finals = np.asarray(grid.rates), np.asarray(grid.final_loss)
        ok = np.isfinite(finals)
        ax.plot(rates[ok], finals[ok], "k.-", label="final training loss (grid)")
        if (~ok).any():
            ax.plot(rates[~ok], np.full((~ok).sum(), np.nanmax(finals[ok]) if ok.any() else 1),
                    "rx", label="diverged")
        names = list(result.suggestions) if rules is None else list(rules)
        for j, name in enumerate(names):
            rate = _one_rate(result.suggestions[name])
            if np.isfinite(rate):
                ax.axvline(rate, color=f"C{(j + 2) % 10}", lw=1, ls="--",
                           label=f"{name}: {rate:.3g}")
        ax.axvline(grid.best_rate, color="k", lw=2, alpha=0.4,
                   label=f"grid best: {grid.best_rate:.3g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("constant learning rate alpha (log scale)")
        ax.set_ylabel("final training loss (whole set, nats, log scale)")
        ax.set_title(f"Grid search: {grid.epochs} epochs at each constant rate")
        ax.legend(fontsize="x-small")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig
