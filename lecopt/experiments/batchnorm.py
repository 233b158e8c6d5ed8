"""Batch Normalization on MNIST: speed, test error, smoothness, prediction (claims 14-17).

The lecture's final benchmark: the usual fully connected net (784-512-512-10, ReLU) with and
without BatchNorm before each hidden nonlinearity, trained by SGD with momentum 0.9, learning
rate 0.03 and weight decay 0.001. It reports that BatchNorm "accelerated learning" and "resulted
in a lower test error", that it makes the landscape "significantly more smooth" (Santurkar et
al. 2018: the loss changes at a smaller rate, the gradients change less), and that prediction
may use the running averages or the statistics of the whole training set.

Smoothness (claim 16) follows Santurkar et al.'s measurements. At a checkpoint ``theta`` with
the gradient ``g`` of the loss ``L`` on a fixed batch (training mode, so BatchNorm normalizes
with that batch's statistics), for step sizes ``eta`` in a range:

* loss landscape variation: ``max_eta L(theta - eta g) - min_eta L(theta - eta g)``
  (:func:`landscape_variation`);
* gradient predictiveness: ``max_eta ||grad L(theta - eta g) - g||``
  (:func:`gradient_predictiveness`); small means the gradient at ``theta`` predicts the
  gradient a step away well (a "beta-smoothness" proxy).

Both come from :func:`along_gradient` (one forward and backward pass per step size), which the
experiment itself runs at every checkpoint. The models are trained for the smoothness
measurements by a loop of their own that takes exactly :func:`lecopt.train.fit`'s steps (same
initialization, data order and update; the tests check the losses agree), because ``fit``
returns only the final state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lecopt.experiments import Claim, Context, Result

ID = "batchnorm"
TITLE = "Batch Normalization: speed, test error, smoothness and prediction"
CLAIM_IDS = ("batchnorm-speed", "batchnorm-test-error", "batchnorm-smoothness",
             "batchnorm-population-stats")
CLAIM_NUMBERS = (14, 15, 16, 17)

# The lecture's setting.
LEARNING_RATE = 0.03
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-3
BATCH_SIZE = 128

# Claim 14: mean training loss over the first SPEED_EPOCHS epochs (each epoch's loss is the
# mean over its minibatches) lower with BatchNorm; reproduced on a majority of seeds.
SPEED_EPOCHS = 3
# Claim 15: test error averaged over the last TEST_LAST epochs lower with BatchNorm; majority
# of seeds.
TEST_LAST = 3
# Claim 16: step sizes eta = alpha * ETA_FACTORS (Santurkar et al. used [0.05, 0.4] at a
# learning rate of 0.1, i.e. 0.5 to 4 times the learning rate); fixed batch of SMOOTH_BATCH
# training images. Per seed, the medians over the checkpoints of both measures must be lower
# with BatchNorm; reproduced on a majority of seeds.
ETA_FACTORS = np.linspace(0.5, 4.0, 8)
SMOOTH_BATCH = 256
# Claim 17: |test error with running averages - test error with whole-training-set statistics|
# at most POP_TOLERANCE (a fraction: 0.01 = 1 percentage point) on every seed.
POP_TOLERANCE = 0.01
POP_BATCH = 500

SETTINGS = {
    # smooth_epochs: epochs of the smoothness runs; smooth_every: steps between checkpoints.
    "full": {"features": (512, 512), "epochs": 20, "seeds": 3, "smooth_epochs": 4,
             "smooth_every": 4},
    "quick": {"features": (128, 128), "epochs": 8, "seeds": 3, "smooth_epochs": 2,
              "smooth_every": 4},
}


# ---------------------------------------------------------------------------------- metrics


def _step(params: Any, grad: Any, eta: jax.Array) -> Any:
    return jax.tree.map(lambda p, g: p - eta * g, params, grad)


def _tree_norm(tree: Any) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def along_gradient(loss_fn: Callable[[Any], jax.Array], params: Any, grad: Any,
                   etas: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The loss and the change of the gradient a step ``eta`` along ``-g``, for every ``eta``.

    Returns ``L(theta - eta g)`` and ``||grad L(theta - eta g) - g||`` (l2 norm over all
    leaves), both of shape ``etas.shape``; one forward and backward pass per step size.

    Args:
      loss_fn: ``params -> scalar loss`` (differentiable).
      params: the point ``theta`` (a pytree).
      grad: ``g``, a pytree like ``params``: the gradient of ``loss_fn`` at ``theta`` (it is
        both the direction of the steps and the reference of the gradient change).
      etas: 1-D array of step sizes.

    Returns:
      ``(losses, gradient_changes)``.
    """
    etas = jnp.asarray(etas)

    def at(e):
        loss, g_new = jax.value_and_grad(loss_fn)(_step(params, grad, e))
        return loss, _tree_norm(jax.tree.map(jnp.subtract, g_new, grad))

    return jax.vmap(at)(etas)


