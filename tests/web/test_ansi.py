"""The ANSI converter: colours become classes, every other escape is dropped, text is escaped."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from buildworker.web.ansi import SgrState, nearest_basic, render_line


def html(text: str, state: SgrState | None = None) -> str:
    return render_line(text, state or SgrState())[0]


def test_plain_text_is_escaped() -> None:
    assert html("a < b & </pre><script>alert(1)</script>") == (
        "a &lt; b &amp; &lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;"
    )


def test_colours_become_classes_and_reset_ends_them() -> None:
    assert html("\x1b[31mred\x1b[0m plain") == '<span class="a-f1">red</span> plain'
    assert html("\x1b[1;32;44mx") == '<span class="a-f2 a-b4 a-bold">x</span>'
    assert html("\x1b[92mbright\x1b[39m") == '<span class="a-f10">bright</span>'
    assert html("\x1b[mx") == "x"  # an empty SGR is a reset


def test_256_and_truecolour_map_to_the_nearest_basic_colour() -> None:
    assert html("\x1b[38;5;196mx") == '<span class="a-f9">x</span>'  # bright red
    assert html("\x1b[38;5;4mx") == '<span class="a-f4">x</span>'
    assert html("\x1b[48;2;0;0;0mx") == '<span class="a-b0">x</span>'
    assert html("\x1b[38:5:46mx") == '<span class="a-f10">x</span>'  # colon form
    assert nearest_basic(250, 250, 250) == 15


def test_inverse_swaps_foreground_and_background() -> None:
    assert html("\x1b[7mx") == '<span class="a-fi a-bi">x</span>'
    assert html("\x1b[31;7mx") == '<span class="a-fi a-b1">x</span>'


def test_other_escapes_are_dropped_including_the_window_title() -> None:
    assert html("\x1b]0;owned title\x07after") == "after"
    assert html("\x1b]2;t\x1b\\after") == "after"
    assert html("a\x1b[2Kb\x1b[1Ac\x1b(Bd") == "abcd"
    assert html("x\x1bP1;2qsixel\x1b\\y") == "xy"
    assert html("bell\x07 nul\x00 del\x7f") == "bell nul del"
    assert html("tab\tkept") == "tab\tkept"


def test_a_carriage_return_starts_the_line_over() -> None:
    assert html("10%\r50%\r100%") == "100%"
    assert html("done\r") == "done"  # a trailing CR (a PTY's CRLF) is a line end


def test_state_carries_over_lines_and_encodes_for_the_script() -> None:
    _, state = render_line("\x1b[1;33mstart", SgrState())
    body, after = render_line("next", state)
    assert body == '<span class="a-f3 a-bold">next</span>'
    assert SgrState().apply(after.encode()) == after
    assert SgrState().encode() == "0"


@given(st.text(alphabet=st.sampled_from(list("ab<>&\"'\x1b[];0123456789mK\r\x07\\:P"))))
def test_no_markup_or_escape_ever_leaks(text: str) -> None:
    out = html(text)
    stripped = out
    for cls in ("a-f", "a-b", "a-bold", "a-ul", "a-it", "a-dim", "a-st"):
        stripped = stripped.replace(cls, "")
    # The only tags are the spans we made; no ESC or raw < > survive
    assert "\x1b" not in out and "\x07" not in out
    without_spans = stripped.replace("</span>", "")
    import re

    without_spans = re.sub(r'<span class="[^"<>]*">', "", without_spans)
    assert "<" not in without_spans and ">" not in without_spans


@given(st.lists(st.integers(min_value=0, max_value=300), max_size=8))
def test_encode_round_trips_any_state(codes: list[int]) -> None:
    state = SgrState().apply(";".join(str(c) for c in codes))
    assert SgrState().apply(state.encode()) == state
