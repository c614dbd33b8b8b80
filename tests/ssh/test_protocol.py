"""The control socket's framing survives any chunking and refuses what is not a frame."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buildworker.ssh import protocol as proto

KINDS = [proto.INPUT, proto.OUTPUT, proto.MESSAGE, proto.EOF, proto.RAW]


@given(
    frames=st.lists(st.tuples(st.sampled_from(KINDS), st.binary(max_size=300)), max_size=20),
    cuts=st.lists(st.integers(min_value=1, max_value=50), max_size=40),
)
def test_frames_come_back_whole_whatever_the_chunking(
    frames: list[tuple[bytes, bytes]], cuts: list[int]
) -> None:
    wire = b"".join(proto.encode(kind, payload) for kind, payload in frames)
    decoder = proto.FrameDecoder()
    got: list[proto.Frame] = []
    pos = 0
    for cut in cuts:
        got += decoder.feed(wire[pos : pos + cut])
        pos += cut
    got += decoder.feed(wire[pos:])
    assert [(f.kind, f.payload) for f in got] == frames
    assert decoder.pending == 0


def test_request_window_and_exit_round_trip() -> None:
    decoder = proto.FrameDecoder()
    wire = (
        proto.request_frame({"op": "connect", "job": 7, "user": "alice"})
        + proto.window_frame(132, 43)
        + proto.exit_frame(-1)
    )
    request, window, status = decoder.feed(wire)
    assert proto.decode_request(request) == {"op": "connect", "job": 7, "user": "alice"}
    assert proto.decode_window(window) == (132, 43)
    assert proto.decode_exit(status) == -1


def test_unknown_frame_types_and_huge_lengths_are_refused() -> None:
    with pytest.raises(proto.ProtocolError, match="unknown frame type"):
        proto.FrameDecoder().feed(b"Z\x00\x00\x00\x00")
    with pytest.raises(proto.ProtocolError, match="exceeds"):
        proto.FrameDecoder().feed(b"O\xff\xff\xff\xff")
    with pytest.raises(proto.ProtocolError, match="not JSON"):
        proto.decode_request(proto.Frame(proto.REQUEST, b"{nope"))
    with pytest.raises(proto.ProtocolError, match="must be a request"):
        proto.decode_request(proto.Frame(proto.INPUT, b"{}"))