def spread(values: jax.Array) -> jax.Array:
    """``max - min`` of an array."""
    return jnp.max(values) - jnp.min(values)


def landscape_variation(loss_fn: Callable[[Any], jax.Array], params: Any, grad: Any,
                        etas: jax.Array) -> jax.Array:
    """Santurkar et al.'s loss-landscape variation along the gradient direction.

    ``max_eta L(theta - eta g) - min_eta L(theta - eta g)`` over the step sizes ``etas``: how
    much the loss changes over a range of steps (small: a smooth, predictable landscape).

    Args:
      loss_fn: ``params -> scalar loss``.
      params: the point ``theta``.
      grad: ``g``, the gradient of ``loss_fn`` at ``theta``.
      etas: 1-D array of step sizes.

    Returns:
      A scalar array (jit-able).

    Example:
      >>> f = lambda x: 0.5 * jnp.sum(x * x)        # L(x - eta x) = (1 - eta)^2 L(x)
      >>> landscape_variation(f, jnp.ones(2), jnp.ones(2), jnp.array([0.0, 0.5]))
      Array(0.75, dtype=float32)
    """
    return spread(along_gradient(loss_fn, params, grad, etas)[0])


def gradient_predictiveness(loss_fn: Callable[[Any], jax.Array], params: Any, grad: Any,
                            etas: jax.Array) -> jax.Array:
    """Santurkar et al.'s gradient predictiveness: ``max_eta ||grad L(theta - eta g) - g||``.

    Small values mean the gradient at ``theta`` stays a good prediction of the gradient a step
    away (a smooth landscape; a proxy of the local "beta-smoothness").

    Args:
      loss_fn: ``params -> scalar loss``.
      params: the point ``theta``.
      grad: ``g``, the gradient of ``loss_fn`` at ``theta``.
      etas: 1-D array of step sizes.

    Returns:
      A scalar array (jit-able).

    Example:
      >>> f = lambda x: 0.5 * jnp.sum(x * x)       # grad(x - eta x) - x = -eta x
      >>> gradient_predictiveness(f, jnp.ones(4), jnp.ones(4), jnp.array([0.5, 1.0]))
      Array(2., dtype=float32)
    """
    return jnp.max(along_gradient(loss_fn, params, grad, etas)[1])


def majority(flags: list[bool]) -> bool:
    """True when more than half of ``flags`` are true."""
    return sum(bool(f) for f in flags) > len(flags) / 2


# ---------------------------------------------------------------------------------- training


def _loss(model: Any, params: Any, batch_stats: Any, x: jax.Array, y: jax.Array
          ) -> tuple[jax.Array, Any]:
    """Mean cross-entropy in training mode (BatchNorm with the batch's own statistics)."""
    variables = {"params": params, "batch_stats": batch_stats} if batch_stats else \
        {"params": params}
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
    return loss.mean(), updates.get("batch_stats", batch_stats)


@functools.partial(jax.jit, static_argnums=0)
def _init(model: Any, tx: Any, key: jax.Array, x1: jax.Array) -> tuple[Any, Any, Any]:
    """(params, batch_stats, opt_state) initialized as :func:`lecopt.train.fit` does."""
    variables = model.init(key, x1, train=False)
    params = variables["params"]
    return params, variables.get("batch_stats", {}), tx.init(params)


