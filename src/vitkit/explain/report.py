"""One self-contained HTML report: every image inlined as base64, inline CSS, no links out.

A single file can be mailed, attached to an issue or opened offline and still shows
everything; nothing is fetched from anywhere.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
td, th { padding: 2px 10px; text-align: left; border-bottom: 1px solid #eee; }
td.p { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
p.note { color: #555; font-size: 0.9em; }
"""


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Section:
    title: str
    figures: list[Figure] = field(default_factory=list)
    top: list[tuple[str, float]] = field(default_factory=list)  # (class name, probability)
    note: str = ""


def embed_png(path: Path) -> str:
    """An ``<img>`` whose source is the PNG itself (data URI), so the page needs no other file."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(Path(path).stem)}">'


def _section_html(s: Section) -> str:
    parts = [f"<h2>{html.escape(s.title)}</h2>"]
    if s.note:
        parts.append(f'<p class="note">{html.escape(s.note)}</p>')
    if s.top:
        rows = "".join(f"<tr><td>{i + 1}</td><td>{html.escape(name)}</td><td class=p>{100 * p:.1f}%</td></tr>"
                       for i, (name, p) in enumerate(s.top))
        parts.append(f"<table><tr><th>#</th><th>class</th><th>probability</th></tr>{rows}</table>")
    for fig in s.figures:
        parts.append(f'<p class="note">{html.escape(fig.caption)}</p>{embed_png(fig.path)}')
    return "\n".join(parts)


def write_report(path: Path, title: str, sections: list[Section], intro: str = "") -> Path:
    """Write the report to ``path``; returns it."""
    body = "\n".join(_section_html(s) for s in sections)
    intro_html = f'<p class="note">{html.escape(intro)}</p>' if intro else ""
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n"
            f"<body><h1>{html.escape(title)}</h1>{intro_html}\n{body}\n</body></html>\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
