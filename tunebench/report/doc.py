"""A tiny document model rendered twice: Markdown (``report.md``) and self-contained HTML.

Both renderings come from the same blocks, so the numbers in ``report.md`` and ``report.html``
are the same strings. Images are PNG bytes: written beside ``report.md`` and embedded in the
HTML as base64 ``data:`` URIs, so the HTML opens offline and requests nothing.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1a1a1a;line-height:1.45}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:0.25em 0.6em;text-align:left;vertical-align:top;
overflow-wrap:anywhere;word-break:break-word}
th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:0.85em}
pre{background:#f6f6f6;padding:0.7em;overflow-x:auto;white-space:pre-wrap}
img{max-width:100%;height:auto}
.note{color:#555;font-size:0.9em}
.compare-controls{display:flex;gap:1em;align-items:center;flex-wrap:wrap}
.compare-controls input[type=search]{min-width:20em;padding:0.2em 0.4em}
.compare-count{color:#555;font-size:0.9em}
.compare-table td:first-child{overflow-wrap:normal;word-break:normal}
td.right{background:#eef8ee}
td.wrong{background:#fbeaea}
"""

# Filters the rows of every per-example comparison: the search box keeps rows whose text
# contains the query (case-insensitive), the checkbox keeps rows where the systems disagree.
COMPARE_SCRIPT = """
document.querySelectorAll('.compare').forEach(function (box) {
  var search = box.querySelector('.compare-search');
  var only = box.querySelector('.compare-disagree');
  var count = box.querySelector('.compare-count');
  var rows = Array.prototype.slice.call(box.querySelectorAll('tbody tr'));
  function update() {
    var query = search.value.trim().toLowerCase();
    var shown = 0;
    rows.forEach(function (row) {
      var show = (!only.checked || row.dataset.disagree === '1') &&
        (!query || row.textContent.toLowerCase().indexOf(query) >= 0);
      row.hidden = !show;
      if (show) shown += 1;
    });
    count.textContent = shown + ' of ' + rows.length + ' examples shown';
  }
  search.addEventListener('input', update);
  only.addEventListener('change', update);
  update();
});
"""


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str
    note: bool = False


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    numeric: set[int] = field(default_factory=set)


@dataclass
class Image:
    filename: str
    alt: str
    png: bytes


@dataclass
class Code:
    text: str
    summary: str | None = None  # collapsible in HTML when set


@dataclass
class Comparison:
    """Examples side by side (input, gold, every system's output), filterable in HTML by a search
    box and by "systems disagree"; report.md carries ``pointer`` instead."""

    header: list[str]
    rows: list[list[str]]
    #: Per row: the systems' outputs differ.
    disagree: list[bool]
    #: Per row, per cell: True (right), False (wrong) or None (no verdict / not an output).
    marks: list[list[bool | None]]
    pointer: str


Block = Heading | Para | Table | Image | Code | Comparison


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Para):
            out.append(f"*{block.text}*" if block.note else block.text)
        elif isinstance(block, Table):
            lines = ["| " + " | ".join(_md_cell(h) for h in block.header) + " |"]
            lines.append(
                "|"
                + "|".join(" ---: " if i in block.numeric else " --- " for i in range(len(block.header)))
                + "|"
            )
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            out.append("\n".join(lines))
        elif isinstance(block, Image):
            out.append(f"![{block.alt}]({block.filename})")
        elif isinstance(block, Comparison):
            out.append(f"*{block.pointer}*")
        elif isinstance(block, Code):
            text = f"```\n{block.text.rstrip()}\n```"
            out.append(f"**{block.summary}**\n\n{text}" if block.summary else text)
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escape, then render `code` spans (the only inline markup the report uses)."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def to_html(blocks: list[Block], title: str) -> str:
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            cls = ' class="note"' if block.note else ""
            body.append(f"<p{cls}>{_inline(block.text)}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in block.header)
            rows = "".join(
                "<tr>"
                + "".join(
                    f'<td class="num">{_inline(c)}</td>' if i in block.numeric else f"<td>{_inline(c)}</td>"
                    for i, c in enumerate(row)
                )
                + "</tr>"
                for row in block.rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Image):
            data = base64.b64encode(block.png).decode("ascii")
            body.append(f'<p><img alt="{html.escape(block.alt)}" src="data:image/png;base64,{data}"></p>')
        elif isinstance(block, Comparison):
            body.append(_comparison_html(block))
        elif isinstance(block, Code):
            pre = f"<pre>{html.escape(block.text.rstrip())}</pre>"
            if block.summary:
                pre = f"<details><summary>{html.escape(block.summary)}</summary>{pre}</details>"
            body.append(pre)
    # The data: favicon stops browsers from requesting /favicon.ico: the page requests nothing.
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + (f"\n<script>{COMPARE_SCRIPT}</script>" if any(isinstance(b, Comparison) for b in blocks) else "")
        + "\n</body></html>\n"
    )


def _comparison_html(block: Comparison) -> str:
    """The comparison table with its search box, its "systems disagree" filter and a row count."""
    controls = (
        '<p class="compare-controls">'
        '<input type="search" class="compare-search" placeholder="Search inputs, golds and outputs" '
        'aria-label="Search examples">'
        '<label><input type="checkbox" class="compare-disagree"> only where systems disagree</label>'
        f'<span class="compare-count">{len(block.rows)} of {len(block.rows)} examples shown</span></p>'
    )
    legend = (
        '<p class="note">Outputs shaded green are right and red wrong by their system\'s per-example '
        "verdict; systems disagree where their outputs differ (whitespace aside).</p>"
    )
    head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
    marks = {True: ' class="right"', False: ' class="wrong"', None: ""}
    rows = "".join(
        f'<tr data-disagree="{int(disagree)}">'
        + "".join(f"<td{marks[m]}>{html.escape(c)}</td>" for c, m in zip(row, row_marks, strict=True))
        + "</tr>"
        for row, disagree, row_marks in zip(block.rows, block.disagree, block.marks, strict=True)
    )
    table = f'<table class="compare-table"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
    return f'<div class="compare">{legend}{controls}{table}</div>'


def write(blocks: list[Block], title: str, out: Path) -> None:
    """Write report.md, report.html and the PNGs into ``out``."""
    from tunebench.io import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    for block in blocks:
        if isinstance(block, Image):
            with atomic_write(out / block.filename, "wb") as handle:
                handle.write(block.png)
    with atomic_write(out / "report.md") as handle:
        handle.write(to_markdown(blocks))
    with atomic_write(out / "report.html") as handle:
        handle.write(to_html(blocks, title))
