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

Both come from :func:`along_gradient` (one forward and backward pass per step size), run at
every checkpoint of a :func:`lecopt.train.fit` run that hands out its state at those steps
(``callback_steps``), on :func:`lecopt.train.loss_function`, the loss ``fit`` minimises.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lecopt.experiments import ClaimSpec, Context, Figure, Measured, Result, Step, run_steps
from lecopt.experiments._common import band, majority, seed_tally

ID = "batchnorm"
TITLE = "Batch Normalization: speed, test error, smoothness and prediction"

SPEED = ClaimSpec(
    14, "batchnorm-speed",
    "BatchNorm speeds up learning: lower training loss in the first epochs.")
TEST_ERROR = ClaimSpec(15, "batchnorm-test-error", "BatchNorm gives a lower test error.")
SMOOTHNESS = ClaimSpec(
    16, "batchnorm-smoothness",
    "BatchNorm makes the loss landscape smoother: along the gradient the loss varies less and "
    "the gradient changes less (Santurkar et al. 2018).")
POPULATION_STATS = ClaimSpec(
    17, "batchnorm-population-stats",
    "Predicting with the running averages or with the statistics of the entire training set "
    "gives nearly the same test error.")
CLAIMS = (SPEED, TEST_ERROR, SMOOTHNESS, POPULATION_STATS)

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
        loss, g_new = jax.value_and_grad(loss_fn)(optax.tree_utils.tree_add_scale(params, -e,
                                                                                  grad))
        return loss, optax.tree_utils.tree_norm(optax.tree_utils.tree_sub(g_new, grad))

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


# ---------------------------------------------------------------------------------- training


@dataclasses.dataclass
class Runs:
    """The MLP trained with and without BatchNorm on every seed (one sweep per model).

    Attributes:
      models: ``{False: MLP, True: MLP with BatchNorm}``.
      runs: per model, the :class:`lecopt.train.SweepRun` of every seed (seed order).
      data: the data set.
      settings: the settings of the run (features, epochs, seeds, ...).
    """

    models: dict[bool, Any]
    runs: dict[bool, list[Any]]
    data: Any
    settings: dict[str, Any]

    @property
    def seeds(self) -> list[int]:
        return list(self.settings["seeds"])

    def histories(self, bn: bool) -> list[Any]:
        return [r.history for r in self.runs[bn]]


