"""Build output made safe for a terminal: colours (SGR) pass, every other control goes (pure).

A build's log is written by untrusted code. Sent raw to the terminal of whoever follows it
(``buildworker submit --follow``), it can set the window title (OSC 0/2), ask the terminal to
answer (cursor position reports, DECRQSS, device attributes: the answer is typed into the
follower's shell), clear the screen, redefine keys or the character set (DCS, SO/SI), or
write to the clipboard (OSC 52). `TerminalFilter` keeps printable text, tabs, newlines,
carriage returns, backspaces and SGR sequences (``ESC [ 1;31 m``, ``ESC [ 38:2::255:0:0 m``),
and drops everything else: other CSI sequences, OSC/DCS/SOS/PM/APC strings with their payload,
other escape sequences, C0 and C1 controls (also C1 written as UTF-8, U+0080-U+009F).

It is a streaming state machine (ECMA-48's shape, after Paul Williams' DEC parser): a
sequence split across chunks is recognised as if it came whole, and at most one partial CSI
(bounded by `MAX_CSI`) or one partial UTF-8 character is held between calls. No library does
this: terminal emulators (pyte) render a screen, strippers drop colours too or need the whole
text. Invalid UTF-8 becomes U+FFFD, which is what the terminal would show anyway.
"""

from __future__ import annotations

import codecs
import re

__all__ = ["MAX_CSI", "TerminalFilter", "filter_all"]

ESC = "\x1b"
#: Longest CSI sequence held while waiting for its end; longer ones are dropped.
MAX_CSI = 256
#: Controls that pass: backspace, tab, newline, carriage return.
_KEPT_C0 = frozenset("\b\t\n\r")
#: CAN and SUB cancel a sequence in progress (and are dropped themselves).
_CANCEL = frozenset("\x18\x1a")
#: ESC <c> that opens a string (OSC, DCS, SOS, PM, APC), and the same in C1 form.
_STRING_OPENERS = frozenset("]PX^_")
_C1_STRING_OPENERS = frozenset("\x9d\x90\x98\x9e\x9f")
_C1_CSI = "\x9b"
_C1_ST = "\x9c"
_SGR_PARAMS = re.compile(r"[0-9;:]*")
#: In ground state, a run of what passes as it is: text and whole SGR sequences. It is copied
#: in one slice; what stops it goes through the state machine.
_SAFE_RUN = re.compile(
    f"(?:[^\x00-\x07\x0b\x0c\x0e-\x1f\x7f-\x9f]+|\x1b\\[[0-9;:]{{0,{MAX_CSI}}}m)+"
)
#: A whole CSI sequence (the state machine's result for it, in one match).
_WHOLE_CSI = re.compile(f"\x1b\\[([\x20-\x3f]{{0,{MAX_CSI}}})([\x40-\x7e])")
#: In a string (OSC...), the characters that may end it; everything else is skipped at once.
_STRING_END = re.compile("[\x07\x18\x1a\x1b\x9c]")

_GROUND, _ESCAPE, _ESC_INTERMEDIATE, _CSI, _CSI_IGNORE, _STRING, _STRING_ESC = range(7)


