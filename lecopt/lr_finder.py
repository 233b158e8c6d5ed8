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

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from lecopt import schedules, transforms
from lecopt._checks import check_range

__all__ = ["LRRangeTestResult", "lr_range_test"]

_MODES = ("exponential", "linear")


class LRRangeTestResult(NamedTuple):
    """What :func:`lr_range_test` measured (a pytree: under ``vmap`` every field gains an axis).

    Attributes:
      learning_rates: ``alpha_k`` of step ``k``, shape ``(num_steps,)``: the full grid.
      losses: the raw minibatch loss at step ``k``, taken before the ``k``-th update (so it
        reflects the rates ``alpha_0 .. alpha_{k-1}``); NaN after ``stopped_at``.
      smoothed_losses: the bias-corrected exponential moving average of ``losses``
        (``avg_k = beta avg_{k-1} + (1 - beta) loss_k``, ``smooth_k = avg_k / (1 - beta**(k+1))``);
        NaN after ``stopped_at``.
      stopped_at: the last recorded step (int32): the step at which the smoothed loss
        diverged, or ``num_steps - 1`` when it never did.
      diverged: whether the sweep stopped early (bool).
      suggestion: the rate of steepest decline of the smoothed loss against ``log alpha``
        (``suggestions["steepest"]``).
      suggestions: ``{"steepest", "minimum/10", "valley"}``: the steepest decline, a tenth of
        the rate at the smallest smoothed loss, and fastai's "valley" rule (a point in the
        longest decreasing run of the smoothed loss). All ignore the first ``min(10,
        num_steps // 10)`` noisy points and everything from the divergence on; NaN when too
        few points remain.
    """

    learning_rates: jax.Array
    losses: jax.Array
    smoothed_losses: jax.Array
    stopped_at: jax.Array
    diverged: jax.Array
    suggestion: jax.Array
    suggestions: dict[str, jax.Array]

    def plot(self, ax: Any = None) -> Any:
        """Draws raw and smoothed loss against the learning rate (log axis), suggestion marked.

        Args:
          ax: a matplotlib ``Axes``; a new figure is made when None.

        Returns:
          The ``Axes``. A result of a vmapped call draws one pair of curves per sweep.
        """
        lrs = np.asarray(self.learning_rates)
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(6, 4))
        rows = lrs.reshape(-1, lrs.shape[-1]).shape[0]
        flat = lambda x: np.asarray(x).reshape(rows, -1)
        for r, (lr, raw, sm, sug) in enumerate(
            zip(
                flat(self.learning_rates),
                flat(self.losses),
                flat(self.smoothed_losses),
                flat(self.suggestion)[:, 0],
            )
        ):
            tag = f" (sweep {r})" if rows > 1 else ""
            line = ax.plot(lr, sm, lw=2, label=f"smoothed loss{tag}")[0]
            ax.plot(lr, raw, alpha=0.35, lw=1, color=line.get_color(), label=f"raw loss{tag}")
            if np.isfinite(sug):
                y = np.interp(np.log(sug), np.log(lr), np.where(np.isfinite(sm), sm, np.nan))
                ax.plot([sug], [y], "o", ms=9, color=line.get_color(), mfc="none",
                        label=f"steepest decline: {sug:.3g}{tag}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate alpha (log scale)")
        ax.set_ylabel("training loss (minibatch)")
        ax.set_title("Learning-rate range test")
        ax.legend(fontsize="small")
        ax.grid(True, which="both", alpha=0.3)
        return ax


# --------------------------------------------------------------------------------------------
# Suggestions, computed inside the compiled program so that they vmap.


