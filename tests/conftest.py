"""Shared fixtures: float64 mode and a counter of XLA backend compilations."""

from __future__ import annotations

import contextlib
import io
import json
import os
from types import SimpleNamespace

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


@pytest.fixture(scope="session")
def quick_reproduction(tmp_path_factory):
    """``lecopt reproduce --quick`` once per session, in this process (``runner.main``, what
    the command calls): ``out`` (its folder), ``stdout`` (what it printed), ``doc``
    (claims.json) and ``results`` ({experiment id: Result}). The reproduce tests read the
    files; an experiment's own tests read its Result here instead of running it again."""
    from lecopt.experiments import runner

    out = tmp_path_factory.mktemp("reproduce")
    outcomes, printed = [], io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = runner.main(out, quick=True, progress=False, keep=outcomes)
    assert code == 0, printed.getvalue()[-3000:]
    return SimpleNamespace(out=out, stdout=printed.getvalue(),
                           doc=json.loads((out / "claims.json").read_text()),
                           results={o.module.ID: o.result for o in outcomes})