def _optimizer():
    from lecopt import optimizers

    return optimizers.sgd(LEARNING_RATE, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def train_with_and_without_batchnorm(ctx: Context) -> Runs:
    """The lecture's benchmark: both models, every seed, through :func:`lecopt.train.sweep`."""
    from lecopt import nn, train

    cfg = SETTINGS["quick" if ctx.quick else "full"]
    seeds = ctx.seeds(cfg["seeds"])
    ds = ctx.data()
    models = {bn: nn.MLP(features=tuple(cfg["features"]), num_classes=ds.num_classes,
                         batch_norm=bn) for bn in (False, True)}
    runs = {bn: train.sweep(models[bn], _optimizer, [{}], ds, epochs=cfg["epochs"],
                            seeds=seeds, progress=ctx.progress, batch_size=BATCH_SIZE)
            for bn in (False, True)}
    etas = LEARNING_RATE * ETA_FACTORS
    settings = {"features": tuple(cfg["features"]), "epochs": cfg["epochs"], "seeds": seeds,
                "learning_rate": LEARNING_RATE, "momentum": MOMENTUM,
                "weight_decay": WEIGHT_DECAY, "batch_size": BATCH_SIZE,
                "smooth_epochs": cfg["smooth_epochs"], "smooth_every": cfg["smooth_every"],
                "etas": [round(float(e), 5) for e in etas], "data": ds.name}
    return Runs(models=models, runs=runs, data=ds, settings=settings)


@functools.partial(jax.jit, static_argnums=0)
def _measure(model: Any, params: Any, batch_stats: Any, x: jax.Array, y: jax.Array,
             etas: jax.Array):
    """(loss, ||g||, losses along -g, gradient changes) on the fixed batch (x, y)."""
    from lecopt import train

    def loss_fn(p):
        return train.loss_function(model)(p, batch_stats, (x, y))[0]

    loss, g = jax.value_and_grad(loss_fn)(params)
    losses, changes = along_gradient(loss_fn, params, g, etas)
    return loss, optax.tree_utils.tree_norm(g), losses, changes


def smoothness_run(model: Any, ds: Any, seed: int, epochs: int, every: int, etas: np.ndarray,
                   fixed: tuple[jax.Array, jax.Array]) -> dict[str, Any]:
    """Trains ``model`` with :func:`lecopt.train.fit` for ``epochs`` and measures along the
    gradient on the fixed batch at steps ``0, every, 2 every, ...``.

    Returns the checkpoint steps, ``L(theta)``, ``||g||``, the losses and gradient changes
    over ``etas`` (one row per checkpoint), their variation and predictiveness, and the
    per-step training loss of the run.
    """
    from lecopt import train

    total = epochs * (len(ds.x_train) // BATCH_SIZE)
    steps = list(range(0, total + 1, every))
    etas_j = jnp.asarray(etas, jnp.float32)
    seen: dict[int, Any] = {}

    def observe(step: int, state: Any) -> None:
        seen[step] = _measure(model, state.params, state.batch_stats, *fixed, etas_j)

    _, history = train.fit(model, _optimizer(), (ds.x_train, ds.y_train), epochs=epochs,
                           batch_size=BATCH_SIZE, seed=seed, progress=False, callback=observe,
                           callback_steps=steps)
    loss, gnorm, losses, changes = (np.stack([np.asarray(seen[s][i], np.float64) for s in steps])
                                    for i in range(4))
    return {"steps": np.asarray(steps), "loss": loss, "grad_norm": gnorm, "losses": losses,
            "changes": changes, "variation": losses.max(1) - losses.min(1),
            "predictiveness": changes.max(1),
            "train_loss": np.asarray(history.step_loss, np.float64)}


# ---------------------------------------------------------------------------------- claims

_KEYS = {False: "without_bn", True: "with_bn"}


def training_speed(runs: Runs) -> Measured:
    """Claim 14: the mean training loss over the first epochs, with and without BatchNorm."""
    early = {bn: [float(np.mean(h.train_loss[:SPEED_EPOCHS])) for h in runs.histories(bn)]
             for bn in (False, True)}
    lower = [b < a for a, b in zip(early[False], early[True])]
    return Measured(
        evidence=(f"mean training loss over epochs 1-{SPEED_EPOCHS} per seed: without BN "
                  + "/".join(f"{v:.4f}" for v in early[False]) + ", with BN "
                  + "/".join(f"{v:.4f}" for v in early[True])
                  + f" nats; lower with BN on {sum(lower)}/{len(lower)} seeds."),
        threshold=(f"per seed, the mean of the per-epoch training loss (mean over the epoch's "
                   f"minibatches) over the first {SPEED_EPOCHS} epochs is lower with BatchNorm; "
                   "reproduced on a majority of seeds"),
        holds=majority(lower),
        numbers={"early_train_loss": {_KEYS[k]: v for k, v in early.items()}},
        seeds=seed_tally(lower),
        data=runs,
    )


def final_test_error(runs: Runs) -> Measured:
    """Claim 15: the test error over the last epochs, with and without BatchNorm."""
    epochs = runs.settings["epochs"]
    final = {bn: [float(np.mean(h.test_error[-TEST_LAST:])) for h in runs.histories(bn)]
             for bn in (False, True)}
    lower = [b < a for a, b in zip(final[False], final[True])]
    return Measured(
        evidence=(f"test error averaged over epochs {epochs - TEST_LAST + 1}-{epochs} per seed: "
                  "without BN " + "/".join(f"{100 * v:.2f}%" for v in final[False])
                  + ", with BN " + "/".join(f"{100 * v:.2f}%" for v in final[True])
                  + f"; lower with BN on {sum(lower)}/{len(lower)} seeds."),
        threshold=(f"per seed, the test error averaged over the last {TEST_LAST} of {epochs} "
                   "epochs is lower with BatchNorm; reproduced on a majority of seeds"),
        holds=majority(lower),
        numbers={"final_test_error": {_KEYS[k]: v for k, v in final.items()}},
        seeds=seed_tally(lower),
    )


def smoothness(runs: Runs) -> Measured:
    """Claim 16: loss variation and gradient predictiveness along the gradient, per seed."""
    ds, seeds, cfg = runs.data, runs.seeds, runs.settings
    etas = LEARNING_RATE * ETA_FACTORS
    sm: dict[int, dict[bool, dict[str, Any]]] = {}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(ds.x_train.shape[0], SMOOTH_BATCH, replace=False))
        fixed = (jnp.asarray(ds.x_train[pick]), jnp.asarray(ds.y_train[pick], jnp.int32))
        sm[seed] = {bn: smoothness_run(runs.models[bn], ds, seed, cfg["smooth_epochs"],
                                       cfg["smooth_every"], etas, fixed)
                    for bn in (False, True)}
    # Medians over the checkpoints after step 0, per seed: (variation, predictiveness).
    med = {s: {bn: (float(np.median(sm[s][bn]["variation"][1:])),
                    float(np.median(sm[s][bn]["predictiveness"][1:]))) for bn in (False, True)}
           for s in seeds}
    lower = [med[s][True][0] < med[s][False][0] and med[s][True][1] < med[s][False][1]
             for s in seeds]
    # Context, not part of the rule: the loss and the gradient themselves are smaller with BN,
    # so the same medians relative to L(theta) and to ||g|| are reported too.

    def median_over_seeds(bn: bool, ratio: Callable[[dict[str, Any]], np.ndarray]) -> float:
        return float(np.median([np.median(ratio(sm[s][bn])[1:]) for s in seeds]))

    rel = {bn: (median_over_seeds(bn, lambda r: r["variation"] / r["loss"]),
                median_over_seeds(bn, lambda r: r["predictiveness"] / r["grad_norm"]),
                median_over_seeds(bn, lambda r: r["grad_norm"]))
           for bn in (False, True)}
    checkpoints = len(sm[seeds[0]][False]["steps"]) - 1

    def per_seed(i: int, bn: bool) -> str:
        return "/".join(f"{med[s][bn][i]:.3g}" for s in seeds)

    return Measured(
        evidence=(f"median over {checkpoints} checkpoints (every {cfg['smooth_every']} steps, "
                  f"{cfg['smooth_epochs']} epochs) per seed: loss variation without BN "
                  f"{per_seed(0, False)}, with BN {per_seed(0, True)} nats; max gradient change "
                  f"without BN {per_seed(1, False)}, with BN {per_seed(1, True)}; both lower with"
                  f" BN on {sum(lower)}/{len(lower)} seeds. For context (not in the rule; "
                  f"medians over seeds): gradient norm ||g|| without BN {rel[False][2]:.3g}, with "
                  f"BN {rel[True][2]:.3g}; variation / L(theta) without BN {rel[False][0]:.3g}, "
                  f"with BN {rel[True][0]:.3g}; gradient change / ||g|| without BN "
                  f"{rel[False][1]:.3g}, with BN {rel[True][1]:.3g}."),
        threshold=(f"per seed, on a fixed batch of {SMOOTH_BATCH} training images (BN in "
                   f"training mode), with eta = alpha x [{ETA_FACTORS[0]:g}..{ETA_FACTORS[-1]:g}]"
                   f" ({len(ETA_FACTORS)} values): the medians over the checkpoints after step 0 "
                   "of max-min L(theta - eta g) AND of max ||grad L(theta - eta g) - g|| are "
                   "both lower with BatchNorm; reproduced on a majority of seeds"),
        holds=majority(lower),
        numbers={"medians": {str(s): {_KEYS[bn]: med[s][bn] for bn in (False, True)}
                             for s in seeds},
                 "medians_of_variation_over_loss, change_over_grad_norm, grad_norm": {
                     _KEYS[k]: v for k, v in rel.items()},
                 "etas": etas.tolist()},
        seeds=seed_tally(lower),
        data={"runs": sm[seeds[0]], "etas": etas, "seed": seeds[0]},
    )


def population_statistics(runs: Runs) -> Measured:
    """Claim 17: test error with the running averages against whole-training-set statistics."""
    from lecopt import nn, train

    model, ds = runs.models[True], runs.data
    err_ra, err_pop = [], []
    for r in runs.runs[True]:
        variables = r.state.variables
        err_ra.append(train.evaluate(model, variables, ds.x_test, ds.y_test).error)
        pop = nn.population_batch_stats(model, variables, ds.x_train, batch_size=POP_BATCH)
        err_pop.append(train.evaluate(model, pop, ds.x_test, ds.y_test).error)
    diffs = [abs(a - b) for a, b in zip(err_ra, err_pop)]
    close = [d <= POP_TOLERANCE for d in diffs]
    return Measured(
        evidence=("test error per seed with running averages "
                  + "/".join(f"{100 * v:.2f}%" for v in err_ra)
                  + ", with whole-training-set statistics "
                  + "/".join(f"{100 * v:.2f}%" for v in err_pop)
                  + f"; largest difference {100 * max(diffs):.2f} percentage points."),
        threshold=(f"|difference| <= {100 * POP_TOLERANCE:g} percentage point on every seed "
                   f"(BatchNorm running-average momentum 0.9, after {runs.settings['epochs']} "
                   "epochs)"),
        holds=all(close),
        numbers={"running_average": err_ra, "population": err_pop},
        seeds=seed_tally(close),
    )


# ---------------------------------------------------------------------------------- figures

_COLORS = {False: "black", True: "tab:blue"}
_LABELS = {False: "without BatchNorm", True: "with BatchNorm"}


def plot_learning_curves(runs: Runs) -> Figure:
    """Training and test loss and error per epoch, with and without BatchNorm."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    hist = {bn: runs.histories(bn) for bn in (False, True)}
    features, n_seeds = runs.settings["features"], len(runs.seeds)
    fig, (ax_l, ax_e) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for bn in (False, True):
        c = _COLORS[bn]
        band(ax_l, [h.train_loss for h in hist[bn]], c, f"{_LABELS[bn]}: train")
        band(ax_l, [h.test_loss for h in hist[bn]], c, f"{_LABELS[bn]}: test", "--")
        band(ax_e, [h.train_error for h in hist[bn]], c, f"{_LABELS[bn]}: train", scale=100)
        band(ax_e, [h.test_error for h in hist[bn]], c, f"{_LABELS[bn]}: test", "--", scale=100)
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
    return Figure.from_matplotlib(
        fig, "batchnorm_curves",
        "Training (solid) and test (dashed) loss and error per epoch, with (blue) and without "
        "(black) BatchNorm before each hidden ReLU. With BatchNorm the training loss falls "
        "faster, and the test error ends lower.")


def plot_smoothness(data: dict[str, Any]) -> Figure:
    """The ranges over eta of the loss and of the gradient change at every checkpoint."""
    import matplotlib.pyplot as plt

    sm, etas, seed = data["runs"], data["etas"], data["seed"]
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
    return Figure.from_matplotlib(
        fig, "batchnorm_smoothness",
        "Left: range of the loss L(theta - eta g) over the step sizes eta at checkpoints during "
        "training; right: range of the change of the gradient ||grad L(theta - eta g) - g||. "
        "Narrower, lower bands mean a smoother landscape.")


# ---------------------------------------------------------------------------------- the run


def run(ctx: Context) -> Result:
    """Claims 14-17, from the MLP trained with and without BatchNorm on several seeds."""
    runs = train_with_and_without_batchnorm(ctx)
    return run_steps(ctx, ID, [
        Step(functools.partial(training_speed, runs), SPEED, plot_learning_curves),
        Step(functools.partial(final_test_error, runs), TEST_ERROR),
        Step(functools.partial(smoothness, runs), SMOOTHNESS, plot_smoothness),
        Step(functools.partial(population_statistics, runs), POPULATION_STATS),
    ], settings=runs.settings)
