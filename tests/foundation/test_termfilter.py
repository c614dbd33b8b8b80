"""TerminalFilter: colours pass, every other control goes, however the output is chunked."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buildworker.termfilter import MAX_CSI, TerminalFilter, filter_all

TITLE = b"\x1b]0;you have been pwned\x07"
RED = b"\x1b[31m"
RESET = b"\x1b[0m"
#: What may remain after filtering: text (no controls but \b\t\n\r), and SGR sequences.
SAFE = re.compile(rb"(?:\x1b\[[0-9;:]*m|[^\x00-\x1f\x7f]|[\b\t\n\r])*", re.S)
C1 = re.compile("[\x80-\x9f]")


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def through(chunks: list[bytes]) -> bytes:
    terminal = TerminalFilter()
    return b"".join(terminal.feed(c) for c in chunks) + terminal.finish()


def assert_safe(out: bytes) -> None:
    assert SAFE.fullmatch(out), out
    assert not C1.search(out.decode("utf-8")), out


# Pieces a hostile or merely colourful build writes: text, SGR, and every kind of control.
PIECES = [
    b"plain text ",
    "h\u00e9llo \u20ac \U0001f600 ".encode(),
    b"\n",
    b"\r\n",
    b"\t",
    b"\b",
    RED,
    RESET,
    b"\x1b[1;38;5;208m",
    b"\x1b[38:2::255:0:0m",
    TITLE,
    b"\x1b]2;title\x1b\\",
    b"\x1b]52;c;ZWNobyBwd25lZA==\x07",  # write to the clipboard
    b"\x1b[6n",  # cursor position report: the terminal would type the answer
    b"\x1b[2J\x1b[H",  # clear screen, home
    b"\x1b[?1049h",  # alternate screen
    b"\x1bP$q m\x1b\\",  # DCS DECRQSS
    b"\x1b_apc payload\x1b\\",
    b"\x1bc",  # full reset
    b"\x1b(0",  # line drawing charset
    b"\x1b#8",  # fill the screen with E
    b"\x0e\x0f",  # SO / SI
    b"\x07\x00\x7f",
    "\u009b31m\u009d0;c1 title\u009c".encode(),  # C1 controls written as UTF-8
    b"\x9b\xff\xc3",  # invalid UTF-8
    b"\x1b",
    b"\x1b[",
    b"\x1b]",
]


@given(
    st.lists(st.sampled_from(PIECES) | st.binary(max_size=12), max_size=40),
    st.lists(st.integers(0, 10_000), max_size=12),
)
@settings(max_examples=600, deadline=None)
def test_any_chunking_gives_the_same_output_as_the_whole(
    pieces: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(pieces)
    assert through(chunked(data, cuts)) == filter_all(data)


@given(
    st.lists(st.sampled_from(PIECES) | st.binary(max_size=12), max_size=40),
    st.lists(st.integers(0, 10_000), max_size=12),
)
@settings(max_examples=600, deadline=None)
def test_nothing_but_text_and_colours_comes_out(pieces: list[bytes], cuts: list[int]) -> None:
    out = through(chunked(b"".join(pieces), cuts))
    assert_safe(out)
    # and filtering again changes nothing: the output is a fixed point
    assert filter_all(out) == out


@given(
    st.text(
        st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\x1b")
        | st.sampled_from("\n\t\r"),
        max_size=200,
    ),
    st.lists(st.integers(0, 10_000), max_size=8),
)
@settings(max_examples=300, deadline=None)
def test_text_without_controls_passes_byte_for_byte(text: str, cuts: list[int]) -> None:
    data = text.encode()
    assert through(chunked(data, cuts)) == data


@given(
    st.lists(
        st.tuples(
            st.lists(st.integers(0, 255), max_size=5).map(lambda ns: ";".join(map(str, ns))),
            st.text(
                st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters="\x1b"),
                max_size=10,
            ),
        ),
        max_size=10,
    ),
    st.lists(st.integers(0, 10_000), max_size=8),
)
@settings(max_examples=300, deadline=None)
def test_colours_pass_unchanged_however_split(
    parts: list[tuple[str, str]], cuts: list[int]
) -> None:
    data = "".join(f"\x1b[{params}m{text}" for params, text in parts).encode()
    assert through(chunked(data, cuts)) == data


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"before" + TITLE + b"after", b"beforeafter"),
        (RED + b"red" + RESET, RED + b"red" + RESET),
        (b"a\x1b]2;t\x1b\\b", b"ab"),
        (b"a\x1b[6nb\x1b[2Jc\x1b[?25ld", b"abcd"),
        (b"\x1b[?1;2m", b""),  # a private-marker "m" is not SGR
        (b"\x1b[1$m", b""),  # nor one with an intermediate byte
        (b"x\x1b]0;never ended\n and more", b"x"),  # an open string swallows what follows
        (b"x\x1b]0;t\x18y", b"xy"),  # CAN ends it
        (b"\x1b[31\nm", b"\nm"),  # a control inside a sequence ends it
        (b"tab\there\r\nback\bspace", b"tab\there\r\nback\bspace"),
        (b"bell\x07 so\x0e si\x0f del\x7f", b"bell so si del"),
        ("\u009b2J\u009d0;t\u009cok".encode(), b"ok"),  # C1 CSI, then C1 OSC ... ST
        (b"\x1b(0lqk\x1b(B", b"lqk"),
    ],
)
def test_examples(raw: bytes, shown: bytes) -> None:
    assert filter_all(raw) == shown


def test_an_overlong_csi_is_dropped_without_growing_the_held_state() -> None:
    terminal = TerminalFilter()
    out = terminal.feed(b"\x1b[" + b"1;" * (10 * MAX_CSI))
    assert out == b"" and len(terminal._seq) <= MAX_CSI
    assert terminal.feed(b"m then text") == b" then text"


def test_reset_colour_only_after_a_colour() -> None:
    terminal = TerminalFilter()
    terminal.feed(b"plain")
    assert terminal.reset_colour() == b""
    terminal.feed(RED + b"x")
    assert terminal.reset_colour() == RESET
    assert terminal.reset_colour() == b""
