"""Validation of arguments, in one place for the whole package.

Every factory in lecopt validates its numeric hyperparameters when it is built. A value that is
a JAX tracer (inside ``jit``/``vmap``/``inject_hyperparams``) cannot be read, so
:func:`check_range` and :func:`check_positive_int` accept it as is; a Python number or a
concrete array is checked element-wise. :func:`check_int` is for counts that must be concrete
(epochs, steps, batch sizes).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

__all__ = ["concrete_values", "check_range", "check_positive_int", "check_int"]


def concrete_values(value: Any) -> np.ndarray | None:
    """Returns ``value`` as a float64 NumPy array, or None when it cannot be read (a tracer)."""
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, bool):
        raise TypeError(f"expected a number, got the bool {value!r}")
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"expected a number or an array of numbers, got {value!r}") from e


def _describe(lo: float, hi: float, lo_open: bool, hi_open: bool) -> str:
    if math.isinf(hi):
        return f"{'>' if lo_open else '>='} {lo:g} and finite"
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    return f"in {left}{lo:g}, {hi:g}{right}"


def check_range(
    name: str,
    value: Any,
    lo: float = 0.0,
    hi: float = math.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    """Raises ``ValueError`` naming ``name`` when a concrete ``value`` leaves the range.

    Non-finite values are always rejected. Tracers are accepted unchecked.
    """
    try:
        arr = concrete_values(value)
    except TypeError as e:
        raise TypeError(f"{name}: {e}") from None
    if arr is None:
        return
    allowed = _describe(lo, hi, lo_open, hi_open)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}={value!r} is not finite; {name} must be {allowed}")
    below = arr <= lo if lo_open else arr < lo
    above = arr >= hi if hi_open else arr > hi
    if np.any(below | above):
        bad = arr[below | above].ravel()[0]
        shown = value if arr.ndim == 0 else f"array containing {bad:g}"
        raise ValueError(f"{name}={shown!r} is out of range; {name} must be {allowed}")


def check_positive_int(name: str, value: Any) -> None:
    """Raises ``ValueError`` unless a concrete ``value`` is an integer > 0 (tracers pass)."""
    arr = concrete_values(value)
    if arr is None:
        return
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0) or np.any(arr != np.round(arr)):
        raise ValueError(f"{name}={value!r} is invalid; {name} must be a positive integer")


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an ``int`` if it is a Python or NumPy integer ``>= minimum``.

    For counts that choose the shape of a program (epochs, steps, batch sizes), which must be
    concrete. Raises ``TypeError`` for anything but an integer (a bool or ``2.0`` included),
    ``ValueError`` below ``minimum``; both name the argument, the value and what is allowed.

    Example:
      >>> check_int("epochs", 3)
      3
      >>> check_int("epochs", 0)
      Traceback (most recent call last):
      ...
      ValueError: epochs=0 is out of range; epochs must be an int >= 1
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name}={value!r} must be an int >= {minimum}")
    if value < minimum:
        raise ValueError(f"{name}={value!r} is out of range; {name} must be an int >= {minimum}")
    return int(value)
