"""Terminal output to safe HTML: SGR colours become spans with classes, the rest is dropped.

Pure (no I/O). A build log is a byte stream from a PTY; the job page shows it line by
line. What this keeps and what it drops:

- SGR (``ESC [ ... m``): bold, dim, italic, underline, strike, inverse, the 16 colours as
  classes ``a-f0``..``a-f15`` / ``a-b0``..``a-b15``; 256-colour and 24-bit colours map to
  the nearest of the 16 (classes only: the page's Content-Security-Policy allows no inline
  style). Unknown SGR codes are ignored.
- Every other escape sequence (cursor motion, erase, OSC such as the window title,
  DCS/APC strings, charset designations) and every other control character is dropped.
- A carriage return inside a line starts the line over (progress bars show their last
  state); the ``\\r`` of a PTY's ``\\r\\n`` is just a line ending.
- Text is HTML-escaped, so ``<script>`` or ``</pre>`` in a log renders as text.

``static/log.js`` implements the same rules for output that arrives while the page is
open; a change here needs the same change there (tests/web checks both against one log).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from html import escape

__all__ = ["SgrState", "nearest_basic", "render_line"]

#: xterm's default palette of the 16 basic colours, as RGB.
PALETTE = (
    (0, 0, 0),
    (205, 0, 0),
    (0, 205, 0),
    (205, 205, 0),
    (0, 0, 238),
    (205, 0, 205),
    (0, 205, 205),
    (229, 229, 229),
    (127, 127, 127),
    (255, 0, 0),
    (0, 255, 0),
    (255, 255, 0),
    (92, 92, 255),
    (255, 0, 255),
    (0, 255, 255),
    (255, 255, 255),
)
_CUBE = (0, 95, 135, 175, 215, 255)

#: One escape sequence or control character; group 1/2 are a CSI's parameters and final byte.
_TOKEN = re.compile(
    r"\x1b\[([0-?]*)[ -/]*([@-~])"  # CSI ... final (SGR when final is "m")
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\|$)"  # OSC (window title, hyperlinks) to BEL or ST
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\|$)"  # DCS, SOS, PM, APC strings to ST
    r"|\x1b[ -/]*[0-~]"  # any other escape (charset designation, keypad mode, ...)
    r"|\x1b"  # a lone ESC
    r"|\r"
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"  # other C0/C1 controls (tab kept)
)


def nearest_basic(r: int, g: int, b: int) -> int:
    """The basic colour (0-15) closest to an RGB value."""
    best, best_distance = 0, None
    for index, (pr, pg, pb) in enumerate(PALETTE):
        distance = (pr - r) ** 2 + (pg - g) ** 2 + (pb - b) ** 2
        if best_distance is None or distance < best_distance:
            best, best_distance = index, distance
    return best


def _xterm256(n: int) -> int:
    if n < 16:
        return n
    if n < 232:
        n -= 16
        return nearest_basic(_CUBE[n // 36], _CUBE[(n // 6) % 6], _CUBE[n % 6])
    level = 8 + 10 * (n - 232)
    return nearest_basic(level, level, level)


def _params(text: str) -> list[int | None]:
    """SGR parameters; ``None`` for an empty one. Colon sub-parameters (``38:5:n``) are
    flattened, dropping the empty colour-space id of ``38:2::r:g:b``."""
    if text == "":
        return [None]
    out: list[int | None] = []
    for part in text.split(";"):
        subs = part.split(":")
        if len(subs) == 6 and subs[1] == "2" and subs[2] == "":
            del subs[2]
        for sub in subs:
            out.append(int(sub) if sub.isdigit() else None)
    return out


@dataclass(frozen=True)
class SgrState:
    """The graphic rendition in force: colours are 0-15 or None (the default)."""

    fg: int | None = None
    bg: int | None = None
    bold: bool = False
    dim: bool = False
    italic: bool = False
    underline: bool = False
    strike: bool = False
    inverse: bool = False

    def apply(self, text: str) -> SgrState:
        """The state after ``ESC [ text m``."""
        params = _params(text)
        state = self
        i = 0
        while i < len(params):
            code = params[i]
            i += 1
            if code is None or code == 0:
                state = SgrState()
            elif code == 1:
                state = replace(state, bold=True)
            elif code == 2:
                state = replace(state, dim=True)
            elif code == 3:
                state = replace(state, italic=True)
            elif code in (4, 21):
                state = replace(state, underline=True)
            elif code == 7:
                state = replace(state, inverse=True)
            elif code == 9:
                state = replace(state, strike=True)
            elif code == 22:
                state = replace(state, bold=False, dim=False)
            elif code == 23:
                state = replace(state, italic=False)
            elif code == 24:
                state = replace(state, underline=False)
            elif code == 27:
                state = replace(state, inverse=False)
            elif code == 29:
                state = replace(state, strike=False)
            elif 30 <= code <= 37:
                state = replace(state, fg=code - 30)
            elif 90 <= code <= 97:
                state = replace(state, fg=code - 90 + 8)
            elif code == 39:
                state = replace(state, fg=None)
            elif 40 <= code <= 47:
                state = replace(state, bg=code - 40)
            elif 100 <= code <= 107:
                state = replace(state, bg=code - 100 + 8)
            elif code == 49:
                state = replace(state, bg=None)
            elif code in (38, 48):
                colour, i = _extended(params, i)
                if colour is not None and code == 38:
                    state = replace(state, fg=colour)
                elif colour is not None:
                    state = replace(state, bg=colour)
        return state

    def classes(self) -> str:
        """The CSS classes of this state, space-separated ("" for the default)."""
        fg, bg = self.fg, self.bg
        names: list[str] = []
        if self.inverse:
            names.append(f"a-f{bg}" if bg is not None else "a-fi")
            names.append(f"a-b{fg}" if fg is not None else "a-bi")
        else:
            if fg is not None:
                names.append(f"a-f{fg}")
            if bg is not None:
                names.append(f"a-b{bg}")
        for flag, name in (
            (self.bold, "a-bold"),
            (self.dim, "a-dim"),
            (self.italic, "a-it"),
            (self.underline, "a-ul"),
            (self.strike, "a-st"),
        ):
            if flag:
                names.append(name)
        return " ".join(names)

    def encode(self) -> str:
        """This state as SGR parameters (``SgrState().apply(s.encode()) == s``), for the
        page's script to continue from where the server stopped."""
        codes: list[str] = []
        for flag, code in (
            (self.bold, "1"),
            (self.dim, "2"),
            (self.italic, "3"),
            (self.underline, "4"),
            (self.inverse, "7"),
            (self.strike, "9"),
        ):
            if flag:
                codes.append(code)
        if self.fg is not None:
            codes.append(str(30 + self.fg if self.fg < 8 else 90 + self.fg - 8))
        if self.bg is not None:
            codes.append(str(40 + self.bg if self.bg < 8 else 100 + self.bg - 8))
        return ";".join(codes) or "0"


def _extended(params: list[int | None], i: int) -> tuple[int | None, int]:
    """A ``38;5;n`` or ``38;2;r;g;b`` colour starting at params[i]; (colour, next index)."""
    if i >= len(params):
        return None, i
    kind = params[i]
    if kind == 5 and i + 1 < len(params):
        n = params[i + 1]
        return (_xterm256(n) if n is not None and n < 256 else None), i + 2
    if kind == 2 and i + 3 < len(params):
        rgb = params[i + 1 : i + 4]
        if all(v is not None and v < 256 for v in rgb):
            r, g, b = (int(v or 0) for v in rgb)
            return nearest_basic(r, g, b), i + 4
        return None, i + 4
    return None, i + 1


def render_line(text: str, state: SgrState) -> tuple[str, SgrState]:
    """One line of output (no ``\\n``) as HTML, and the SGR state after it."""
    parts: list[str] = []
    pos = 0

    def text_run(run: str) -> None:
        if not run:
            return
        classes = state.classes()
        escaped = escape(run, quote=False)
        parts.append(f'<span class="{classes}">{escaped}</span>' if classes else escaped)

    for match in _TOKEN.finditer(text):
        text_run(text[pos : match.start()])
        pos = match.end()
        token = match.group(0)
        if match.group(2) == "m":
            state = state.apply(match.group(1))
        elif token == "\r" and pos < len(text):
            parts.clear()  # a carriage return mid-line: the line starts over
    text_run(text[pos:])
    return "".join(parts), state
