"""Streaming secret masking: every secret value in a byte stream becomes ``[MASKED]``.

Pure: no I/O. One :class:`Redactor` sits in front of each log stream (setup log, each task
log) and also in front of our own structlog output. It is a filter, not a post-processor:
output is written in arbitrary chunks (PTY reads), so a secret may arrive split across
``write`` calls. The redactor therefore holds back the tail of the stream that could be the
beginning of a secret — at most ``len(longest needle) - 1`` bytes — and releases it as soon
as the next bytes show it is not one, or when the stream ends.

Timed release. A log must not sit in memory longer than the flush interval, so the log
streamer calls :meth:`Redactor.release` once bytes have been held for that long. Releasing a held tail raw would let a
secret printed slowly (one character per second) leak one character at a time, so a released
tail is shown as ``[MASKED]`` and the redactor remembers that those bytes were masked: if the
secret then completes, its remainder is swallowed into the same mask; if it turns out not to
be a secret, the output continues after the mask. The cost is that ordinary text which pauses
for longer than a flush interval exactly on a prefix of a secret loses those few bytes to a
mask; we take that over leaking.

Needles. For each secret value we mask: the value itself; each line of a multi-line value
(PTY output turns ``\\n`` into ``\\r\\n``, and ``cat`` of a key prints line by line); its
base64 encodings at the three byte alignments; its shell-quoted forms (what ``set -x``
prints for values with spaces or quotes); JSON- and URL-escaped forms. Needles shorter than
:data:`MIN_NEEDLE_LEN` are not masked (they would shred the log); :func:`needles_for`
reports which secrets were too short so the caller can warn by name.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shlex
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MASK",
    "MIN_NEEDLE_LEN",
    "NeedleSet",
    "Redactor",
    "needles_for",
    "structlog_masker",
]

#: What replaces a secret in every log.
MASK = b"[MASKED]"
#: Needles shorter than this are not masked (a 2-byte "secret" would mask half the log).
MIN_NEEDLE_LEN = 4
#: Base64 forms are only worth masking when they carry this many characters.
MIN_B64_LEN = 8


def _b64_forms(value: bytes) -> list[bytes]:
    """The base64 text a value produces at each of the three byte alignments.

    Only the characters that depend on the value's bytes alone are kept: with ``shift``
    unknown bytes in front, the first characters mix in those bytes, and the last ones mix
    in whatever follows (or padding).
    """
    forms = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + value)
        start = {0: 0, 1: 2, 2: 3}[shift]
        total_bits = 8 * (shift + len(value))
        # Character k covers bits [6k, 6k+6); keep it only if all of them are data bits.
        end = total_bits // 6
        if shift + len(value) == 0:
            continue
        candidate = encoded[start:end]
        if len(candidate) >= MIN_B64_LEN:
            forms.append(candidate)
    return forms


def _text_forms(text: str) -> list[bytes]:
    forms = [text]
    forms.append(shlex.quote(text))
    # bash's xtrace quotes with '\'' where shlex uses '"'"'.
    forms.append("'" + text.replace("'", "'\\''") + "'")
    forms.append(json.dumps(text)[1:-1])
    forms.append(urllib.parse.quote(text, safe=""))
    return [f.encode() for f in forms]


def needles_for(value: bytes | str, min_len: int = MIN_NEEDLE_LEN) -> tuple[list[bytes], bool]:
    """All byte strings that must be masked for one secret value.

    Returns ``(needles, too_short)``: ``too_short`` is true when the value (or every line of
    it) is shorter than ``min_len`` (``[worker] mask-min-length``), i.e. nothing of it will
    be masked.
    """
    min_len = max(1, min_len)  # an empty needle would match everywhere
    raw = value.encode() if isinstance(value, str) else value
    stripped = raw.strip(b"\r\n")
    lines = [line.strip(b"\r") for line in stripped.split(b"\n")]
    candidates: list[bytes] = []
    if len(lines) == 1:
        candidates.append(stripped)
        with contextlib.suppress(UnicodeDecodeError):
            candidates.extend(_text_forms(stripped.decode()))
    else:
        candidates.extend(lines)
        # Leading/trailing whitespace of a line is not worth keeping in the needle:
        # indentation differs between where it is stored and where it is printed.
        candidates.extend(line.strip() for line in lines)
    candidates.extend(_b64_forms(stripped))
    if stripped != raw:
        candidates.extend(_b64_forms(raw))
    if max(len(line.strip()) for line in lines) < min_len:
        # Its quoted or encoded forms would be long enough, but masking those alone
        # would suggest a protection the raw value does not get.
        return [], True
    needles = sorted({c for c in candidates if len(c) >= min_len}, key=len, reverse=True)
    return needles, False


@dataclass
class NeedleSet:
    """The needles of every secret of a job; shared by the job's redactors, grows mid-job."""

    needles: set[bytes] = field(default_factory=set)
    too_short: list[str] = field(default_factory=list)
    #: values (and lines of values) shorter than this are not masked
    min_len: int = MIN_NEEDLE_LEN
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _version: int = 0
    _counts: dict[bytes, int] = field(default_factory=dict, repr=False)

    def add(self, value: bytes | str, name: str = "secret") -> list[bytes]:
        """Mask ``value`` from now on; record ``name`` when it is too short to mask.
        Returns the needles added (for :meth:`discard`)."""
        found, short = needles_for(value, self.min_len)
        with self._lock:
            self.needles.update(found)
            for needle in found:
                self._counts[needle] = self._counts.get(needle, 0) + 1
            if short and value:
                self.too_short.append(name)
            self._version += 1
        return found

    def discard(self, needles: Iterable[bytes]) -> None:
        """Forget needles an :meth:`add` returned (a process-wide set after a job ends);
        a needle added by several secrets stays until each has discarded it."""
        with self._lock:
            for needle in needles:
                left = self._counts.get(needle, 0) - 1
                if left <= 0:
                    self._counts.pop(needle, None)
                    self.needles.discard(needle)
                else:
                    self._counts[needle] = left
            self._version += 1

    def mask_text(self, text: str) -> str:
        """``text`` with every needle replaced by the mask (for whole messages, not streams)."""
        _, needles = self.snapshot()
        if not needles:
            return text
        data = text.encode(errors="surrogateescape")
        redactor = Redactor(needles)
        return (redactor.write(data) + redactor.flush()).decode(errors="replace")

    def snapshot(self) -> tuple[int, tuple[bytes, ...]]:
        with self._lock:
            return self._version, tuple(sorted(self.needles, key=len, reverse=True))