@functools.partial(jax.jit, static_argnums=0)
def _train_segment(model: Any, tx: Any, params: Any, batch_stats: Any, opt_state: Any,
                   x: jax.Array, y: jax.Array, idx: jax.Array):
    """SGD steps on the minibatches ``idx`` (steps, batch), as :func:`lecopt.train.fit` takes."""

    def step(carry, i):
        p, bs, os = carry
        (loss, bs), g = jax.value_and_grad(_loss, argnums=1, has_aux=True)(
            model, p, bs, x[i], y[i])
        updates, os = tx.update(g, os, p)
        return (optax.apply_updates(p, updates), bs, os), loss

    (params, batch_stats, opt_state), losses = jax.lax.scan(
        step, (params, batch_stats, opt_state), idx)
    return params, batch_stats, opt_state, losses


@functools.partial(jax.jit, static_argnums=0)
def _measure(model: Any, params: Any, batch_stats: Any, x: jax.Array, y: jax.Array,
             etas: jax.Array):
    """(loss, ||g||, losses along -g, gradient changes) on the fixed batch (x, y)."""

    def loss_fn(p):
        return _loss(model, p, batch_stats, x, y)[0]

    loss, g = jax.value_and_grad(loss_fn)(params)
    losses, changes = along_gradient(loss_fn, params, g, etas)
    return loss, _tree_norm(g), losses, changes


def _smoothness_run(model: Any, tx: Any, ds: Any, seed: int, epochs: int, every: int,
                    etas: np.ndarray, fixed: tuple[jax.Array, jax.Array]) -> dict[str, Any]:
    """Trains ``model`` as fit does (same initialization and data order for ``seed``) and
    measures along the gradient on the fixed batch every ``every`` steps."""
    from lecopt import train  # noqa: PLC0415

    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train, jnp.int32)
    n = x.shape[0]
    # fit's documented key derivation (see lecopt.train.batch_order).
    init_key, _ = jax.random.split(jax.random.PRNGKey(seed))
    params, batch_stats, opt_state = _init(model, tx, init_key, x[:1])
    order = np.concatenate([train.batch_order(seed, e, n, BATCH_SIZE) for e in range(epochs)])
    n_seg = order.shape[0] // every
    etas_j = jnp.asarray(etas, jnp.float32)
    steps, loss0, gnorm, losses, changes, train_loss = [], [], [], [], [], []
    for k in range(n_seg + 1):
        l0, gn, la, gc = _measure(model, params, batch_stats, fixed[0], fixed[1], etas_j)
        steps.append(k * every)
        loss0.append(float(l0))
        gnorm.append(float(gn))
        losses.append(np.asarray(la, np.float64))
        changes.append(np.asarray(gc, np.float64))
        if k < n_seg:
            idx = jnp.asarray(order[k * every:(k + 1) * every])
            params, batch_stats, opt_state, tl = _train_segment(
                model, tx, params, batch_stats, opt_state, x, y, idx)
            train_loss.extend(np.asarray(tl, np.float64).tolist())
    losses_a, changes_a = np.stack(losses), np.stack(changes)
    return {"steps": np.asarray(steps), "loss": np.asarray(loss0), "grad_norm": np.asarray(gnorm),
            "losses": losses_a, "changes": changes_a,
            "variation": np.asarray([float(spread(v)) for v in losses_a]),
            "predictiveness": changes_a.max(1), "train_loss": np.asarray(train_loss)}


# ---------------------------------------------------------------------------------- figures

_COLORS = {False: "black", True: "tab:blue"}
_LABELS = {False: "without BatchNorm", True: "with BatchNorm"}
_KEYS = {False: "without_bn", True: "with_bn"}


def _band(ax: Any, curves: list[Any], color: str, label: str, style: str = "-",
          scale: float = 1.0) -> None:
    n = min(len(c) for c in curves)
    arr = scale * np.stack([np.asarray(c[:n], np.float64) for c in curves])
    ep = np.arange(1, n + 1)
    ax.plot(ep, arr.mean(0), style, color=color, lw=1.8, label=label)
    if arr.shape[0] > 1:
        ax.fill_between(ep, arr.min(0), arr.max(0), color=color, alpha=0.15, lw=0)


