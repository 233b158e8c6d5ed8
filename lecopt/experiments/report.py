"""The report of ``lecopt reproduce`` as one document, and its two renderings.

:func:`build` turns a run into a :class:`Document` (title, summary paragraphs, the claims table,
one section per experiment with its settings and figures); :func:`to_markdown` and
:func:`to_html` render that same document, so the two reports cannot disagree. Text is
format-neutral: a paragraph is a sequence of :class:`Span` (plain, bold, italic, code, or a
verdict), each renderer maps a span's style to its own markup and does its own escaping.
"""

from __future__ import annotations

import base64
import dataclasses
import html
from collections.abc import Sequence
from typing import Any, NamedTuple

from lecopt.experiments import Claim, Figure

TITLE = "lecopt reproduce: the advanced-optimization lecture, re-run"
CLAIM_COLUMNS = ("#", "claim", "verdict", "evidence", "threshold", "seeds")
README_COLUMNS = ("#", "claim", "verdict", "evidence")


class Span(NamedTuple):
    """A piece of text with a style: ``""``, ``"bold"``, ``"italic"``, ``"code"``, ``"pass"``
    or ``"fail"`` (a verdict)."""

    text: str
    style: str = ""


Paragraph = tuple[Span, ...]


class Table(NamedTuple):
    header: tuple[str, ...]
    rows: list[tuple[Span, ...]]


class PlacedFigure(NamedTuple):
    """A figure and the path (relative to the report) it was written to."""

    path: str
    figure: Figure


class ExperimentRun(NamedTuple):
    """What the report shows of one experiment."""

    id: str
    title: str
    seconds: float
    settings: dict[str, Any] | None
    figures: list[PlacedFigure]
    error: str | None  # the traceback of a crashed experiment, else None


@dataclasses.dataclass
class Section:
    title: str
    paragraphs: list[Paragraph]
    figures: list[PlacedFigure]
    error: str | None = None  # the traceback of a crashed experiment


@dataclasses.dataclass
class Document:
    title: str
    summary: list[Paragraph]
    claims: Table
    sections: list[Section]


# ----------------------------------------------------------------------------- the document


def _cell(claim: dict[str, Any], column: str) -> Span:
    if column == "#":
        return Span(str(claim["number"]))
    if column == "verdict":
        return Span(claim["verdict"], "pass" if claim["holds"] else "fail")
    if column == "seeds":
        s = claim["seeds"]
        return Span(f"{s['held']}/{s['run']}" if s else "-")
    return Span(str(claim["statement" if column == "claim" else column]))


def claims_table(claims: Sequence[dict[str, Any]], columns: Sequence[str] = CLAIM_COLUMNS
                 ) -> Table:
    """The claims (as in ``claims.json``) as a table of the given columns."""
    return Table(tuple(columns), [tuple(_cell(c, col) for col in columns) for c in claims])


def _short(v: Any) -> str:
    s = str(v)
    return s if len(s) < 80 else s[:77] + "..."


def build(meta: dict[str, Any], claims: Sequence[Claim], runs: Sequence[ExperimentRun]
          ) -> Document:
    """The report of one run.

    Args:
      meta: the run's ``data``, ``seed``, ``quick``, ``elapsed_s`` and ``versions``.
      claims: every claim, in the lecture's order.
      runs: one per experiment, in the order they ran.
    """
    v = meta["versions"]
    held = sum(c.holds for c in claims)
    crashed = [r.id for r in runs if r.error is not None]
    summary = [
        (Span("Data set "), Span(meta["data"], "bold"),
         Span(f", seed {meta['seed']}, {'quick' if meta['quick'] else 'full'} settings, "
              f"{meta['elapsed_s']:.0f} s; lecopt {v['lecopt']}, jax {v['jax']} on "
              f"{v['device']}.")),
        (Span(f"{held} of {len(claims)} claims reproduced.", "bold"),
         *([Span(f" Crashed experiments: {', '.join(crashed)}.")] if crashed else [])),
        (Span("Every number below comes from this run. Thresholds were fixed before the run."),),
    ]
    sections = []
    for r in runs:
        paragraphs: list[Paragraph] = [(Span(f"{r.seconds:.1f} s.", "italic"),)]
        if r.settings:
            items: list[Span] = [Span("Settings: ")]
            for i, (k, val) in enumerate(r.settings.items()):
                items += [Span(", ")] * (i > 0) + [Span(f"{k}={_short(val)}", "code")]
            paragraphs.append(tuple(items))
        sections.append(Section(r.title, paragraphs, list(r.figures), r.error))
    return Document(TITLE, summary, claims_table([c.to_dict() for c in claims]), sections)