class Redactor:
    """A streaming filter over bytes: ``write`` → safe bytes, ``release`` on a timer,
    ``flush`` at the end of the stream.

    Parameters:
        needles: the :class:`NeedleSet` of the job (may grow while the stream runs).

    Not thread-safe by itself; the owner (a log stream) serialises calls.
    """

    def __init__(self, needles: NeedleSet | Iterable[bytes | str]) -> None:
        if isinstance(needles, NeedleSet):
            self._set = needles
        else:
            self._set = NeedleSet()
            for value in needles:
                self._set.add(value)
        self._version = -1
        self._needles: tuple[bytes, ...] = ()
        self._maxlen = 0
        self._buf = b""
        # Leading bytes of _buf that the output already shows as a mask.
        self._covered = 0

    def _refresh(self) -> None:
        version, needles = self._set.snapshot()
        if version != self._version:
            self._version = version
            self._needles = needles
            self._maxlen = max((len(n) for n in needles), default=0)

    @property
    def held(self) -> int:
        """Bytes currently held back (not yet visible in the output in any form)."""
        return len(self._buf) - self._covered

    def write(self, data: bytes) -> bytes:
        """Feed bytes; returns the bytes that are safe to show now."""
        self._refresh()
        self._buf += data
        return self._process(final=False)

    def release(self) -> bytes:
        """Timer tick: show the held tail as a mask rather than keep holding it."""
        self._refresh()
        out = self._process(final=False)
        if len(self._buf) > self._covered:
            if self._covered == 0:
                out += MASK
            self._covered = len(self._buf)
        return out

    def flush(self) -> bytes:
        """End of stream: everything left is released (a partial prefix is not a secret)."""
        self._refresh()
        out = self._process(final=True)
        self._buf = b""
        self._covered = 0
        return out

    def _intervals(self) -> list[tuple[int, int]]:
        buf = self._buf
        spans: list[tuple[int, int]] = []
        for needle in self._needles:
            start = buf.find(needle)
            while start != -1:
                spans.append((start, start + len(needle)))
                start = buf.find(needle, start + 1)
        spans.sort()
        merged: list[tuple[int, int]] = []
        for s, e in spans:
            if merged and s <= merged[-1][1]:
                if e > merged[-1][1]:
                    merged[-1] = (merged[-1][0], e)
            else:
                merged.append((s, e))
        return merged

    def _hold_from(self) -> int:
        """Earliest position whose suffix is a proper prefix of a needle (else len)."""
        buf = self._buf
        n = len(buf)
        best = n
        for needle in self._needles:
            first = needle[:1]
            p = buf.find(first, max(0, n - len(needle) + 1))
            while p != -1 and p < best:
                # p > n - len(needle), so buf[p:] is shorter than the needle.
                if needle.startswith(buf[p:]):
                    best = p
                    break
                p = buf.find(first, p + 1)
        return best

    def _process(self, *, final: bool) -> bytes:
        buf = self._buf
        if not buf:
            return b""
        intervals = self._intervals()
        cut = len(buf) if final else self._hold_from()
        out = bytearray()
        covered = self._covered
        pos = 0
        new_covered = 0
        for s, e in intervals:
            if s >= cut:
                break
            if pos < s:
                out += self._raw(pos, s, covered)
            if e <= covered:
                pass  # wholly inside what the output already shows as a mask
            elif s < covered:
                pass  # continues the mask already shown: adds nothing visible
            else:
                out += MASK
            if e > cut:
                # A complete match straddles the cut: show it now, swallow its rest later.
                new_covered = e - cut
                pos = cut
                break
            pos = e
        else:
            if pos < cut:
                out += self._raw(pos, cut, covered)
            pos = cut
        if pos < cut:
            out += self._raw(pos, cut, covered)
        # Bytes of a previously shown mask that are beyond the cut stay covered.
        new_covered = max(new_covered, covered - cut)
        self._buf = buf[cut:]
        self._covered = min(new_covered, len(self._buf))
        return bytes(out)

    def _raw(self, start: int, end: int, covered: int) -> bytes:
        # Bytes under an already-shown mask are not shown again.
        return self._buf[max(start, covered) : end] if end > covered else b""


def structlog_masker(
    needles: NeedleSet,
) -> Callable[[Any, str, MutableMapping[str, Any]], Mapping[str, Any]]:
    """A structlog processor masking every secret in the event's string values (our own
    logs: an exception message may quote what a command printed)."""

    def mask(logger: Any, method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        if not needles.needles:
            return event
        return {k: needles.mask_text(v) if isinstance(v, str) else v for k, v in event.items()}

    return mask
