"""The experiments' shared parts: the step table, the helpers, the runner's selection, the
report document and its two renderings, and publishing to the README."""

from __future__ import annotations

import io
import json
import math
import time
from html.parser import HTMLParser

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from lecopt.experiments import ClaimSpec, Context, Figure, Measured, Step, run_steps, runner
from lecopt.experiments import _common as common

# ----------------------------------------------------------------------------- helpers


def test_majority_and_seed_tally():
    assert common.majority([True, True, False])
    assert not common.majority([True, False])  # a tie is not a majority
    assert not common.majority([])
    assert common.seed_tally([True, False, True, True]) == {"run": 4, "held": 3}


def test_format_count():
    assert [common.format_count(v) for v in (0, 17, 4.0, None, math.inf)] == \
        ["0", "17", "4", "never", "never"]


def test_band_draws_the_mean_and_the_min_max_of_the_shortest_length():
    fig, ax = plt.subplots()
    common.band(ax, [[1.0, 2.0, 3.0], [3.0, 6.0]], "red", "runs", scale=10.0)
    (line,) = ax.get_lines()
    np.testing.assert_allclose(line.get_xdata(), [1, 2])
    np.testing.assert_allclose(line.get_ydata(), [20.0, 40.0])
    (fill,) = ax.collections
    ys = fill.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(10.0) and ys.max() == pytest.approx(60.0)
    plt.close(fig)


# ----------------------------------------------------------------------------- the table

A = ClaimSpec(2, "claim-a", "A holds.")
B = ClaimSpec(1, "claim-b", "B holds.")


def _png(title: str) -> Figure:
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.set_title(title)
    return Figure.from_matplotlib(fig, title.lower(), f"caption of {title}")


def test_run_steps_judges_each_claim_and_collects_its_figures():
    res = run_steps(Context(progress=False), "toy", [
        Step(lambda: Measured("a measured 3", "a >= 3", True, {"a": 3}, data="A"), A, _png),
        Step(lambda: Measured("b measured 1", "b >= 2", False, seeds={"run": 2, "held": 0}), B),
    ], settings={"n": 1})
    a, b = res.claims
    assert (a.number, a.id, a.statement, a.evidence, a.holds) == (2, "claim-a", "A holds.",
                                                                   "a measured 3", True)
    assert (b.verdict, b.seeds) == ("NOT REPRODUCED", {"run": 2, "held": 0})
    assert [f.name for f in res.figures] == ["a"]  # drawn from the step's data
    assert res.settings == {"n": 1}


def test_figure_from_matplotlib_is_png_bytes_with_its_title():
    fig = plt.figure(figsize=(3, 2))
    fig.suptitle("The suptitle")
    fig.add_subplot().set_title("axes title")
    f = Figure.from_matplotlib(fig, "x", "cap")
    assert plt.fignum_exists(fig.number) is False  # closed
    with Image.open(io.BytesIO(f.data)) as im:
        assert im.format == "PNG"
    assert (f.title, f.filename, f.mime_type) == ("The suptitle", "x.png", "image/png")


# ----------------------------------------------------------------------------- --only


def test_select_by_experiment_claim_id_and_number():
    assert [m.ID for m in runner.select(["momentum"])] == ["momentum"]
    assert [m.ID for m in runner.select(["saddle-escape", "8"])] == ["learning_rates",
                                                                    "adaptive"]
    assert len(runner.select(None)) == len(runner.EXPERIMENTS)