# ----------------------------------------------------------------------------- Markdown

_MD_STYLE = {"": "{}", "bold": "**{}**", "italic": "_{}_", "code": "`{}`", "pass": "**{}**",
             "fail": "**{}**"}


def _md_text(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_paragraph(p: Paragraph) -> str:
    return "".join(_MD_STYLE[s.style].format(_md_text(s.text)) for s in p)


def markdown_table(table: Table) -> str:
    """A table in GitHub Markdown (``|`` in cells escaped)."""
    rows = ["| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
    rows += ["| " + " | ".join(_md_paragraph((cell,)) for cell in row) + " |"
             for row in table.rows]
    return "\n".join(rows)


def to_markdown(doc: Document) -> str:
    """The document as Markdown; figures are links to their files."""
    md = [f"# {doc.title}\n", *(_md_paragraph(p) + "\n" for p in doc.summary),
          "## Claims\n", markdown_table(doc.claims), ""]
    for section in doc.sections:
        md.append(f"## {section.title}\n")
        md += [_md_paragraph(p) + "\n" for p in section.paragraphs]
        if section.error is not None:
            md.append(f"**Crashed:**\n\n```\n{section.error}\n```\n")
        for placed in section.figures:
            f = placed.figure
            alt = _md_text(f.title or f.caption).replace("[", "(").replace("]", ")")
            md += [f"![{alt}]({placed.path})\n", f"*{_md_text(f.caption)}*\n"]
    return "\n".join(md)


# ----------------------------------------------------------------------------- HTML

_HTML_STYLE = {"": "{}", "bold": "<b>{}</b>", "italic": "<i>{}</i>", "code": "<code>{}</code>",
               "pass": "<b class='ok'>{}</b>", "fail": "<b class='no'>{}</b>"}
_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;"
        "padding:4px 6px;vertical-align:top}.ok{color:#176117}.no{color:#a11}"
        "img{max-width:100%}figure{margin:1.5em 0}")


def _html_spans(p: Paragraph) -> str:
    return "".join(_HTML_STYLE[s.style].format(html.escape(s.text)) for s in p)


def to_html(doc: Document) -> str:
    """The document as one self-contained HTML page (figures inlined as data URLs)."""
    e = html.escape
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>{e(doc.title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{e(doc.title)}</h1>", *(f"<p>{_html_spans(p)}</p>" for p in doc.summary),
             "<h2>Claims</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in doc.claims.header)
             + "</tr>"]
    parts += ["<tr>" + "".join(f"<td>{_html_spans((c,))}</td>" for c in row) + "</tr>"
              for row in doc.claims.rows]
    parts.append("</table>")
    for section in doc.sections:
        parts.append(f"<h2>{e(section.title)}</h2>")
        parts += [f"<p>{_html_spans(p)}</p>" for p in section.paragraphs]
        if section.error is not None:
            parts.append(f"<p class='no'>Crashed:</p><pre>{e(section.error)}</pre>")
        for placed in section.figures:
            f = placed.figure
            data = base64.b64encode(f.data).decode()
            parts.append(f"<figure><img alt='{e(f.title or f.caption)}' "
                         f"src='data:{f.mime_type};base64,{data}'><figcaption>{e(f.caption)}"
                         "</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