def _skip(num_steps: int) -> int:
    # fastai and torch-lr-finder both drop the first tenth (at most 10) of the points: the
    # smoothed loss of the first steps is mostly the initial loss and its noise.
    return min(10, num_steps // 10)


def _first_nonempty(preferred: jax.Array, fallback: jax.Array) -> jax.Array:
    return jnp.where(jnp.any(preferred), preferred, fallback)


def _steepest(lrs, smoothed, valid, skip):
    k = jnp.arange(lrs.shape[0] - 1)
    slope = (smoothed[1:] - smoothed[:-1]) / (jnp.log(lrs[1:]) - jnp.log(lrs[:-1]))
    # Only the descent up to the smoothed minimum counts: once the loss has blown up (even
    # when not past diverge_factor), a later drop is recovery from divergence, not learning.
    lowest = jnp.argmin(jnp.where(valid, smoothed, jnp.inf))
    pair = valid[1:] & valid[:-1] & (k < lowest)
    pair = _first_nonempty(pair & (k >= skip), pair)
    idx = jnp.argmin(jnp.where(pair, slope, jnp.inf))
    return jnp.where(jnp.any(pair), lrs[idx], jnp.nan)


def _minimum_over_10(lrs, smoothed, mask):
    idx = jnp.argmin(jnp.where(mask, smoothed, jnp.inf))
    return jnp.where(jnp.any(mask), lrs[idx] / 10, jnp.nan)


def _valley(lrs, smoothed, mask):
    """fastai's "valley": the longest decreasing subsequence of the smoothed loss ending at
    ``e`` with length ``L``; the rate at ``e - L + floor(L/3) + floor(L/6)``, about the middle of
    its later part."""
    n = lrs.shape[0]
    ks = jnp.arange(n)

    def longest_ending_at(i, lds):
        earlier_higher = mask & (ks < i) & (smoothed > smoothed[i])
        best = jnp.max(jnp.where(earlier_higher, lds, 0))
        return lds.at[i].set(jnp.where(mask[i], best + 1, 0))

    lds = lax.fori_loop(0, n, longest_ending_at, jnp.zeros(n, jnp.int32))
    end = jnp.argmax(lds)
    length = lds[end]
    lo = jnp.argmax(mask)
    hi = n - 1 - jnp.argmax(mask[::-1])
    idx = jnp.clip(end - length + length // 3 + length // 6, lo, hi)
    return jnp.where(jnp.any(mask), lrs[idx], jnp.nan)


# --------------------------------------------------------------------------------------------
# The compiled sweep


def _take(batches: Any, k: jax.Array, nb: int) -> Any:
    # Minibatches are cycled when there are fewer than num_steps of them.
    return jax.tree.map(lambda x: lax.dynamic_index_in_dim(x, k % nb, keepdims=False), batches)


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


@partial(
    jax.jit,
    static_argnames=("loss_fn", "optimizer", "num_steps", "mode", "with_state"),
)
def _sweep(
    params,
    model_state,
    batches,
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
):
    # Module-level jit with the functions as static arguments: jax's own cache, keyed on
    # (loss_fn, optimizer, num_steps, mode, with_state) and the arguments' shapes and dtypes,
    # makes a second call with the same objects reuse the compiled sweep. The rates, smoothing
    # and divergence factor are traced: new values reuse it too.
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

    loss_aval, state_aval = jax.eval_shape(value_fn, params, model_state, _take(batches, 0, nb))
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
    nan = jnp.asarray(jnp.nan, fdt)

    def live_step(carry, k):
        params, opt_state, ms, avg, best, _, stopped_at = carry
        (loss, new_ms), grads = grad_fn(params, ms, _take(batches, k, nb))
        loss = loss.astype(fdt)
        # fastai's smoothing is Adam's debiased first moment of the losses: one formula.
        avg = transforms._ema(avg, loss, beta)
        smooth = transforms.bias_correction(avg, beta, k + 1)
        best = jnp.minimum(best, smooth)
        # fastai's rule; NaN or inf (in the loss or its average) counts as divergence too.
        diverged = ~jnp.isfinite(loss) | ~jnp.isfinite(smooth) | (smooth > factor * best)
        updates, new_opt = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(diverged, b, a), new, old)
        carry = (
            keep(new_params, params),
            keep(new_opt, opt_state),
            keep(new_ms, ms),
            avg,
            best,
            diverged,
            jnp.where(diverged, k, stopped_at),
        )
        return carry, (loss, smooth)

    def stopped_step(carry, k):
        # After divergence nothing is updated or recorded.
        return carry, (nan, nan)

    def step(carry, k):
        return lax.cond(carry[5], stopped_step, live_step, carry, k)

    init = (
        params,
        tx.init(params),
        model_state,
        jnp.zeros((), fdt),
        jnp.asarray(jnp.inf, fdt),
        jnp.asarray(False),
        jnp.asarray(num_steps - 1, jnp.int32),
    )
    ks = jnp.arange(num_steps, dtype=jnp.int32)
    carry, (losses, smoothed) = lax.scan(step, init, ks)
    diverged, stopped_at = carry[5], carry[6]

    lrs = jax.vmap(schedule)(ks)
    valid = ks <= stopped_at - diverged.astype(jnp.int32)
    skip = _skip(num_steps)
    trimmed = _first_nonempty(valid & (ks >= skip), valid)
    steepest = _steepest(lrs, smoothed, valid, skip)
    suggestions = {
        "steepest": steepest,
        "minimum/10": _minimum_over_10(lrs, smoothed, trimmed),
        "valley": _valley(lrs, smoothed, trimmed),
    }
    return LRRangeTestResult(
        learning_rates=lrs,
        losses=losses,
        smoothed_losses=smoothed,
        stopped_at=stopped_at,
        diverged=diverged,
        suggestion=steepest,
        suggestions=suggestions,
    )


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
) -> LRRangeTestResult:
    """The learning-rate range test: raise ``alpha`` after every minibatch, record the loss.

    Step ``k = 0 .. num_steps-1`` computes the loss of minibatch ``k`` (cycled) at the current
    params, records it, then updates with ``alpha_k``, where ``alpha`` runs from ``min_lr`` to
    ``max_lr`` geometrically (``mode="exponential"``: ``alpha_k = min (max/min)**(k/(n-1))``)
    or linearly. The losses are smoothed by the bias-corrected moving average
    ``avg_k = beta avg_{k-1} + (1 - beta) loss_k``, ``smooth_k = avg_k / (1 - beta**(k+1))``
    (as fastai). Once ``smooth_k > diverge_factor * min_{j<=k} smooth_j`` (or a loss is not
    finite) the sweep stops counting: later steps neither update nor record. A good rate is
    one where the loss declines steeply: ``suggestion`` is the rate of the steepest decline of
    the smoothed loss against ``log alpha``.

    The whole sweep is one ``lax.scan`` in one jitted program, cached on ``(loss_fn,
    optimizer)`` (by identity), the shapes and dtypes of the inputs, ``num_steps`` and
    ``mode``: call again with the same objects (and any rates, smoothing or factor) and no
    compilation happens. Nothing given is modified, and the function can be ``jax.vmap``-ed
    over a batch of initial params (or of seeds that make them): several curves, one program.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``; with ``model_state``,
        ``loss_fn(params, model_state, batch) -> (scalar, new_model_state)``. The divergence
        rule assumes positive losses (as every practical training loss).
      params: the initial parameters (a pytree).
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

    Returns:
      An :class:`LRRangeTestResult`.

    Raises:
      ValueError: ``min_lr >= max_lr``, rates out of range, ``num_steps < 2``, an unknown
        ``mode``, batches with inconsistent leading axes, a ``loss_fn`` that does not return
        a scalar.
      TypeError: ``loss_fn`` or ``optimizer`` not callable, or ``optimizer`` not returning a
        transformation.

    Example:
      >>> opt = lambda lr: lecopt.sgd(lr, momentum=0.9)
      >>> res = lecopt.lr_range_test(loss_fn, params, {"x": xb, "y": yb}, opt, max_lr=1.0)
      >>> res.suggestion, res.suggestions["valley"]
      >>> res.plot()
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
    return _sweep(
        params,
        model_state,
        batches,
        min_lr,
        max_lr,
        smoothing,
        diverge_factor,
        loss_fn=loss_fn,
        optimizer=optimizer,
        num_steps=int(num_steps),
        mode=mode,
        with_state=model_state is not None,
    )
