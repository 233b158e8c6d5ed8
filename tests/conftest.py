"""Shared fixtures: float64 mode and a counter of XLA backend compilations."""

from __future__ import annotations

import contextlib
import os

import jax
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles = {"n": 0}


def _on_event(event: str, duration: float, **kwargs) -> None:
    if event == _COMPILE_EVENT:
        _compiles["n"] += 1


jax.monitoring.register_event_duration_secs_listener(_on_event)


class CompileCounter:
    """``with counter.expect(n): ...`` asserts that exactly ``n`` backend compiles happen."""

    @property
    def count(self) -> int:
        return _compiles["n"]

    @contextlib.contextmanager
    def expect(self, n: int):
        before = _compiles["n"]
        yield
        got = _compiles["n"] - before
        assert got == n, f"expected {n} XLA compilations, got {got}"


@pytest.fixture
def compile_counter() -> CompileCounter:
    return CompileCounter()


@pytest.fixture
def x64():
    """Runs the test with jax_enable_x64 on, restoring the previous setting afterwards."""
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)
