"""Ground truth for a suggested learning rate: train at a grid of constant rates.

The range test (:mod:`lecopt.lr_finder`, core) suggests a rate from one sweep; these functions
train the model at constant rates through one compiled :func:`lecopt.train.sweep` and score
each rate by the loss it trains to, so a suggestion's regret (its loss over the grid-best) is
measured rather than assumed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lecopt.train.evaluation import evaluate
from lecopt.train.sweeping import sweep

__all__ = ["GridSearchResult", "grid_search", "train_at_rates", "validate_suggestions"]



@dataclasses.dataclass
class GridSearchResult:
    """What :func:`grid_search` measured, and how (so that :func:`validate_suggestions` can
    train more rates the same way).

    Attributes:
      rates: the constant rates, ascending, shape ``(R,)``.
      final_loss: per rate, the mean cross-entropy (nats) of the whole training set in
        prediction mode after training; ``+inf`` where the run diverged.
      test_error: per rate, the test error after training (NaN without test data or when
        diverged).
      best_rate, best_loss: the rate of the lowest ``final_loss`` and that loss.
      epochs, batch_size, seed: the training budget and run.
      model, optimizer_factory, data: what was trained (not part of equality).
    """

    rates: np.ndarray
    final_loss: np.ndarray
    test_error: np.ndarray
    best_rate: float
    best_loss: float
    epochs: int
    batch_size: int
    seed: int
    model: Any = dataclasses.field(repr=False, compare=False, default=None)
    optimizer_factory: Any = dataclasses.field(repr=False, compare=False, default=None)
    data: Any = dataclasses.field(repr=False, compare=False, default=None)
    strategy: str = dataclasses.field(repr=False, compare=False, default="auto")


def _train_set(data: Any) -> tuple[Any, Any]:
    if isinstance(data, tuple | list):
        return data[0], data[1]
    if isinstance(data, Mapping):
        return data["x_train"], data["y_train"]
    return data.x_train, data.y_train


def train_at_rates(model: Any, optimizer_factory: Callable[[Any], Any], data: Any,
                   rates: Sequence[float], *, epochs: int, batch_size: int = 128, seed: int = 0,
                   strategy: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Final training loss (whole set, prediction mode; +inf if diverged) and test error
    after ``epochs`` at each constant rate, all through one :func:`lecopt.train.sweep`."""
    rates = [float(r) for r in rates]
    runs = sweep(model, lambda learning_rate: optimizer_factory(learning_rate),
                       {"learning_rate": rates}, data, epochs=epochs, seeds=[seed],
                       strategy=strategy, batch_size=batch_size, progress=False,
                       on_nonfinite="stop")
    x, y = _train_set(data)
    final = np.full(len(rates), np.inf)
    test_error = np.full(len(rates), np.nan)
    for i, run in enumerate(runs):
        if run.history.stopped is not None:
            continue
        loss = evaluate(model, run.state.variables, x, y).loss
        final[i] = loss if math.isfinite(loss) else math.inf
        if run.history.test_error and math.isfinite(final[i]):
            test_error[i] = run.history.test_error[-1]
    return final, test_error


def grid_search(model: Any, optimizer_factory: Callable[[Any], Any], data: Any, *,
                rates: Sequence[float], epochs: int, batch_size: int = 128, seed: int = 0,
                strategy: str = "auto") -> GridSearchResult:
    """Trains ``model`` at every constant rate of ``rates`` for ``epochs``: the ground truth
    a suggested rate is judged by.

    All rates go through one :func:`lecopt.train.sweep` (one compiled program), from the same
    initialisation and in the same minibatch order (``seed``), so each run equals
    ``train.fit(model, optimizer_factory(rate), data, epochs=epochs, batch_size=batch_size,
    seed=seed)``. The score of a rate is the loss it trains to: the mean cross-entropy of the
    whole training set in prediction mode (:func:`lecopt.train.evaluate`); a run that met a
    non-finite loss counts as ``+inf``.

    Args:
      model: a Flax module (as for :func:`lecopt.train.fit`).
      optimizer_factory: ``rate -> optax.GradientTransformation``, e.g.
        ``lambda lr: lecopt.sgd(lr, momentum=0.9)``.
      data: as for :func:`lecopt.train.fit`.
      rates: the constant rates (e.g. ``np.logspace(-3, 0, 13)``, a quarter-decade apart).
      epochs: the training budget in epochs (>= 1).
      batch_size: examples per step.
      seed: initialisation and data order.
      strategy: ``train.sweep``'s strategy (``"auto"``, ``"vmap"``, ``"loop"``).

    Returns:
      A :class:`GridSearchResult`.

    Example:
      >>> from lecopt import data, nn
      >>> grid = grid_search(nn.MLP((8,)), lambda lr: lecopt.sgd(lr, momentum=0.9),
      ...                    data.load("mnist-5k"), rates=[0.01, 0.1, 1.0], epochs=1)
      >>> grid.best_rate, bool(grid.best_loss == grid.final_loss.min())
      (0.1, True)
    """
    if not callable(optimizer_factory):
        raise TypeError(f"optimizer_factory: expected a function rate -> optimizer, got "
                        f"{optimizer_factory!r}")
    arr = np.sort(np.asarray(rates, np.float64).reshape(-1))
    if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"rates={rates!r}: expected a non-empty sequence of finite rates > 0")
    final, test_error = train_at_rates(model, optimizer_factory, data, arr, epochs=epochs,
                                       batch_size=batch_size, seed=seed, strategy=strategy)
    best = int(np.argmin(final))
    return GridSearchResult(arr, final, test_error, float(arr[best]), float(final[best]),
                            epochs, batch_size, seed, model, optimizer_factory, data, strategy)


def validate_suggestions(result: Any, grid: GridSearchResult,
             rules: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Trains at every rule's suggested rate (exactly, not snapped to the grid) the way
    ``grid`` trained, and compares with the grid's best.

    Args:
      result: a range test of the same model and optimizer.
      grid: a :class:`GridSearchResult` (it keeps the model, optimizer and data).
      rules: names of the rules to check (default: all in ``result.suggestions``).

    Returns:
      One dict per rule: ``rule``, ``rate``, ``final_loss``, ``test_error``, ``regret``
      (``final_loss / grid.best_loss``; inf if diverged, NaN without a suggestion),
      ``grid_best_rate``, ``grid_best_loss``.
    """
    names = list(result.suggestions) if rules is None else list(rules)
    rates = {name: float(np.asarray(result.suggestions[name])) for name in names}
    finite = sorted({r for r in rates.values() if math.isfinite(r) and r > 0})
    final, test_error = (train_at_rates(grid.model, grid.optimizer_factory, grid.data, finite,
                                        epochs=grid.epochs, batch_size=grid.batch_size,
                                        seed=grid.seed, strategy=grid.strategy)
                         if finite else (np.zeros(0), np.zeros(0)))
    by_rate = {r: (final[i], test_error[i]) for i, r in enumerate(finite)}
    rows = []
    for name in names:
        loss, err = by_rate.get(rates[name], (math.nan, math.nan))
        rows.append({"rule": name, "rate": rates[name], "final_loss": float(loss),
                     "test_error": float(err), "regret": float(loss / grid.best_loss),
                     "grid_best_rate": grid.best_rate, "grid_best_loss": grid.best_loss})
    return rows
