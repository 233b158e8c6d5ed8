"""The package's layers and the import rule between them (README, "Package layout").

core (transforms, optimizers, schedules, lr_finder, nn, landscapes, data, partition, registry,
_checks) <- training (train/) <- experiments (experiments/), tooling (bench/) <- front ends
(cli, widgets). A layer imports only the layers before it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lecopt"
CORE = ["transforms", "optimizers", "schedules", "lr_finder", "nn", "landscapes", "data",
        "partition", "registry", "_checks", "distributed"]
LAYERS = {"core": CORE, "train": ["train"], "experiments": ["experiments"], "bench": ["bench"]}
# What each layer must not import (the layers above it).
FORBIDDEN = {
    "core": ("lecopt.train", "lecopt.experiments", "lecopt.bench", "lecopt.cli",
             "lecopt.widgets"),
    "train": ("lecopt.experiments", "lecopt.bench", "lecopt.cli", "lecopt.widgets"),
    "experiments": ("lecopt.bench", "lecopt.cli", "lecopt.widgets"),
    "bench": ("lecopt.experiments", "lecopt.cli", "lecopt.widgets"),
}


def _files(name: str) -> list[Path]:
    path = PACKAGE / name
    return sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]


def _imported(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (also inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            # `from lecopt import train` names the module lecopt.train.
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("layer", list(LAYERS))
def test_no_layer_imports_a_layer_above_it(layer):
    offending = {
        str(path.relative_to(PACKAGE)): sorted(m for m in _imported(path)
                                               if m.startswith(FORBIDDEN[layer]))
        for name in LAYERS[layer] for path in _files(name)
    }
    assert not {k: v for k, v in offending.items() if v}


def test_importing_the_core_loads_no_other_layer():
    code = (
        "import sys\n"
        + "".join(f"import lecopt.{m}\n" for m in CORE)
        + "print(sorted(m for m in sys.modules if m.startswith(('lecopt.train', "
        "'lecopt.experiments', 'lecopt.bench', 'lecopt.cli', 'lecopt.widgets'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_the_checker_sees_a_lazy_import(tmp_path):
    # The rule must catch an import inside a function, the usual way to hide one.
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from lecopt import train\n    return train\n")
    assert "lecopt.train" in _imported(path)
