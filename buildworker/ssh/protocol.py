"""The framing spoken on the worker's control socket, between the forced command and the daemon.

A frame is one type byte, a 4-byte big-endian length and that many payload bytes. The client
(``buildworker ssh shell``, running as the SSH user) opens with one ``REQUEST`` frame; from
then on the server streams ``OUTPUT``/``MESSAGE``/``RAW`` frames and ends with ``EXIT``, and
the client sends ``INPUT``/``EOF``/``WINDOW`` frames (keystrokes, end of stdin, terminal size).

    client → server   REQUEST {"op": "connect"|"tail", "job": N, "user": NAME,
                               "command": str|null, "pty": {"term", "cols", "rows"}|null}
                      INPUT bytes · EOF · WINDOW (cols, rows as two uint16)
    server → client   OUTPUT bytes (for stdout) · MESSAGE text (for stderr, cooked mode)
                      RAW (the interactive part starts: raw terminal) · EXIT int32 status

Pure: no sockets here, so framing is tested over arbitrary chunk boundaries.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

__all__ = [
    "EOF",
    "EXIT",
    "INPUT",
    "MAX_PAYLOAD",
    "MESSAGE",
    "OUTPUT",
    "RAW",
    "REQUEST",
    "WINDOW",
    "Frame",
    "FrameDecoder",
    "ProtocolError",
    "decode_exit",
    "decode_request",
    "decode_window",
    "encode",
    "exit_frame",
    "request_frame",
    "window_frame",
]

REQUEST = b"J"
INPUT = b"I"
EOF = b"E"
WINDOW = b"W"
OUTPUT = b"O"
MESSAGE = b"M"
RAW = b"R"
EXIT = b"X"
_TYPES = frozenset({REQUEST, INPUT, EOF, WINDOW, OUTPUT, MESSAGE, RAW, EXIT})
#: Largest payload of one frame, in bytes (output is sent in far smaller pieces).
MAX_PAYLOAD = 1024 * 1024
_HEADER = struct.Struct(">cI")


class ProtocolError(ValueError):
    """Bytes on the control socket that are not frames of this protocol."""


@dataclass(frozen=True)
class Frame:
    kind: bytes
    payload: bytes = b""


def encode(kind: bytes, payload: bytes = b"") -> bytes:
    if kind not in _TYPES:
        raise ProtocolError(f"unknown frame type {kind!r}")
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"frame payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return _HEADER.pack(kind, len(payload)) + payload


def request_frame(request: dict[str, Any]) -> bytes:
    return encode(REQUEST, json.dumps(request, separators=(",", ":")).encode("utf-8"))


def decode_request(frame: Frame) -> dict[str, Any]:
    if frame.kind != REQUEST:
        raise ProtocolError("the first frame must be a request")
    try:
        data = json.loads(frame.payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("the request is not JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("the request is not a JSON object")
    return data


def window_frame(cols: int, rows: int) -> bytes:
    return encode(WINDOW, struct.pack(">HH", max(0, min(cols, 0xFFFF)), max(0, min(rows, 0xFFFF))))


def decode_window(frame: Frame) -> tuple[int, int]:
    if len(frame.payload) != 4:
        raise ProtocolError("a window frame carries 4 bytes")
    cols, rows = struct.unpack(">HH", frame.payload)
    return int(cols), int(rows)


def exit_frame(status: int) -> bytes:
    return encode(EXIT, struct.pack(">i", status))


def decode_exit(frame: Frame) -> int:
    if len(frame.payload) != 4:
        raise ProtocolError("an exit frame carries 4 bytes")
    return int(struct.unpack(">i", frame.payload)[0])


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes as they arrive, get the complete frames back."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while len(self._buf) >= _HEADER.size:
            kind, length = _HEADER.unpack_from(self._buf)
            if kind not in _TYPES:
                raise ProtocolError(f"unknown frame type {kind!r}")
            if length > MAX_PAYLOAD:
                raise ProtocolError(f"frame payload of {length} bytes exceeds {MAX_PAYLOAD}")
            end = _HEADER.size + length
            if len(self._buf) < end:
                break
            frames.append(Frame(kind, bytes(self._buf[_HEADER.size : end])))
            del self._buf[:end]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf)
