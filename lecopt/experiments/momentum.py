"""Momentum and Nesterov momentum on toy problems (lecture: "Momentum", "Nesterov momentum").

Four claims, all deterministic (exact gradients, no data):

1. ``momentum-terminal-velocity``: under a constant gradient ``g`` the momentum step tends to
   ``alpha g / (1 - phi)`` (``phi = 0.9`` moves 10 times as fast as gradient descent).
2. ``momentum-ravine``: on a poorly conditioned quadratic momentum zig-zags less across the
   ravine and reaches a low loss in fewer iterations than gradient descent.
3. ``momentum-styblinski-tang``: from the lecture app's start, gradient descent settles in a local
   minimum of Styblinski-Tang while momentum reaches the global one.
6. ``nesterov-overshoot``: Nesterov momentum overshoots less and oscillates less than momentum
   (1-D: Algorithm 2 literally, with :func:`lecopt.optimizers.lookahead_params`; 2-D:
   ``sgd(nesterov=True)``).

The metric functions :func:`overshoot`, :func:`reversals` and :func:`iterations_to` are pure
NumPy and tested on inputs with known answers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lecopt import landscapes, optimizers
from lecopt.experiments import ClaimSpec, Context, Figure, Measured, Result, Step, run_steps
from lecopt.experiments._common import format_count

ID = "momentum"
TITLE = "Momentum and Nesterov momentum (toy problems)"

TERMINAL_VELOCITY = ClaimSpec(
    1, "momentum-terminal-velocity",
    "Under a constant gradient momentum's step tends to alpha g / (1 - phi): phi = 0.9 moves 10 "
    "times as fast as gradient descent.")
RAVINE = ClaimSpec(
    2, "momentum-ravine",
    "On a quadratic with a poorly conditioned Hessian momentum reduces the oscillation and "
    "accelerates convergence compared with gradient descent.")
STYBLINSKI_TANG = ClaimSpec(
    3, "momentum-styblinski-tang",
    "On Styblinski-Tang, SGD without momentum cannot escape the local minimum, while SGD with "
    "momentum escapes it and finds the global minimum.")
NESTEROV = ClaimSpec(
    6, "nesterov-overshoot",
    "Nesterov momentum evaluates the gradient at the look-ahead point, which reduces "
    "overshooting and leads to smaller oscillations than momentum.")
CLAIMS = (TERMINAL_VELOCITY, RAVINE, STYBLINSKI_TANG, NESTEROV)

# ---------------------------------------------------------------------------- thresholds
# Fixed before the runs.

# Claim 1: relative error of the last step to alpha g / (1 - phi), for every phi.
TERMINAL_REL_TOL = 1e-3
# Claim 1: |step(phi = 0.9) / step(GD) - 10| after the run.
TERMINAL_RATIO_TOL = 1e-3
# Claim 2: "low loss" for iterations_to.
RAVINE_LOSS_THRESHOLD = 1e-3
# Claim 3: an end point within this distance of a minimizer is "in" that minimum.
ST_RADIUS = 0.05
# Claim 6: a direction reversal counts only between steps longer than this (in units of the
# parameter): shorter wiggles are a converged iterate's noise, not an oscillation.
OSCILLATION_TOL = 1e-3

# ---------------------------------------------------------------------------- settings

TERMINAL_PHIS = (0.0, 0.5, 0.9, 0.99)
TERMINAL_ALPHA = 0.01
TERMINAL_GRADIENT = 1.0
# 0.99**1000 = 4e-5, below TERMINAL_REL_TOL: even phi = 0.99 has reached terminal velocity.
TERMINAL_STEPS = 1000

# Claim 2 runs longer than the plotted path so that gradient descent reaches the threshold too.
RAVINE_MEASURE_STEPS = 200

# Claim 6, 1-D: f(theta) = h theta^2 / 2 from theta0 = -1 with alpha h = 0.2 and phi = 0.9: the
# first three steps grow, the fourth overshoots the minimum (the lecture's Chandra figure).
NESTEROV_1D = {"curvature": 1.0, "theta0": -1.0, "learning_rate": 0.2, "momentum": 0.9,
               "num_steps": 100, "shown": 5}
# Claim 6, 2-D: the ravine (x1^2 + 20 x2^2) / 2 from (-9, 2) with phi = 0.9. The ravine's
# suggested rate 0.09 (alpha b = 1.8) lies outside Nesterov's stability region at phi = 0.9
# (alpha b < 2 (1 + phi) / (1 + 2 phi) = 1.36), so the 2-D example uses alpha = 0.03.
NESTEROV_2D = {"learning_rate": 0.03, "momentum": 0.9, "num_steps": 300}


# ---------------------------------------------------------------------------- metrics


def overshoot(path: Sequence[float] | np.ndarray, target: float) -> float:
    """How far a 1-D path goes past ``target`` in the direction it approached it from.

    The approach direction is ``sign(target - path[0])``; the overshoot is
    ``max(0, max_t (path[t] - target) * direction)``.

    Args:
      path: the iterates ``theta_0, theta_1, ...`` of one coordinate, shape (T,).
      target: the minimizer approached.

    Returns:
      The largest distance beyond ``target`` (0.0 when the path never passes it).

    Example:
      >>> overshoot([-1.0, -0.5, 0.3, -0.1, 0.0], 0.0)
      0.3
    """
    x = np.asarray(path, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"overshoot: path must be a non-empty 1-D sequence, got shape {x.shape}")
    direction = np.sign(float(target) - x[0])
    if direction == 0:
        raise ValueError(f"overshoot: path starts at target={target!r}; there is no approach "
                         "direction; start the path away from the target")
    return float(max(0.0, np.max((x - float(target)) * direction)))


def reversals(x: Sequence[float] | np.ndarray, tol: float = 0.0) -> int:
    """Number of direction reversals of a 1-D sequence: sign changes of successive differences.

    Differences with ``|x[t+1] - x[t]| <= tol`` (in particular zero steps) are dropped first,
    so resting points do not break or create a reversal.

    Args:
      x: the sequence, shape (T,).
      tol: steps up to this length are ignored (>= 0).

    Returns:
      The count of sign changes between consecutive (kept) differences.

    Example:
      >>> reversals([0, 1, 0, 1, 1, 2])  # up, down, up, (rest), up
      2
    """
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"reversals: x must be 1-D, got shape {a.shape}")
    if not tol >= 0:
        raise ValueError(f"reversals: tol={tol!r} must be >= 0")
    d = np.diff(a)
    d = d[np.abs(d) > tol]
    return int(np.sum(np.sign(d[1:]) != np.sign(d[:-1])))


def iterations_to(losses: Sequence[float] | np.ndarray, threshold: float) -> int | None:
    """The first iteration ``t`` with ``losses[t] < threshold`` (row 0 is the start).

    Args:
      losses: the loss at every iterate, shape (T,).
      threshold: the loss level.

    Returns:
      The index, or None when the losses never go below ``threshold``.

    Example:
      >>> iterations_to([4.0, 2.0, 0.5, 0.1], 1.0)
      2
    """
    a = np.asarray(losses, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"iterations_to: losses must be 1-D, got shape {a.shape}")
    below = np.flatnonzero(a < threshold)
    return int(below[0]) if below.size else None


# ---------------------------------------------------------------------------- runs


@functools.partial(jax.jit, static_argnames="num_steps")
def _constant_gradient_steps(tx: optax.GradientTransformation, g: jax.Array,
                             num_steps: int) -> jax.Array:
    """The updates ``theta_{t+1} - theta_t`` of ``tx`` fed the same gradient ``g`` every step."""
    theta = jnp.zeros_like(g)

    def step(state, _):
        updates, state = tx.update(g, state, theta)
        return state, updates

    _, steps = jax.lax.scan(step, tx.init(theta), None, length=num_steps)
    return steps


def _quadratic_1d(theta: jax.Array, curvature: float) -> jax.Array:
    return 0.5 * curvature * theta**2


@functools.partial(jax.jit, static_argnames=("num_steps", "nesterov"))
def _momentum_1d(tx: optax.GradientTransformation, theta0: jax.Array, curvature: jax.Array,
                 num_steps: int, nesterov: bool) -> tuple[jax.Array, jax.Array]:
    """Algorithm 1 (``nesterov=False``) or Algorithm 2 literally on ``h theta^2 / 2``.

    Returns the iterates ``theta_0..theta_T`` and the points where each gradient was taken
    (``theta_t`` for momentum, the look-ahead ``theta_t + phi nu_t`` for Nesterov).
    """
    grad = jax.grad(_quadratic_1d)

    def step(carry, _):
        theta, state = carry
        at = optimizers.lookahead_params(theta, state) if nesterov else theta
        updates, state = tx.update(grad(at, curvature), state, theta)
        theta = optax.apply_updates(theta, updates)
        return (theta, state), (theta, at)

    (_, _), (thetas, points) = jax.lax.scan(step, (theta0, tx.init(theta0)), None,
                                           length=num_steps)
    return jnp.concatenate([theta0[None], thetas]), points


def _losses(fn: Callable, path: Any) -> np.ndarray:
    return np.asarray(jax.vmap(fn)(jnp.asarray(path)))


def _lt(a: int | None, b: int | None) -> bool:
    """``a < b`` where None means "never" (infinitely many iterations)."""
    return a is not None and (b is None or a < b)


# ---------------------------------------------------------------------------- claims


def terminal_velocity() -> Measured:
    """Claim 1: the step under a constant gradient against alpha g / (1 - phi)."""
    alpha, g = TERMINAL_ALPHA, TERMINAL_GRADIENT
    grad = jnp.full((1,), g, jnp.float32)
    steps, rel_final, rel_curve = {}, {}, {}
    t = np.arange(1, TERMINAL_STEPS + 1)
    for phi in TERMINAL_PHIS:
        # An array phi (even 0.0) keeps the velocity state: one compiled program for all phis.
        tx = optimizers.sgd(jnp.float32(alpha), momentum=jnp.float32(phi))
        s = -np.asarray(_constant_gradient_steps(tx, grad, TERMINAL_STEPS))[:, 0]
        limit = alpha * g / (1 - phi)
        steps[phi] = s
        rel_final[phi] = float(abs(s[-1] - limit) / limit)
        closed = alpha * g * (1 - phi**t) / (1 - phi)  # the lecture's partial geometric sum
        rel_curve[phi] = float(np.max(np.abs(s - closed) / closed))
    ratio = float(steps[0.9][-1] / steps[0.0][-1])
    holds = (max(rel_final.values()) < TERMINAL_REL_TOL
             and abs(ratio - 10.0) < TERMINAL_RATIO_TOL)
    parts = ", ".join(f"phi={p:g}: {steps[p][-1]:.6g} (limit {alpha * g / (1 - p):.6g}, "
                      f"rel. err. {rel_final[p]:.1e})" for p in TERMINAL_PHIS)
    return Measured(
        evidence=(f"alpha={alpha:g}, g={g:g}, step after {TERMINAL_STEPS} steps: {parts}; "
                  f"phi=0.9 step is {ratio:.6f} x GD's (closed form 10); largest deviation "
                  f"from alpha g (1 - phi^t)/(1 - phi) over all t: "
                  f"{max(rel_curve.values()):.1e} (relative)."),
        threshold=(f"relative error of the step after {TERMINAL_STEPS} steps to "
                   f"alpha g/(1 - phi) < {TERMINAL_REL_TOL:g} for every phi in "
                   f"{TERMINAL_PHIS}, and |step(0.9)/step(GD) - 10| < {TERMINAL_RATIO_TOL:g}"),
        holds=bool(holds),
        numbers={"final_step": {str(p): float(steps[p][-1]) for p in TERMINAL_PHIS},
                 "relative_error": {str(p): rel_final[p] for p in TERMINAL_PHIS},
                 "max_relative_error_closed_form_curve": {str(p): rel_curve[p]
                                                          for p in TERMINAL_PHIS},
                 "ratio_phi_0.9_to_gd": ratio},
        data={"steps": steps},
    )


def ravine() -> Measured:
    """Claim 2: gradient descent and momentum on the poorly conditioned quadratic."""
    rec = landscapes.LANDSCAPES["quadratic"]
    s = rec.suggested
    alpha, phi, shown = s["learning_rate"], s["momentum"], s["num_steps"]
    paths, stats = {}, {}
    for name, tx in (("gradient descent", optimizers.sgd(alpha)),
                     ("momentum", optimizers.sgd(alpha, momentum=phi))):
        p = np.asarray(landscapes.trajectory(tx, rec.fn, s["x0"], RAVINE_MEASURE_STEPS))
        losses = _losses(rec.fn, p)
        paths[name] = p
        stats[name] = {
            "iterations_to_threshold": iterations_to(losses, RAVINE_LOSS_THRESHOLD),
            "reversals_x2": reversals(p[: shown + 1, 1]),
            "distance_across_ravine": float(np.abs(np.diff(p[: shown + 1, 1])).sum()),
            f"loss_after_{shown}": float(losses[shown]),
        }
    gd, mom = stats["gradient descent"], stats["momentum"]
    holds = (_lt(mom["iterations_to_threshold"], gd["iterations_to_threshold"])
             and mom["reversals_x2"] < gd["reversals_x2"])
    return Measured(
        evidence=(f"f = {rec.formula} (condition number 20) from {tuple(s['x0'])}, alpha="
                  f"{alpha:g}: iterations to f < {RAVINE_LOSS_THRESHOLD:g}: GD "
                  f"{format_count(gd['iterations_to_threshold'])}, momentum (phi={phi:g}) "
                  f"{format_count(mom['iterations_to_threshold'])}; direction reversals of the "
                  f"steep coordinate x2 in the first {shown} steps: GD {gd['reversals_x2']}, "
                  f"momentum {mom['reversals_x2']} (distance travelled across the ravine "
                  f"{gd['distance_across_ravine']:.2f} vs {mom['distance_across_ravine']:.2f})."),
        threshold=("momentum needs fewer iterations than GD to reach f < "
                   f"{RAVINE_LOSS_THRESHOLD:g} (runs of {RAVINE_MEASURE_STEPS} steps) and "
                   f"reverses x2 fewer times in the first {shown} steps"),
        holds=bool(holds),
        numbers=stats,
        data={"paths": {k: v[: shown + 1] for k, v in paths.items()}, "record": rec},
    )


def styblinski_tang() -> Measured:
    """Claim 3: where gradient descent and momentum end on Styblinski-Tang."""
    rec = landscapes.LANDSCAPES["styblinski_tang"]
    s = rec.suggested
    alpha, phi, n = s["learning_rate"], s["momentum"], s["num_steps"]
    gd = np.asarray(landscapes.trajectory(optimizers.sgd(alpha), rec.fn, s["x0"], n))
    mom = np.asarray(landscapes.trajectory(optimizers.sgd(alpha, momentum=phi), rec.fn,
                                           s["x0"], n))
    glob = np.asarray(rec.minimizers[0])
    local = np.asarray(rec.local_minimizers)

    def nearest_local(x: np.ndarray) -> tuple[float, tuple[float, ...]]:
        d = np.linalg.norm(local - x, axis=1)
        return float(d.min()), tuple(float(v) for v in local[d.argmin()])

    gd_local_d, gd_local = nearest_local(gd[-1])
    gd_global_d = float(np.linalg.norm(gd[-1] - glob))
    mom_global_d = float(np.linalg.norm(mom[-1] - glob))
    f_gd, f_mom = float(rec.fn(jnp.asarray(gd[-1]))), float(rec.fn(jnp.asarray(mom[-1])))
    holds = gd_local_d < ST_RADIUS and gd_global_d > ST_RADIUS and mom_global_d < ST_RADIUS
    return Measured(
        evidence=(f"from {tuple(s['x0'])}, alpha={alpha:g}, {n} steps: GD ends at "
                  f"({gd[-1, 0]:.4f}, {gd[-1, 1]:.4f}), f={f_gd:.3f}, {gd_local_d:.1e} from the "
                  f"local minimum ({gd_local[0]:.4f}, {gd_local[1]:.4f}); momentum phi={phi:g} "
                  f"ends at ({mom[-1, 0]:.4f}, {mom[-1, 1]:.4f}), f={f_mom:.3f}, "
                  f"{mom_global_d:.1e} from the global minimum (f*={rec.minimum:.3f})."),
        threshold=(f"GD's end point within {ST_RADIUS:g} of a non-global local minimum, and "
                   f"momentum's end point within {ST_RADIUS:g} of the global minimum"),
        holds=bool(holds),
        numbers={"gd_end": gd[-1].tolist(), "momentum_end": mom[-1].tolist(),
                 "gd_distance_to_local": gd_local_d, "gd_distance_to_global": gd_global_d,
                 "momentum_distance_to_global": mom_global_d, "gd_f": f_gd,
                 "momentum_f": f_mom},
        data={"gd": gd, "momentum": mom, "record": rec},
    )


def nesterov_overshoot() -> Measured:
    """Claim 6: overshoot and reversals of momentum and Nesterov, in 1-D and 2-D."""
    c = NESTEROV_1D
    tx = optimizers.sgd(c["learning_rate"], momentum=c["momentum"])
    theta0 = jnp.asarray(c["theta0"], jnp.float32)
    h = jnp.asarray(c["curvature"], jnp.float32)
    one_d = {}
    for name, nesterov in (("momentum", False), ("Nesterov", True)):
        thetas, points = _momentum_1d(tx, theta0, h, c["num_steps"], nesterov)
        thetas, points = np.asarray(thetas), np.asarray(points)
        one_d[name] = {"thetas": thetas, "points": points,
                       "overshoot": overshoot(thetas, 0.0),
                       "reversals": reversals(thetas, OSCILLATION_TOL),
                       "first_overshoot_step": iterations_to(thetas * np.sign(c["theta0"]),
                                                             0.0)}

    rec = landscapes.LANDSCAPES["quadratic"]
    x0 = rec.suggested["x0"]
    d = NESTEROV_2D
    two_d = {}
    for name, nesterov in (("momentum", False), ("Nesterov", True)):
        opt = optimizers.sgd(d["learning_rate"], momentum=d["momentum"], nesterov=nesterov)
        p = np.asarray(landscapes.trajectory(opt, rec.fn, x0, d["num_steps"]))
        two_d[name] = {"path": p,
                       "overshoot_x1": overshoot(p[:, 0], 0.0),
                       "overshoot_x2": overshoot(p[:, 1], 0.0),
                       "reversals_x1": reversals(p[:, 0], OSCILLATION_TOL),
                       "reversals_x2": reversals(p[:, 1], OSCILLATION_TOL)}

    m1, n1 = one_d["momentum"], one_d["Nesterov"]
    m2, n2 = two_d["momentum"], two_d["Nesterov"]
    holds = (n1["overshoot"] < m1["overshoot"] and n1["reversals"] < m1["reversals"]
             and n2["overshoot_x1"] < m2["overshoot_x1"]
             and n2["overshoot_x2"] < m2["overshoot_x2"]
             and n2["reversals_x1"] + n2["reversals_x2"] < m2["reversals_x1"] + m2["reversals_x2"])
    k = 4  # the lecture's "update 4"
    step4_m = float(m1["thetas"][k] - m1["thetas"][k - 1])
    step4_n = float(n1["thetas"][k] - n1["thetas"][k - 1])
    return Measured(
        evidence=(f"1-D f = {c['curvature']:g} theta^2/2 from theta0={c['theta0']:g}, alpha="
                  f"{c['learning_rate']:g}, phi={c['momentum']:g} (Algorithm 2 via "
                  f"lookahead_params): overshoot momentum {m1['overshoot']:.3f} vs Nesterov "
                  f"{n1['overshoot']:.3f}, reversals {m1['reversals']} vs {n1['reversals']} in "
                  f"{c['num_steps']} steps, update 4: {step4_m:.3f} vs {step4_n:.3f}; 2-D ravine "
                  f"from {tuple(x0)}, alpha={d['learning_rate']:g}, phi={d['momentum']:g} "
                  f"(sgd(nesterov=True)): overshoot x1 {m2['overshoot_x1']:.3f} vs "
                  f"{n2['overshoot_x1']:.3f}, x2 {m2['overshoot_x2']:.3f} vs "
                  f"{n2['overshoot_x2']:.3f}, reversals x1+x2 "
                  f"{m2['reversals_x1'] + m2['reversals_x2']} vs "
                  f"{n2['reversals_x1'] + n2['reversals_x2']} in {d['num_steps']} steps."),
        threshold=("Nesterov's overshoot smaller than momentum's in 1-D and in both coordinates "
                   "in 2-D, and fewer direction reversals (steps longer than "
                   f"{OSCILLATION_TOL:g}) in 1-D and in 2-D (x1 + x2)"),
        holds=bool(holds),
        numbers={
            "1d": {k2: {q: v for q, v in r.items() if q not in ("thetas", "points")}
                   for k2, r in one_d.items()},
            "1d_update4": {"momentum": step4_m, "Nesterov": step4_n},
            "2d": {k2: {q: v for q, v in r.items() if q != "path"} for k2, r in two_d.items()},
        },
        data={"one_d": one_d, "two_d": two_d, "record": rec},
    )


# ---------------------------------------------------------------------------- figures


def plot_terminal_velocity(data: dict[str, Any]) -> Figure:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(TERMINAL_PHIS)))
    for phi, col in zip(TERMINAL_PHIS, colors):
        s = data["steps"][phi]
        label = "gradient descent (phi = 0)" if phi == 0 else f"momentum phi = {phi:g}"
        ax.plot(np.arange(1, s.size + 1), s, color=col, lw=2, label=label)
        ax.axhline(TERMINAL_ALPHA * TERMINAL_GRADIENT / (1 - phi), color=col, ls="--", lw=1)
    ax.plot([], [], "k--", lw=1, label="terminal velocity alpha g / (1 - phi)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("iteration t")
    ax.set_ylabel("step size |theta[t] - theta[t-1]| (parameter units)")
    ax.set_title(f"Momentum under a constant gradient (alpha = {TERMINAL_ALPHA:g}, "
                 f"g = {TERMINAL_GRADIENT:g})")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return Figure.from_matplotlib(fig, "terminal_velocity",
                       "Step size of momentum fed the same gradient at every iteration: each "
                       "curve climbs to its dashed line alpha g/(1 - phi); phi = 0.9 ends 10x "
                       "and phi = 0.99 100x above gradient descent.")


def plot_ravine(data: dict[str, Any]) -> Figure:
    import matplotlib.pyplot as plt

    rec = data["record"]
    fig, ax = plt.subplots(figsize=(8, 4))
    levels = np.geomspace(0.05, 120, 14)
    landscapes.contour(rec.fn, ax, levels=levels, filled=False, mark_minima=False,
                       title="")
    for name, col in (("gradient descent", "black"), ("momentum", "red")):
        p = data["paths"][name]
        ax.plot(p[:, 0], p[:, 1], "o-", color=col, ms=3, lw=1.3, label=name)
    ax.plot(0, 0, "k*", ms=10, label="minimum")
    s = rec.suggested
    ax.set_title(f"Ravine f = {rec.formula}: {s['num_steps']} steps, alpha = "
                 f"{s['learning_rate']:g}, momentum phi = {s['momentum']:g}")
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.legend(loc="upper right", fontsize=8)
    return Figure.from_matplotlib(fig, "ravine",
                       "Poorly conditioned quadratic: gradient descent (black) zig-zags across "
                       "the steep x2 direction and creeps along x1; momentum (red) damps the "
                       "zig-zag and reaches the minimum far sooner.")


def plot_styblinski_tang(data: dict[str, Any]) -> Figure:
    import matplotlib.pyplot as plt

    rec = data["record"]
    s = rec.suggested
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    landscapes.contour(rec.fn, ax, levels=25, mark_minima=False, title="")
    # Red on top: its short path to the local minimum runs under the start of the blue one.
    for p, col, label, z in ((data["gd"], "red", "SGD without momentum", 4),
                             (data["momentum"], "blue", f"SGD with momentum {s['momentum']:g}",
                              3)):
        ax.plot(p[:, 0], p[:, 1], "o-", color=col, ms=3, lw=1.2, label=label, zorder=z)
    g = rec.minimizers[0]
    ax.plot([g[0]], [g[1]], "o", color="black", ms=9, label="global optimum", zorder=6)
    ax.plot([s["x0"][0]], [s["x0"][1]], "s", color="white", mec="black", ms=7, label="start")
    ax.set_title(f"Styblinski-Tang: lr {s['learning_rate']:g}, {s['num_steps']} steps")
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.legend(loc="lower right", fontsize=8)
    return Figure.from_matplotlib(fig, "styblinski_tang",
                       "Styblinski-Tang from (4.6, 4.4): without momentum (red) SGD settles in "
                       "the nearby local minimum; with momentum (blue) it carries over the ridge "
                       "and reaches the global optimum (black dot).")


def plot_nesterov(data: dict[str, Any]) -> Figure:
    import matplotlib.pyplot as plt

    c = NESTEROV_1D
    one_d, two_d = data["one_d"], data["two_d"]
    k = c["shown"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    grid = np.linspace(-1.15, 0.6, 200)
    f = 0.5 * c["curvature"] * grid**2
    for ax, name in zip(axes[0], ("momentum", "Nesterov")):
        th = one_d[name]["thetas"][: k + 1]
        pts = one_d[name]["points"][:k]
        fth = 0.5 * c["curvature"] * th**2
        ax.plot(grid, f, color="0.4", lw=1.5, label="loss f(theta)")
        ax.plot(th, fth, "o", color="C0", ms=6, label=f"theta[0..{k}]", zorder=4)
        for i in range(k):
            ax.annotate("", xy=(th[i + 1], fth[i + 1]), xytext=(th[i], fth[i]),
                        arrowprops={"arrowstyle": "->", "color": "C0", "lw": 1.5})
            ax.annotate(str(i + 1), xy=((th[i] + th[i + 1]) / 2, (fth[i] + fth[i + 1]) / 2),
                        xytext=(0, 6), textcoords="offset points", fontsize=8, color="C0")
        if name == "Nesterov":
            fp = 0.5 * c["curvature"] * pts**2
            ax.plot(pts[1:], fp[1:], "x", color="C3", ms=8, mew=2,
                    label="look-ahead theta + phi nu", zorder=5)
            for i in range(1, k):
                ax.annotate("", xy=(pts[i], fp[i]), xytext=(th[i], fth[i]),
                            arrowprops={"arrowstyle": "->", "color": "C3", "lw": 1,
                                        "ls": "--"})
        ax.axvline(0.0, color="k", lw=0.8, ls=":")
        ax.set_title(f"{'GD with momentum' if name == 'momentum' else 'GD with Nesterov momentum'}"
                     f": overshoot {one_d[name]['overshoot']:.3f}")
        ax.set_xlabel("theta (parameter)")
        ax.set_ylabel("loss f(theta)")
        ax.legend(loc="upper right", fontsize=8)

    ax = axes[1, 0]
    for name, col in (("momentum", "C0"), ("Nesterov", "C3")):
        th = one_d[name]["thetas"][:60]
        ax.plot(np.arange(th.size), th, "o-", ms=2.5, color=col,
                label=f"{name}: overshoot {one_d[name]['overshoot']:.3f}, "
                      f"{one_d[name]['reversals']} reversals")
    ax.axhline(0.0, color="k", lw=0.8, ls=":", label="minimum")
    ax.set_xlabel("iteration")
    ax.set_ylabel("theta (parameter)")
    ax.set_title(f"1-D: f = theta^2/2, alpha = {c['learning_rate']:g}, phi = "
                 f"{c['momentum']:g}")
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    rec = data["record"]
    landscapes.contour(rec.fn, ax, levels=np.geomspace(0.05, 120, 14), filled=False,
                       mark_minima=False, title="")
    for name, col in (("momentum", "C0"), ("Nesterov", "C3")):
        p = two_d[name]["path"][:120]
        r = two_d[name]
        ax.plot(p[:, 0], p[:, 1], "o-", ms=2, lw=1, color=col,
                label=f"{name}: overshoot x1 {r['overshoot_x1']:.2f}, x2 "
                      f"{r['overshoot_x2']:.2f}")
    ax.plot(0, 0, "k*", ms=10)
    d = NESTEROV_2D
    ax.set_title(f"2-D ravine: alpha = {d['learning_rate']:g}, phi = {d['momentum']:g}")
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Momentum vs. Nesterov momentum: the look-ahead reduces the overshoot")
    fig.tight_layout()
    return Figure.from_matplotlib(fig, "nesterov",
                       "Top: the first updates on a 1-D loss; momentum's 4th update overshoots "
                       "the minimum far, Nesterov's gradient at the look-ahead point (red x) "
                       "shortens it. Bottom: measured iterates in 1-D and on the 2-D ravine: "
                       "Nesterov overshoots less and oscillates less.")


# ---------------------------------------------------------------------------- run


def run(ctx: Context) -> Result:
    """Claims 1, 2, 3 and 6 with their figures (the same settings in quick mode)."""
    return run_steps(ctx, ID, [
        Step(terminal_velocity, TERMINAL_VELOCITY, plot_terminal_velocity),
        Step(ravine, RAVINE, plot_ravine),
        Step(styblinski_tang, STYBLINSKI_TANG, plot_styblinski_tang),
        Step(nesterov_overshoot, NESTEROV, plot_nesterov),
    ], settings=_settings())


def _settings() -> dict[str, Any]:
    def suggested(name: str) -> dict[str, Any]:
        return {k: v for k, v in landscapes.LANDSCAPES[name].suggested.items() if k != "note"}

    return {
        "terminal_velocity": {"alpha": TERMINAL_ALPHA, "g": TERMINAL_GRADIENT,
                              "phis": list(TERMINAL_PHIS), "steps": TERMINAL_STEPS},
        "ravine": {**suggested("quadratic"), "measure_steps": RAVINE_MEASURE_STEPS},
        "styblinski_tang": suggested("styblinski_tang"),
        "nesterov_1d": dict(NESTEROV_1D),
        "nesterov_2d": dict(NESTEROV_2D),
    }
