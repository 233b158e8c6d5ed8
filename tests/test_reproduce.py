"""``lecopt reproduce --quick`` end to end: every claim, every figure, a parseable report."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser

import pytest

ALL_CLAIMS = set(range(1, 18))
DETERMINISTIC = {1, 3, 8, 9, 10, 12}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    proc = subprocess.run(
        [sys.executable, "-m", "lecopt", "reproduce", "--quick", "--out", str(out),
         "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )
    return out, proc


def test_exit_code_and_summary(quick_run):
    out, proc = quick_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "claims reproduced" in proc.stdout
    for number in ALL_CLAIMS:
        assert f"] {number:2d}. " in proc.stdout, f"claim {number} has no verdict line"


def test_claims_json(quick_run):
    out, _ = quick_run
    doc = json.loads((out / "claims.json").read_text())
    numbers = {c["number"] for c in doc["claims"]}
    assert numbers == ALL_CLAIMS
    for c in doc["claims"]:
        assert c["verdict"] in ("REPRODUCED", "NOT REPRODUCED")
        assert c["evidence"] and c["threshold"] and c["statement"]
        assert any(ch.isdigit() for ch in c["evidence"]), f"claim {c['id']}: no number"
    for key in ("data", "seed", "quick", "versions"):
        assert key in doc
    assert doc["versions"]["lecopt"] and doc["versions"]["jax"]
    assert doc["data"] == "mnist-5k" and doc["quick"] is True
    assert not doc["summary"]["crashed_experiments"]


def test_deterministic_claims_hold(quick_run):
    out, _ = quick_run
    doc = json.loads((out / "claims.json").read_text())
    failed = [(c["number"], c["id"], c["evidence"]) for c in doc["claims"]
              if c["number"] in DETERMINISTIC and not c["holds"]]
    assert not failed


def test_figures_are_png(quick_run):
    import matplotlib.image as mpimg

    out, _ = quick_run
    doc = json.loads((out / "claims.json").read_text())
    paths = [f["path"] for e in doc["experiments"] for f in e["figures"]]
    assert len(paths) >= 12
    for p in paths:
        data = (out / p).read_bytes()
        assert data[:8] == PNG_MAGIC, p
        img = mpimg.imread(out / p)
        assert img.shape[0] > 100 and img.shape[1] > 100
    assert list((out / "figures").glob("*.gif")), "the saddle animation is missing"


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.imgs = 0

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img" and dict(attrs).get("src", "").startswith("data:image/"):
            self.imgs += 1


def test_html_report_parses_and_is_self_contained(quick_run):
    out, _ = quick_run
    p = _Collect()
    p.feed((out / "report.html").read_text())
    assert "table" in p.tags and p.imgs >= 12
    md = (out / "report.md").read_text()
    assert "| # | claim | verdict |" in md
    for line in md.splitlines():
        if line.startswith("!["):
            assert (out / line[line.rindex("](") + 2:-1]).exists()


def test_bad_options_give_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lecopt", "reproduce", "--only", "bogus",
                           "--out", str(tmp_path), "--no-progress"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--only" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "lecopt", "reproduce", "--data", "mnist",
                           "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--data" in proc.stderr and "Traceback" not in proc.stderr
