"""The lecture's experiments, each a module that returns its figures and checked claims.

An experiment module defines ``ID`` (short name), ``TITLE``, ``CLAIM_IDS`` (the claim ids it
produces, in order) and ``run(ctx: Context) -> Result``. Every number in a claim comes from the
run that produced it; thresholds are constants in the module, fixed before looking at results,
and written into the claim.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["Claim", "Figure", "Result", "Context", "REPRODUCED", "NOT_REPRODUCED"]

REPRODUCED = "REPRODUCED"
NOT_REPRODUCED = "NOT REPRODUCED"


@dataclasses.dataclass
class Claim:
    """One claim of the lecture and what this run measured.

    Attributes:
      id: stable id, e.g. ``"momentum-terminal-velocity"``; the report is ordered by the
        lecture's claim number ``number`` (1-17).
      number: the claim's number in the issue's list (1-17).
      statement: the lecture's statement, in short.
      evidence: the measurement in words with its numbers.
      threshold: the rule applied, in words (fixed before the run).
      holds: whether the measurement meets the threshold.
      numbers: the raw measured values (JSON-serialisable).
      seeds: for seed-dependent claims, how many seeds were run and how many held, e.g.
        ``{"run": 3, "held": 3}``; None for deterministic claims.
    """

    id: str
    number: int
    statement: str
    evidence: str
    threshold: str
    holds: bool
    numbers: dict[str, Any] = dataclasses.field(default_factory=dict)
    seeds: dict[str, int] | None = None

    @property
    def verdict(self) -> str:
        return REPRODUCED if self.holds else NOT_REPRODUCED

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["verdict"] = self.verdict
        d["holds"] = bool(self.holds)
        return d


@dataclasses.dataclass
class Figure:
    """A figure file written by an experiment, with the caption the report shows."""

    path: str
    caption: str
    title: str = ""


@dataclasses.dataclass
class Result:
    """What an experiment returns."""

    claims: list[Claim]
    figures: list[Figure]
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Context:
    """Everything an experiment needs from the runner.

    Attributes:
      out_dir: where figures go (``out_dir / "figures"``).
      quick: small settings (the whole quick run must take <= 3 minutes on 2 cores).
      data_name: ``"mnist-5k"`` (embedded), ``"mnist"`` or ``"fashion-mnist"``.
      data_dir: folder of the IDX files for the latter two.
      seed: the base seed; seed-dependent claims use ``seed, seed + 1, ...``.
      progress: whether to show inner progress bars (epochs).
    """

    out_dir: Path
    quick: bool = False
    data_name: str = "mnist-5k"
    data_dir: str | None = None
    seed: int = 0
    progress: bool = True
    _data: Any = None

    @property
    def figures_dir(self) -> Path:
        d = Path(self.out_dir) / "figures"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def data(self):
        """The data set, loaded once per run."""
        if self._data is None:
            from lecopt import data  # noqa: PLC0415 - only experiments that train need it

            self._data = data.load(self.data_name, data_dir=self.data_dir)
        return self._data

    def savefig(self, fig, name: str, caption: str) -> Figure:
        """Saves a matplotlib figure as ``figures/<name>.png`` and closes it."""
        import matplotlib.pyplot as plt  # noqa: PLC0415

        path = self.figures_dir / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        title = fig._suptitle.get_text() if fig._suptitle else ""  # noqa: SLF001
        if not title and fig.axes:
            title = fig.axes[0].get_title()
        plt.close(fig)
        return Figure(path=str(path.relative_to(self.out_dir)), caption=caption, title=title)

    def progress_bar(self, iterable: Iterable, desc: str, total: int | None = None) -> Iterator:
        """A tqdm bar over ``iterable`` (silent when progress is off)."""
        from tqdm.auto import tqdm  # noqa: PLC0415

        return iter(tqdm(iterable, desc=desc, total=total, leave=False,
                         disable=not self.progress or bool(os.environ.get("LECOPT_NO_PROGRESS"))))
