"""LogStreamer: redacted, offset-addressed chunks, timely flushes, a capped job."""

from __future__ import annotations

import threading
import time

from buildworker.worker.logs import SETUP_LOG, LogStreamer, setup_line
from buildworker.worker.redact import NeedleSet


class RecordingSink:
    """Collects chunks in memory (a real sink is the API client or the terminal)."""

    def __init__(self, fail: bool = False) -> None:
        self.chunks: list[tuple[str, int, bytes, float]] = []
        self.fail = fail
        self.lock = threading.Lock()

    def send_chunk(self, log: str, offset: int, data: bytes) -> None:
        if self.fail:
            raise OSError("sink down")
        with self.lock:
            self.chunks.append((log, offset, data, time.monotonic()))

    def text(self, log: str) -> bytes:
        with self.lock:
            return b"".join(c[2] for c in self.chunks if c[0] == log)


def test_chunks_carry_contiguous_offsets_and_mask_split_secrets() -> None:
    needles = NeedleSet()
    needles.add("sup3r-s3cret", "deploy token")
    sink = RecordingSink()
    streamer = LogStreamer(sink, needles, flush_interval_s=0.05).start()
    stream = streamer.open("build")
    for piece in (b"token: sup3r", b"-s3", b"cret\r\n", b"done\r\n"):
        stream.write(piece)
        time.sleep(0.06)
    streamer.close()
    assert sink.text("build") == b"token: [MASKED]\r\ndone\r\n"
    expected = 0
    for log, offset, data, _ in sink.chunks:
        assert log == "build" and offset == expected
        expected += len(data)


def test_output_is_sent_within_the_flush_interval_without_closing() -> None:
    sink = RecordingSink()
    streamer = LogStreamer(sink, NeedleSet(), flush_interval_s=0.25).start()
    try:
        stream = streamer.open(SETUP_LOG)
        written = time.monotonic()
        stream.write(b"hello\n")
        deadline = written + 2
        while not sink.chunks and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sink.chunks, "nothing sent before close"
        assert sink.chunks[0][3] - written <= 0.25 + 0.1
    finally:
        streamer.close()


def test_the_job_cap_ends_a_log_with_one_truncation_line() -> None:
    sink = RecordingSink()
    streamer = LogStreamer(sink, NeedleSet(), max_bytes=100, flush_interval_s=10)
    setup, task = streamer.open(SETUP_LOG), streamer.open("build")
    setup.write(b"a" * 60)
    task.write(b"b" * 60)
    task.write(b"c" * 60)
    streamer.close()
    assert sink.text(SETUP_LOG) == b"a" * 60
    out = sink.text("build")
    assert out.startswith(b"b" * 40 + b"\n[buildworker] Log truncated")
    assert out.count(b"Log truncated") == 1 and b"ccc" not in out
    assert streamer.budget.dropped == 80


def test_a_failing_sink_is_counted_not_raised() -> None:
    streamer = LogStreamer(RecordingSink(fail=True), NeedleSet(), flush_interval_s=10)
    streamer.open(SETUP_LOG).write(b"x\n")
    streamer.close()
    assert streamer.failed_chunks == 1


def test_setup_lines_look_like_builds_sr_ht() -> None:
    assert setup_line(42, "Booting image", now=0) == b"[#42] 1970/01/01 00:00:00 Booting image\n"


def test_new_output_goes_out_at_once_but_a_held_secret_prefix_waits_for_the_interval() -> None:
    needles = NeedleSet()
    needles.add("abcdefgh-secret", "token")
    sink = RecordingSink()
    streamer = LogStreamer(sink, needles, flush_interval_s=1.0).start()
    try:
        stream = streamer.open("build")
        written = time.monotonic()
        stream.write(b"plain line\r\nabcd")  # "abcd" could begin the secret: held
        deadline = written + 2
        while not sink.chunks and time.monotonic() < deadline:
            time.sleep(0.005)
        assert sink.chunks and sink.chunks[0][3] - written < 0.3
        assert sink.text("build") == b"plain line\r\n"
        # The held prefix is given the interval to continue, then shown as a mask
        time.sleep(0.5)
        assert sink.text("build") == b"plain line\r\n"
        time.sleep(0.7)
        assert sink.text("build") == b"plain line\r\n[MASKED]"
    finally:
        streamer.close()
