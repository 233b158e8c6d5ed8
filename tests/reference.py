"""The lecture's algorithm boxes written literally in float64 NumPy: the independent reference.

Each function runs the algorithm for ``num_steps`` steps on a dict of arrays, with a gradient
function ``grad(theta, t) -> dict`` that may depend on the params, and returns the list of
params after every step (index 0 = initial). No lecopt or JAX code is used here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Tree = dict[str, np.ndarray]
GradFn = Callable[[Tree, int], Tree]


def _copy(theta: Tree) -> Tree:
    return {k: np.array(v, dtype=np.float64) for k, v in theta.items()}


def momentum(theta, grad: GradFn, alpha, phi, num_steps, weight_decay=0.0):
    """Algorithm 1. ``alpha`` may be a number or a function of the step k (0-based)."""
    theta = _copy(theta)
    nu = {k: np.zeros_like(v) for k, v in theta.items()}
    out = [_copy(theta)]
    for k in range(num_steps):
        a = alpha(k) if callable(alpha) else alpha
        g = grad(theta, k)
        for n in theta:
            gn = g[n] + weight_decay * theta[n]
            nu[n] = phi * nu[n] - a * gn          # line 6
            theta[n] = theta[n] + nu[n]           # line 7
        out.append(_copy(theta))
    return out


def nesterov(theta, grad: GradFn, alpha, phi, num_steps):
    """Algorithm 2: gradient at the interim point theta + phi nu."""
    theta = _copy(theta)
    nu = {k: np.zeros_like(v) for k, v in theta.items()}
    out = [_copy(theta)]
    for k in range(num_steps):
        a = alpha(k) if callable(alpha) else alpha
        interim = {n: theta[n] + phi * nu[n] for n in theta}   # line 5
        g = grad(interim, k)                                   # line 6
        for n in theta:
            nu[n] = phi * nu[n] - a * g[n]                     # line 7
            theta[n] = theta[n] + nu[n]                        # line 8
        out.append(_copy(theta))
    return out


def adagrad(theta, grad: GradFn, alpha, beta, num_steps):
    """Algorithm 3."""
    theta = _copy(theta)
    r = {k: np.zeros_like(v) for k, v in theta.items()}
    out = [_copy(theta)]
    for k in range(num_steps):
        g = grad(theta, k)
        for n in theta:
            r[n] = r[n] + g[n] * g[n]                              # line 8
            theta[n] = theta[n] - alpha / (beta + np.sqrt(r[n])) * g[n]  # lines 9-10
        out.append(_copy(theta))
    return out


def rmsprop(theta, grad: GradFn, alpha, rho, beta, num_steps):
    """Algorithm 4."""
    theta = _copy(theta)
    r = {k: np.zeros_like(v) for k, v in theta.items()}
    out = [_copy(theta)]
    for k in range(num_steps):
        g = grad(theta, k)
        for n in theta:
            r[n] = rho * r[n] + (1 - rho) * g[n] * g[n]                 # line 8
            theta[n] = theta[n] - alpha / (beta + np.sqrt(r[n])) * g[n]  # lines 9-10
        out.append(_copy(theta))
    return out


def adam(theta, grad: GradFn, alpha, rho1, rho2, beta, num_steps):
    """Algorithm 5."""
    theta = _copy(theta)
    s = {k: np.zeros_like(v) for k, v in theta.items()}
    r = {k: np.zeros_like(v) for k, v in theta.items()}
    out = [_copy(theta)]
    t = 0
    for _ in range(num_steps):
        t += 1                                                   # line 8
        g = grad(theta, t - 1)
        for n in theta:
            s[n] = rho1 * s[n] + (1 - rho1) * g[n]               # line 11
            r[n] = rho2 * r[n] + (1 - rho2) * g[n] * g[n]        # line 12
            s_hat = s[n] / (1 - rho1**t)                         # line 13
            r_hat = r[n] / (1 - rho2**t)                         # line 14
            theta[n] = theta[n] - alpha * s_hat / np.sqrt(r_hat + beta)  # lines 15-16
        out.append(_copy(theta))
    return out
