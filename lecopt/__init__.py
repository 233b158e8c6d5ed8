"""lecopt: the advanced-optimization lecture as an exact, fast, composable JAX library.

Optimizers and primitives are optax gradient transformations that are also pytrees of their
hyperparameters; schedules are pure functions of the step; BatchNorm is a Flax module.
"""

from optax import apply_updates

from lecopt import data, landscapes, nn, schedules
from lecopt.lr_finder import LRRangeTestResult, lr_range_test
from lecopt.optimizers import adagrad, adam, lookahead_params, rmsprop, sgd
from lecopt.transforms import (
    AdamState,
    MomentumState,
    RmsState,
    ScaleByLearningRateState,
    SumOfSquaresState,
    add_decayed_weights,
    bias_correction,
    chain,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_momentum,
    scale_by_rms,
    scale_by_sum_of_squares,
)

__version__ = "0.1.0"


def __getattr__(name: str):
    # The training layer is imported when first used, so that importing the core
    # (lecopt.transforms, lecopt.optimizers, ...) does not load it: the core never depends on it.
    if name == "train":
        import importlib

        return importlib.import_module("lecopt.train")
    raise AttributeError(f"module 'lecopt' has no attribute {name!r}")

__all__ = [
    "AdamState",
    "LRRangeTestResult",
    "MomentumState",
    "RmsState",
    "ScaleByLearningRateState",
    "SumOfSquaresState",
    "adagrad",
    "adam",
    "add_decayed_weights",
    "apply_updates",
    "bias_correction",
    "chain",
    "data",
    "landscapes",
    "lookahead_params",
    "lr_range_test",
    "nn",
    "rmsprop",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_momentum",
    "scale_by_rms",
    "scale_by_sum_of_squares",
    "schedules",
    "sgd",
    "train",
]
