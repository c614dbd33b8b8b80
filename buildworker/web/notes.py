"""Job notes as safe HTML: markdown (CommonMark, markdown-it-py) with raw HTML off.

HTML in a note renders as text, and markdown-it refuses ``javascript:``, ``vbscript:``,
``file:`` and non-image ``data:`` link targets, so a note cannot run script.
"""

from __future__ import annotations

from markdown_it import MarkdownIt
from markupsafe import Markup

__all__ = ["note_summary", "render_note"]

_MD = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
_MD.enable("table").enable("strikethrough")


def render_note(note: str | None) -> Markup:
    """The note as HTML (empty for none)."""
    if not note:
        return Markup("")
    # markdown-it escapes all text and, with html off, every tag in the note.
    return Markup(_MD.render(note))


def note_summary(note: str | None, limit: int = 140) -> str:
    """The note's first non-empty line, shortened: plain text for lists and feeds."""
    for line in (note or "").splitlines():
        line = line.strip().lstrip("#").strip()
        if line:
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return ""
