"""The lecture's experiments: each module checks some of the lecture's claims.

Every experiment module has the same shape:

* ``ID`` (short name) and ``TITLE``;
* ``CLAIMS``: its claims, each declared once as a :class:`ClaimSpec` (number, id, statement);
* ``run(ctx: Context) -> Result``: a table of :class:`Step` rows (measure, claim, figure),
  handed to :func:`run_steps`, that reads as the list of the claims the module checks.

A measurement returns a :class:`Measured`: its evidence (the numbers in words), the rule it
applied (thresholds are module constants fixed before looking at results), whether the rule
holds, the raw numbers, and the data its figure draws. Figures are returned as
:class:`Figure` objects holding the image bytes; experiments never write files (the runner
does).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

__all__ = ["Claim", "ClaimSpec", "Context", "Figure", "Measured", "NOT_REPRODUCED", "REPRODUCED",
           "Result", "Step", "run_steps"]

REPRODUCED = "REPRODUCED"
NOT_REPRODUCED = "NOT REPRODUCED"


@dataclasses.dataclass(frozen=True)
class Measured:
    """What one measurement found, before it is attached to the claim it checks.

    Attributes:
      evidence: the measurement in words, with its numbers.
      threshold: the rule applied, in words (fixed before the run).
      holds: whether the measurement meets the rule.
      numbers: the raw measured values (JSON-serialisable; they go into ``claims.json``).
      seeds: for seed-dependent claims ``{"run": n, "held": k}``; None when deterministic.
      data: whatever the step's figure draws (arrays, curves); not reported.
    """

    evidence: str
    threshold: str
    holds: bool
    numbers: dict[str, Any] = dataclasses.field(default_factory=dict)
    seeds: dict[str, int] | None = None
    data: Any = None


@dataclasses.dataclass
class Claim:
    """One claim of the lecture and what this run measured.

    Attributes:
      id: stable id, e.g. ``"momentum-terminal-velocity"``.
      number: the claim's number in the lecture's list (1-17); the report is ordered by it.
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


class ClaimSpec(NamedTuple):
    """A claim's identity, declared once per experiment module: number, id and statement."""

    number: int
    id: str
    statement: str

    def judged(self, measured: Measured) -> Claim:
        """The claim with what ``measured`` found."""
        return Claim(id=self.id, number=self.number, statement=self.statement,
                     evidence=measured.evidence, threshold=measured.threshold,
                     holds=bool(measured.holds), numbers=measured.numbers, seeds=measured.seeds)


@dataclasses.dataclass(frozen=True)
class Figure:
    """A rendered figure: image bytes, the file name it gets, its title and caption.

    Attributes:
      name: the file stem, e.g. ``"ravine"`` (the runner writes ``figures/<name>.<format>``).
      caption: the sentence the report shows under it.
      title: the figure's title (the report's alt text).
      data: the encoded image.
      format: ``"png"`` or ``"gif"``.
    """

    name: str
    caption: str
    title: str
    data: bytes = dataclasses.field(repr=False)
    format: str = "png"

    @property
    def filename(self) -> str:
        return f"{self.name}.{self.format}"

    @property
    def mime_type(self) -> str:
        return f"image/{self.format}"

    @classmethod
    def from_matplotlib(cls, fig: Any, name: str, caption: str, dpi: int = 110) -> Figure:
        """Renders a matplotlib figure to PNG bytes and closes it.

        The title is the figure's suptitle, else the first axes' title.
        """
        from lecopt.train import figure_png

        title = fig.get_suptitle() or (fig.axes[0].get_title() if fig.axes else "")
        return cls(name=name, caption=caption, title=title, data=figure_png(fig, dpi))


@dataclasses.dataclass
class Result:
    """What an experiment returns: its claims (in its table's order), figures and settings."""

    claims: list[Claim]
    figures: list[Figure]
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)


class Step(NamedTuple):
    """One row of an experiment's table: measure, the claim it checks, and its figure(s).

    Attributes:
      measure: ``() -> Measured`` (a ``functools.partial`` binds the context or shared runs).
      claim: the :class:`ClaimSpec` the measurement checks.
      figure: ``data -> Figure | list[Figure]`` drawn from ``Measured.data``, or None.
    """

    measure: Callable[[], Measured]
    claim: ClaimSpec
    figure: Callable[[Any], Figure | Sequence[Figure]] | None = None


@dataclasses.dataclass
class Context:
    """Everything an experiment needs from the runner.

    Attributes:
      quick: small settings (the whole quick run must take <= 3 minutes on 2 cores).
      data_name: ``"mnist-5k"`` (embedded), ``"mnist"`` or ``"fashion-mnist"``.
      data_dir: folder of the IDX files for the latter two.
      seed: the base seed; seed-dependent claims use ``seed, seed + 1, ...``.
      progress: whether to show inner progress bars.
    """

    quick: bool = False
    data_name: str = "mnist-5k"
    data_dir: str | None = None
    seed: int = 0
    progress: bool = True
    _data: Any = dataclasses.field(default=None, repr=False)

    def data(self):
        """The data set, loaded once per run."""
        if self._data is None:
            from lecopt import data

            self._data = data.load(self.data_name, data_dir=self.data_dir)
        return self._data

    def seeds(self, count: int) -> list[int]:
        """``count`` consecutive seeds from the base seed."""
        return [self.seed + i for i in range(count)]

    def progress_bar(self, iterable: Iterable, desc: str, total: int | None = None) -> Iterator:
        """A tqdm bar over ``iterable`` (silent when progress is off)."""
        from tqdm.auto import tqdm

        return iter(tqdm(iterable, desc=desc, total=total, leave=False,
                         disable=not self.progress or bool(os.environ.get("LECOPT_NO_PROGRESS"))))


def run_steps(ctx: Context, desc: str, steps: Sequence[Step],
              settings: dict[str, Any] | None = None) -> Result:
    """Runs an experiment's table: each step's measurement, its claim, then its figure(s)."""
    claims, figures = [], []
    for step in ctx.progress_bar(steps, desc=desc, total=len(steps)):
        measured = step.measure()
        claims.append(step.claim.judged(measured))
        if step.figure is not None:
            drawn = step.figure(measured.data)
            figures.extend([drawn] if isinstance(drawn, Figure) else drawn)
    return Result(claims=claims, figures=figures, settings=dict(settings or {}))