def _curves_figure(hist: dict[bool, list[Any]], features: tuple[int, ...], n_seeds: int):
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    fig, (ax_l, ax_e) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for bn in (False, True):
        c = _COLORS[bn]
        _band(ax_l, [h.train_loss for h in hist[bn]], c, f"{_LABELS[bn]}: train")
        _band(ax_l, [h.test_loss for h in hist[bn]], c, f"{_LABELS[bn]}: test", "--")
        _band(ax_e, [h.train_error for h in hist[bn]], c, f"{_LABELS[bn]}: train", scale=100)
        _band(ax_e, [h.test_error for h in hist[bn]], c, f"{_LABELS[bn]}: test", "--", scale=100)
    ax_l.set_yscale("log")
    ax_l.set_ylabel("cross-entropy loss (nats, log scale)")
    ax_l.set_title("Loss", fontsize=10)
    ax_e.set_ylabel("classification error (%)")
    ax_e.set_title("Error", fontsize=10)
    first_test = max(100 * np.mean([h.test_error[0] for h in hist[False]]), 5.0)
    ax_e.set_ylim(0, min(100.0, 1.5 * first_test))
    for ax in (ax_l, ax_e):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    arch = "-".join(str(f) for f in (784, *features, 10))
    fig.suptitle(f"{arch} MLP with and without BatchNorm, SGD (alpha = {LEARNING_RATE}, phi = "
                 f"{MOMENTUM}, weight decay {WEIGHT_DECAY}); train = mean over the epoch's "
                 f"minibatches; mean of {n_seeds} seeds, band: min-max", fontsize=10)
    return fig


def _smoothness_figure(sm: dict[bool, dict[str, Any]], etas: np.ndarray, seed: int):
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (ax_l, ax_g) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for bn in (False, True):
        r, c = sm[bn], _COLORS[bn]
        ax_l.fill_between(r["steps"], r["losses"].min(1), r["losses"].max(1), color=c,
                          alpha=0.3, lw=0, label=f"{_LABELS[bn]}: range over eta")
        ax_l.plot(r["steps"], r["loss"], "-", color=c, lw=1, label=f"{_LABELS[bn]}: L(theta)")
        ax_g.fill_between(r["steps"], r["changes"].min(1), r["changes"].max(1), color=c,
                          alpha=0.3, lw=0, label=f"{_LABELS[bn]}: range over eta")
    ax_l.set_yscale("log")
    ax_l.set_ylabel("loss L(theta - eta g) on a fixed batch (nats, log scale)")
    ax_l.set_title("Loss landscape along the gradient", fontsize=10)
    ax_g.set_yscale("log")
    ax_g.set_ylabel("||grad L(theta - eta g) - g||  (l2, log scale)")
    ax_g.set_title("Gradient predictiveness (change of the gradient)", fontsize=10)
    for ax in (ax_l, ax_g):
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"Smoothness along the gradient direction (Santurkar et al. 2018), seed {seed}"
                 f": eta from {etas[0]:.3g} to {etas[-1]:.3g} ({len(etas)} steps), "
                 f"BatchNorm in training mode", fontsize=10)
    return fig


# ---------------------------------------------------------------------------------- the run