class TerminalFilter:
    """``feed(bytes) -> bytes`` as output arrives, ``finish() -> bytes`` at its end.

    ``used_colour`` says whether an SGR sequence has passed since the last ``reset_colour``,
    so a caller interleaving several streams can reset the colours between them.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._state = _GROUND
        self._seq: list[str] = []  # the CSI sequence being collected (params + intermediates)
        self.used_colour = False

    def feed(self, data: bytes) -> bytes:
        return self._run(self._decoder.decode(data))

    def finish(self) -> bytes:
        """The end of the stream: a partial character becomes U+FFFD, a partial sequence is
        dropped; the filter is ready for a new stream."""
        out = self._run(self._decoder.decode(b"", final=True))
        self._state, self._seq = _GROUND, []
        return out

    def reset_colour(self) -> bytes:
        """``ESC [ 0 m`` if a colour passed since the last reset, else nothing."""
        if not self.used_colour:
            return b""
        self.used_colour = False
        return b"\x1b[0m"

    def _run(self, text: str) -> bytes:
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            # Fast paths: plain text is copied and a string's payload skipped a run at a time;
            # only controls and sequences go through the state machine character by character.
            if self._state == _GROUND:
                run = _SAFE_RUN.match(text, i)
                if run is not None:
                    piece = run.group(0)
                    out.append(piece)
                    if ESC in piece:
                        self.used_colour = True
                    i = run.end()
                    if i == n:
                        break
                whole = _WHOLE_CSI.match(text, i) if text[i] == ESC else None
                if whole is not None:  # a complete CSI (a colour, most often): at once
                    params, final = whole.groups()
                    if final == "m" and _SGR_PARAMS.fullmatch(params):
                        out.append(whole.group(0))
                        self.used_colour = True
                    i = whole.end()
                    continue
            elif self._state == _STRING:
                found = _STRING_END.search(text, i)
                if found is None:
                    break
                i = found.start()
            self._step(text[i], out)
            i += 1
        return "".join(out).encode("utf-8")

    def _step(self, ch: str, out: list[str]) -> None:
        state = self._state
        if state == _GROUND:
            self._ground(ch, out)
        elif state == _ESCAPE:
            self._escape(ch, out)
        elif state == _ESC_INTERMEDIATE:
            if self._control(ch, out):
                return
            if "\x30" <= ch <= "\x7e" or not "\x20" <= ch <= "\x2f":
                self._state = _GROUND  # the final byte (e.g. ESC ( B, ESC # 8): dropped
        elif state in (_CSI, _CSI_IGNORE):
            self._csi(ch, out)
        elif state == _STRING:
            if ch == "\x07" or ch == _C1_ST or ch in _CANCEL:
                self._state = _GROUND  # BEL or ST ends it (OSC's two terminators)
            elif ch == ESC:
                self._state = _STRING_ESC
        elif state == _STRING_ESC:
            if ch == "\\":
                self._state = _GROUND  # ESC \ is ST
            else:
                self._state = _ESCAPE  # ESC ends the string and starts a new sequence
                self._escape(ch, out)

    def _ground(self, ch: str, out: list[str]) -> None:
        if ch == ESC:
            self._state = _ESCAPE
        elif ch == _C1_CSI:
            self._state, self._seq = _CSI, []
        elif ch in _C1_STRING_OPENERS:
            self._state = _STRING
        elif ch < " " or "\x7f" <= ch <= "\x9f":
            if ch in _KEPT_C0:
                out.append(ch)
        else:
            out.append(ch)

    def _control(self, ch: str, out: list[str]) -> bool:
        """A control inside an escape sequence: ESC restarts it, anything else ends it and is
        handled as in ground state. Returns whether `ch` was such a control."""
        if ch == ESC:
            self._state = _ESCAPE
            return True
        if ch < " " or "\x7f" <= ch <= "\x9f":
            self._state = _GROUND
            if ch not in _CANCEL:
                self._ground(ch, out)
            return True
        return False

    def _escape(self, ch: str, out: list[str]) -> None:
        if self._control(ch, out):
            return
        if ch == "[":
            self._state, self._seq = _CSI, []
        elif ch in _STRING_OPENERS:
            self._state = _STRING
        elif "\x20" <= ch <= "\x2f":
            self._state = _ESC_INTERMEDIATE
        else:
            self._state = _GROUND  # ESC c (reset), ESC 7, ESC M, ESC =: all dropped

    def _csi(self, ch: str, out: list[str]) -> None:
        if self._control(ch, out):
            return
        if "\x40" <= ch <= "\x7e":  # the final byte
            if self._state == _CSI and ch == "m":
                params = "".join(self._seq)
                if _SGR_PARAMS.fullmatch(params):
                    out.append(f"{ESC}[{params}m")
                    self.used_colour = True
            self._state, self._seq = _GROUND, []
        elif "\x20" <= ch <= "\x3f":  # a parameter or intermediate byte
            if self._state == _CSI:
                self._seq.append(ch)
                if len(self._seq) > MAX_CSI:
                    self._state, self._seq = _CSI_IGNORE, []
        else:  # not valid in a CSI sequence (e.g. a printable beyond 0x7e): drop it all
            self._state, self._seq = _GROUND, []
            self._ground(ch, out)


def filter_all(data: bytes) -> bytes:
    """`data` as one whole stream through a fresh `TerminalFilter`."""
    terminal = TerminalFilter()
    return terminal.feed(data) + terminal.finish()
