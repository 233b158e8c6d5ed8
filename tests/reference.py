"""The lecture's algorithm boxes written literally in float64 NumPy: the independent reference.

Each function runs the algorithm for ``num_steps`` steps on a dict of arrays, with a gradient
function ``grad(theta, t) -> dict`` that may depend on the params, and returns the list of
params after every step (index 0 = initial). No lecopt or JAX code is used here.

Complex params (complex128) follow optax's convention: ``grad`` returns the conjugate gradient,
squared gradients are ``|g|^2 = g * conj(g)`` (real), first moments and velocities are complex.
A hyperparameter given as a function is evaluated at the 0-based step k (``phi_t``, ``rho1_t``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Tree = dict[str, np.ndarray]
GradFn = Callable[[Tree, int], Tree]


def _copy(theta: Tree) -> Tree:
    return {k: np.array(v, dtype=np.result_type(v, np.float64)) for k, v in theta.items()}


def _abs2(g: np.ndarray) -> np.ndarray:
    return np.real(g * np.conj(g))


def _real_zeros(theta: Tree) -> Tree:
    return {k: np.zeros(np.shape(v)) for k, v in theta.items()}


def _at(value, k):
    return value(k) if callable(value) else value


def momentum(theta, grad: GradFn, alpha, phi, num_steps, weight_decay=0.0):
    """Algorithm 1. ``alpha`` and ``phi`` may be numbers or functions of the step k (0-based)."""
    theta = _copy(theta)
    nu = {k: np.zeros_like(v) for k, v in theta.items()}
    out = [_copy(theta)]
    for k in range(num_steps):
        a, p = _at(alpha, k), _at(phi, k)
        g = grad(theta, k)
        for n in theta:
            gn = g[n] + weight_decay * theta[n]
            nu[n] = p * nu[n] - a * gn            # line 6
            theta[n] = theta[n] + nu[n]           # line 7
        out.append(_copy(theta))
    return out


def nesterov(theta, grad: GradFn, alpha, phi, num_steps):
    """Algorithm 2: gradient at the interim point theta + phi nu."""
    theta = _copy(theta)
    nu = {k: np.zeros_like(v) for k, v in theta.items()}
    out = [_copy(theta)]
    for k in range(num_steps):
        a, p = _at(alpha, k), _at(phi, k)
        interim = {n: theta[n] + p * nu[n] for n in theta}     # line 5
        g = grad(interim, k)                                   # line 6
        for n in theta:
            nu[n] = p * nu[n] - a * g[n]                       # line 7
            theta[n] = theta[n] + nu[n]                        # line 8
        out.append(_copy(theta))
    return out


def adagrad(theta, grad: GradFn, alpha, beta, num_steps):
    """Algorithm 3."""
    theta = _copy(theta)
    r = _real_zeros(theta)
    out = [_copy(theta)]
    for k in range(num_steps):
        g = grad(theta, k)
        for n in theta:
            r[n] = r[n] + _abs2(g[n])                              # line 8
            theta[n] = theta[n] - alpha / (beta + np.sqrt(r[n])) * g[n]  # lines 9-10
        out.append(_copy(theta))
    return out


def rmsprop(theta, grad: GradFn, alpha, rho, beta, num_steps):
    """Algorithm 4."""
    theta = _copy(theta)
    r = _real_zeros(theta)
    out = [_copy(theta)]
    for k in range(num_steps):
        g = grad(theta, k)
        for n in theta:
            r[n] = rho * r[n] + (1 - rho) * _abs2(g[n])                 # line 8
            theta[n] = theta[n] - alpha / (beta + np.sqrt(r[n])) * g[n]  # lines 9-10
        out.append(_copy(theta))
    return out


def adam(theta, grad: GradFn, alpha, rho1, rho2, beta, num_steps):
    """Algorithm 5; a scheduled ``rho1`` enters the moment and its correction at step t."""
    theta = _copy(theta)
    s = {k: np.zeros_like(v) for k, v in theta.items()}
    r = _real_zeros(theta)
    out = [_copy(theta)]
    t = 0
    for _ in range(num_steps):
        t += 1                                                   # line 8
        g = grad(theta, t - 1)
        b1 = _at(rho1, t - 1)
        for n in theta:
            s[n] = b1 * s[n] + (1 - b1) * g[n]                   # line 11
            r[n] = rho2 * r[n] + (1 - rho2) * _abs2(g[n])        # line 12
            s_hat = s[n] / (1 - b1**t)                           # line 13
            r_hat = r[n] / (1 - rho2**t)                         # line 14
            theta[n] = theta[n] - alpha * s_hat / np.sqrt(r_hat + beta)  # lines 15-16
        out.append(_copy(theta))
    return out