def test_unknown_only_is_refused_before_anything_runs(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(runner, "run_all", lambda *a, **k: ran.append(a))
    with pytest.raises(runner.UsageError, match=r"--only: unknown id\(s\) bogus;.*momentum"):
        runner.main(tmp_path / "out", only=["momentum", "bogus"], progress=False)
    assert not ran and not (tmp_path / "out").exists()


def test_bad_data_is_refused_before_anything_runs(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(runner, "run_all", lambda *a, **k: ran.append(a))
    with pytest.raises(runner.UsageError, match="--data mnist"):
        runner.main(tmp_path / "out", data="mnist", data_dir=str(tmp_path / "none"),
                    progress=False)
    assert not ran


# ----------------------------------------------------------------------------- the report


class _FakeModule:
    def __init__(self, id_, title, result=None, error=None):
        self.ID, self.TITLE, self.CLAIMS = id_, title, ()
        self._result, self._error = result, error

    def run(self, ctx):
        if self._error:
            raise RuntimeError(self._error)
        return self._result


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A report of two fake experiments, one of which crashes."""
    out = tmp_path_factory.mktemp("report")
    res = run_steps(Context(progress=False), "toy", [
        Step(lambda: Measured("a | 3", "a >= 3", True), A, lambda _: [_png("Alpha")]),
        Step(lambda: Measured("b = 1", "b >= 2", False, seeds={"run": 3, "held": 1}), B),
    ], settings={"lr": 0.1})
    outcomes = runner.run_all(Context(progress=False), [
        _FakeModule("toy", "Toy experiment", result=res),
        _FakeModule("broken", "Broken experiment", error="boom")])
    meta = {"data": "mnist-5k", "seed": 0, "quick": True, "elapsed_s": 1.5,
            "versions": {"lecopt": "0", "jax": "0", "device": "cpu"}, "command": "x"}
    doc = runner.write_report(out, meta, outcomes)
    return out, doc


def test_report_files_and_claims_json(written):
    out, doc = written
    assert json.loads((out / "claims.json").read_text()) == json.loads(json.dumps(doc))
    assert [c["number"] for c in doc["claims"]] == [1, 2]
    assert doc["summary"] == {"claims": 2, "reproduced": 1, "not_reproduced": 1,
                              "crashed_experiments": ["broken"]}
    (fig,) = doc["experiments"][0]["figures"]
    assert fig["path"] == "figures/alpha.png"
    assert (out / fig["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "boom" in doc["experiments"][1]["error"]


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self.imgs: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.imgs.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _markdown_rows(md: str) -> list[list[str]]:
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    return [[c.strip().strip("*").replace("\\|", "|") for c in r.strip("|").split(" | ")]
            for r in rows]


def test_markdown_and_html_show_the_same_table_and_figures(written):
    out, _ = written
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    cells = _Cells()
    cells.feed(page)
    assert _markdown_rows(md) == cells.rows
    assert cells.rows[1] == ["1", "B holds.", "NOT REPRODUCED", "b = 1", "b >= 2", "1/3"]
    assert cells.rows[2][3] == "a | 3"  # escaped in Markdown, plain in HTML
    assert len(cells.imgs) == 1 and cells.imgs[0].startswith("data:image/png;base64,")
    assert "![Alpha](figures/alpha.png)" in md
    for text in ("1 of 2 claims reproduced.", "Crashed experiments: broken.", "boom",
                 "Broken experiment", "lr=0.1"):
        assert text in md and text in page


def test_publish_refreshes_the_readme_table_and_copies_figures(written, tmp_path):
    out, doc = written
    runner.README_FIGURES.append("alpha")
    try:
        readme = tmp_path / "README.md"
        readme.write_text("intro\n<!-- claims:start -->\nold table\n<!-- claims:end -->\nend\n")
        runner.publish(out, tmp_path / "docs", doc, readme=readme)
    finally:
        runner.README_FIGURES.remove("alpha")
    text = readme.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith("end\n")
    assert "1 of 2 claims reproduced (mnist-5k, seed 0, quick run, 2 s, cpu)." in text
    assert _markdown_rows(text)[1:] == [["1", "B holds.", "NOT REPRODUCED", "b = 1"],
                                        ["2", "A holds.", "REPRODUCED", "a | 3"]]
    assert (tmp_path / "docs" / "alpha.png").read_bytes() == (out / "figures/alpha.png"
                                                             ).read_bytes()
    assert (tmp_path / "docs" / "claims.md").read_text().strip() in text


def test_run_all_times_each_experiment():
    t0 = time.perf_counter()
    (o,) = runner.run_all(Context(progress=False), [_FakeModule("x", "X", error="e")])
    assert o.result is None and 0 <= o.seconds <= time.perf_counter() - t0
