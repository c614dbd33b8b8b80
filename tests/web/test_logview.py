"""The job page's view of a log: the last 128 KiB, numbered lines, anchors, the handover
to the live script (offset, next line, SGR state)."""

from __future__ import annotations

from pathlib import Path

from buildworker.web.ansi import SgrState
from buildworker.web.logview import read_log_view, render_lines


def test_lines_are_numbered_with_anchors(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_bytes(b"one\r\n\x1b[31mtwo\x1b[0m\nthree")
    view = read_log_view(log, "build", final=True)
    assert str(view.html) == (
        '<span id="task-build-1"><a href="#task-build-1">1</a>one</span>'
        '<span id="task-build-2"><a href="#task-build-2">2</a><span class="a-f1">two</span></span>'
        '<span id="task-build-3"><a href="#task-build-3">3</a>three</span>'
    )
    assert view.skipped == 0 and view.offset == log.stat().st_size


def test_a_running_log_stops_at_the_last_complete_line(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_bytes(b"\x1b[32mdone\nhalf a li")
    view = read_log_view(log, None, final=False)
    assert 'id="setup-1"' in view.html and "half" not in view.html
    assert view.offset == len(b"\x1b[32mdone\n") and view.next_line == 2
    assert SgrState().apply(view.sgr) == SgrState(fg=2)  # the script continues in green


def test_a_big_log_shows_its_end_with_true_line_numbers(tmp_path: Path) -> None:
    log = tmp_path / "log"
    lines = [f"line {i} " + "x" * 90 for i in range(1, 3001)]
    log.write_bytes(("\n".join(lines) + "\n").encode())
    view = read_log_view(log, "t", final=True, window=64 * 1024)
    assert view.skipped > 0 and view.size == log.stat().st_size
    first = view.html.split("</span>")[0]
    # The window starts at a line boundary, numbered as in the whole log
    number = int(first.split('id="task-t-')[1].split('"')[0])
    assert f">{number}</a>line {number} " in first
    assert 'id="task-t-3000"' in view.html and view.next_line == 3001


def test_html_in_a_log_is_text(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_bytes(b"<script>alert(1)</script></pre>\x1b]0;title\x07\n")
    html = str(read_log_view(log, None, final=True).html)
    assert "<script>" not in html and "</pre>" not in html and "title" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;/pre&gt;" in html


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    html, number, _, used = render_lines(b"\xff\xfe ok\n", "p", 7, SgrState(), final=False)
    assert "\ufffd" in html and 'id="p-7"' in html and number == 8 and used == 6


def test_a_missing_log_is_empty(tmp_path: Path) -> None:
    view = read_log_view(tmp_path / "nothing", None, final=False)
    assert view.html == "" and view.offset == 0 and view.next_line == 1