def run(ctx: Context) -> Result:
    """Trains the MLP with and without BatchNorm on several seeds; claims 14-17."""
    from lecopt import nn, optimizers, train  # noqa: PLC0415

    cfg = SETTINGS["quick" if ctx.quick else "full"]
    epochs, features = cfg["epochs"], tuple(cfg["features"])
    seeds = [ctx.seed + i for i in range(cfg["seeds"])]
    ds = ctx.data()
    models = {bn: nn.MLP(features=features, num_classes=ds.num_classes, batch_norm=bn)
              for bn in (False, True)}

    def make_optimizer():
        return optimizers.sgd(LEARNING_RATE, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    runs = {bn: train.sweep(models[bn], make_optimizer, [{}], ds, epochs=epochs, seeds=seeds,
                            progress=ctx.progress, batch_size=BATCH_SIZE)
            for bn in (False, True)}
    hist = {bn: [r.history for r in runs[bn]] for bn in (False, True)}
    n = len(seeds)

    # Claim 14: early training loss.
    early = {bn: [float(np.mean(h.train_loss[:SPEED_EPOCHS])) for h in hist[bn]]
             for bn in (False, True)}
    ok14 = [b < a for a, b in zip(early[False], early[True])]
    claim14 = Claim(
        id="batchnorm-speed", number=14,
        statement="BatchNorm speeds up learning: lower training loss in the first epochs.",
        evidence=(f"mean training loss over epochs 1-{SPEED_EPOCHS} per seed: without BN "
                  + "/".join(f"{v:.4f}" for v in early[False]) + ", with BN "
                  + "/".join(f"{v:.4f}" for v in early[True])
                  + f" nats; lower with BN on {sum(ok14)}/{n} seeds."),
        threshold=(f"per seed, the mean of the per-epoch training loss (mean over the epoch's "
                   f"minibatches) over the first {SPEED_EPOCHS} epochs is lower with BatchNorm; "
                   "reproduced on a majority of seeds"),
        holds=majority(ok14), numbers={"early_train_loss": {_KEYS[k]: v for k, v in early.items()}},
        seeds={"run": n, "held": sum(ok14)})

    # Claim 15: test error at the end.
    final = {bn: [float(np.mean(h.test_error[-TEST_LAST:])) for h in hist[bn]]
             for bn in (False, True)}
    ok15 = [b < a for a, b in zip(final[False], final[True])]
    claim15 = Claim(
        id="batchnorm-test-error", number=15,
        statement="BatchNorm gives a lower test error.",
        evidence=(f"test error averaged over epochs {epochs - TEST_LAST + 1}-{epochs} per seed: "
                  "without BN " + "/".join(f"{100 * v:.2f}%" for v in final[False])
                  + ", with BN " + "/".join(f"{100 * v:.2f}%" for v in final[True])
                  + f"; lower with BN on {sum(ok15)}/{n} seeds."),
        threshold=(f"per seed, the test error averaged over the last {TEST_LAST} of {epochs} "
                   "epochs is lower with BatchNorm; reproduced on a majority of seeds"),
        holds=majority(ok15), numbers={"final_test_error": {_KEYS[k]: v for k, v in final.items()}},
        seeds={"run": n, "held": sum(ok15)})

    # Claim 16: smoothness along the gradient.
    etas = LEARNING_RATE * ETA_FACTORS
    tx = make_optimizer()
    sm: dict[int, dict[bool, dict[str, Any]]] = {}
    for seed in ctx.progress_bar(seeds, "smoothness (seeds)"):
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(ds.x_train.shape[0], SMOOTH_BATCH, replace=False))
        fixed = (jnp.asarray(ds.x_train[pick]), jnp.asarray(ds.y_train[pick], jnp.int32))
        sm[seed] = {bn: _smoothness_run(models[bn], tx, ds, seed, cfg["smooth_epochs"],
                                        cfg["smooth_every"], etas, fixed)
                    for bn in (False, True)}
    med = {seed: {bn: (float(np.median(sm[seed][bn]["variation"][1:])),
                       float(np.median(sm[seed][bn]["predictiveness"][1:])))
                  for bn in (False, True)} for seed in seeds}
    ok16 = [med[s][True][0] < med[s][False][0] and med[s][True][1] < med[s][False][1]
            for s in seeds]
    # Context, not part of the rule: the loss and the gradient themselves are smaller with BN,
    # so the same medians relative to L(theta) and to ||g|| are reported too.
    rel = {bn_: (float(np.median([np.median(sm[s][bn_]["variation"][1:] / sm[s][bn_]["loss"][1:])
                                  for s in seeds])),
                 float(np.median([np.median(sm[s][bn_]["predictiveness"][1:]
                                            / sm[s][bn_]["grad_norm"][1:]) for s in seeds])),
                 float(np.median([np.median(sm[s][bn_]["grad_norm"][1:]) for s in seeds])))
           for bn_ in (False, True)}
    checkpoints = len(sm[seeds[0]][False]["steps"]) - 1

    def per_seed(i: int, bn: bool) -> str:
        return "/".join(f"{med[s][bn][i]:.3g}" for s in seeds)

    claim16 = Claim(
        id="batchnorm-smoothness", number=16,
        statement="BatchNorm makes the loss landscape smoother: along the gradient the loss "
                  "varies less and the gradient changes less (Santurkar et al. 2018).",
        evidence=(f"median over {checkpoints} checkpoints (every {cfg['smooth_every']} steps, "
                  f"{cfg['smooth_epochs']} epochs) per seed: loss variation without BN "
                  f"{per_seed(0, False)}, with BN {per_seed(0, True)} nats; max gradient change "
                  f"without BN {per_seed(1, False)}, with BN {per_seed(1, True)}; both lower with"
                  f" BN on {sum(ok16)}/{n} seeds. For context (not in the rule; medians over "
                  f"seeds): gradient norm ||g|| without BN {rel[False][2]:.3g}, with BN "
                  f"{rel[True][2]:.3g}; variation / L(theta) without BN {rel[False][0]:.3g}, "
                  f"with BN {rel[True][0]:.3g}; gradient change / ||g|| without BN "
                  f"{rel[False][1]:.3g}, with BN {rel[True][1]:.3g}."),
        threshold=(f"per seed, on a fixed batch of {SMOOTH_BATCH} training images (BN in "
                   f"training mode), with eta = alpha x [{ETA_FACTORS[0]:g}..{ETA_FACTORS[-1]:g}]"
                   f" ({len(ETA_FACTORS)} values): the medians over the checkpoints after step 0 "
                   "of max-min L(theta - eta g) AND of max ||grad L(theta - eta g) - g|| are "
                   "both lower with BatchNorm; reproduced on a majority of seeds"),
        holds=majority(ok16),
        numbers={"medians": {str(s): {_KEYS[bn]: med[s][bn] for bn in (False, True)}
                             for s in seeds},
                 "medians_of_variation_over_loss, change_over_grad_norm, grad_norm": {
                     _KEYS[k]: v for k, v in rel.items()},
                 "etas": etas.tolist()},
        seeds={"run": n, "held": sum(ok16)})

    # Claim 17: running averages vs whole-training-set statistics.
    err_ra, err_pop = [], []
    for r in runs[True]:
        variables = r.state.variables
        err_ra.append(train.evaluate(models[True], variables, ds.x_test, ds.y_test).error)
        pop = nn.population_batch_stats(models[True], variables, ds.x_train,
                                        batch_size=POP_BATCH)
        err_pop.append(train.evaluate(models[True], pop, ds.x_test, ds.y_test).error)
    diffs = [abs(a - b) for a, b in zip(err_ra, err_pop)]
    ok17 = [d <= POP_TOLERANCE for d in diffs]
    claim17 = Claim(
        id="batchnorm-population-stats", number=17,
        statement="Predicting with the running averages or with the statistics of the entire "
                  "training set gives nearly the same test error.",
        evidence=("test error per seed with running averages "
                  + "/".join(f"{100 * v:.2f}%" for v in err_ra)
                  + ", with whole-training-set statistics "
                  + "/".join(f"{100 * v:.2f}%" for v in err_pop)
                  + f"; largest difference {100 * max(diffs):.2f} percentage points."),
        threshold=(f"|difference| <= {100 * POP_TOLERANCE:g} percentage point on every seed "
                   f"(BatchNorm running-average momentum 0.9, after {epochs} epochs)"),
        holds=all(ok17), numbers={"running_average": err_ra, "population": err_pop},
        seeds={"run": n, "held": sum(ok17)})

    fig_c = ctx.savefig(
        _curves_figure(hist, features, n), "batchnorm_curves",
        "Training (solid) and test (dashed) loss and error per epoch, with (blue) and without "
        "(black) BatchNorm before each hidden ReLU. With BatchNorm the training loss falls "
        "faster, and the test error ends lower.")
    fig_s = ctx.savefig(
        _smoothness_figure(sm[seeds[0]], etas, seeds[0]), "batchnorm_smoothness",
        "Left: range of the loss L(theta - eta g) over the step sizes eta at checkpoints during "
        "training; right: range of the change of the gradient ||grad L(theta - eta g) - g||. "
        "Narrower, lower bands mean a smoother landscape.")
    settings = {"features": features, "epochs": epochs, "seeds": seeds,
                "learning_rate": LEARNING_RATE, "momentum": MOMENTUM,
                "weight_decay": WEIGHT_DECAY, "batch_size": BATCH_SIZE,
                "smooth_epochs": cfg["smooth_epochs"], "smooth_every": cfg["smooth_every"],
                "etas": [round(float(e), 5) for e in etas], "data": ds.name}
    return Result(claims=[claim14, claim15, claim16, claim17], figures=[fig_c, fig_s],
                  settings=settings)
