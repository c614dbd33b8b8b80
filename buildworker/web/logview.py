"""The log sections of a job page: the last 128 KiB of a log, as numbered HTML lines.

builds.sr.ht shows the last 128 KiB of each log with ANSI colours and line anchors
(``#task-<name>-<n>``). We do the same, with line numbers that stay put as the log grows
(they count the lines before the window), and for a running job we stop at the last
complete line and hand the byte offset, line number and SGR state to the page's script,
which follows the log from there (``static/log.js``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from markupsafe import Markup

from buildworker.web.ansi import SgrState, render_line

__all__ = ["WINDOW", "LogView", "anchor_prefix", "read_log_view", "render_lines"]

#: How much of a log the page shows (builds.sr.ht's "last 128KiB").
WINDOW = 128 * 1024
#: Lines before the window are counted in blocks this large.
_COUNT_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class LogView:
    """What the page shows of one log."""

    #: the rendered lines (escaped HTML, one ``<span id=...>`` per line)
    html: Markup
    #: bytes of the log left out before the window (0: shown from the start)
    skipped: int
    #: byte offset just past what was rendered (where the script continues)
    offset: int
    #: number of the next line (1-based)
    next_line: int
    #: SGR state at `offset`, as parameters for the script
    sgr: str
    #: the log's size when read
    size: int


def anchor_prefix(task: str | None) -> str:
    """``task-<name>`` for a task's lines, ``setup`` for the setup log's."""
    return "setup" if task is None else f"task-{task}"


def render_lines(
    data: bytes, prefix: str, first_line: int, state: SgrState, *, final: bool
) -> tuple[str, int, SgrState, int]:
    """Numbered HTML lines of ``data``; returns (html, next line number, state, bytes used).

    With ``final`` false, a last line without its newline is left for later (its bytes are
    not counted as used).
    """
    end = len(data) if final else data.rfind(b"\n") + 1
    text = data[:end].decode("utf-8", "replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the text ended with a newline: no empty line after it
    out: list[str] = []
    number = first_line
    for line in lines:
        body, state = render_line(line.removesuffix("\r"), state)
        anchor = f"{prefix}-{number}"
        # No newline between lines: each line is a block (a "\n" in the <pre> would add a
        # blank line after each); copying text still yields one line per line.
        out.append(f'<span id="{anchor}"><a href="#{anchor}">{number}</a>{body}</span>')
        number += 1
    return "".join(out), number, state, end


def _count_lines(path: Path, end: int) -> int:
    count = 0
    with path.open("rb") as fh:
        remaining = end
        while remaining > 0:
            block = fh.read(min(_COUNT_BLOCK, remaining))
            if not block:
                break
            remaining -= len(block)
            count += block.count(b"\n")
    return count


def read_log_view(path: Path, task: str | None, *, final: bool, window: int = WINDOW) -> LogView:
    """The page's view of the log at ``path`` (a missing file is an empty log).

    ``final``: the job has ended, so a last line without a newline is shown too.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return LogView(Markup(""), 0, 0, 1, "0", 0)
    start = max(0, size - window)
    with path.open("rb") as fh:
        fh.seek(start)
        data = fh.read(size - start)
    if start > 0:
        # Begin at a line boundary: never in the middle of a character or an escape.
        cut = data.find(b"\n") + 1 or len(data)
        data = data[cut:]
        start += cut
    first_line = _count_lines(path, start) + 1 if start else 1
    html, next_line, state, used = render_lines(
        data, anchor_prefix(task), first_line, SgrState(), final=final
    )
    # The markup comes from render_line, which escapes every byte of the log.
    return LogView(Markup(html), start, start + used, next_line, state.encode(), size)
