"""Doctests of the package: every example sees ``jax``, ``jnp``, ``np`` and ``lecopt``, as the
examples in the docstrings assume (``>>> lecopt.schedules.join(...)``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lecopt


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    doctest_namespace.update(jax=jax, jnp=jnp, np=np, lecopt=lecopt)
