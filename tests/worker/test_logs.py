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


# --- caps per stream, the setup log's reserve ----------------------------------------------


def test_a_task_flooding_past_the_job_cap_leaves_the_setup_log_its_reserve() -> None:
    # Given a job cap of 10 000 bytes, 1 000 of them kept for the setup log
    sink = RecordingSink()
    streamer = LogStreamer(sink, NeedleSet(), max_bytes=10_000, setup_reserve=1_000)
    setup, task = streamer.open(SETUP_LOG), streamer.open("flood")
    setup.write(b"[#1] Running task flood\n")
    # When a task writes 100 times the cap
    for _ in range(1000):
        task.write(b"y" * 1000)
    # Then the setup log still takes the build's last lines
    setup.write(b"[#1] Uploaded /x (3 bytes): http://artifacts/x\n[#1] Build complete.\n")
    streamer.close()
    assert sink.text(SETUP_LOG).endswith(b"[#1] Build complete.\n")
    flood = sink.text("flood")
    assert flood.count(b"Log truncated") == 1
    assert b"this job's logs reached their limit of 10000 bytes" in flood
    # And the task log says once, at its end, how much was dropped
    kept = len(flood.split(b"\n[buildworker]")[0])
    assert kept == 10_000 - 1_000 - len(b"[#1] Running task flood\n")
    assert flood.endswith(
        f"\n[buildworker] {1_000_000 - kept} bytes of output were dropped (this job's logs "
        "reached their limit of 10000 bytes).\n".encode()
    )
    assert flood.count(b"bytes of output were dropped") == 1
    assert streamer.budget.dropped == 1_000_000 - kept


def test_each_task_log_has_its_own_cap_so_the_next_task_still_logs() -> None:
    sink = RecordingSink()
    streamer = LogStreamer(sink, NeedleSet(), max_bytes=10_000, max_task_bytes=3_000)
    first, second = streamer.open("first"), streamer.open("second")
    first.write(b"a" * 5_000)
    second.write(b"b" * 2_000)
    streamer.close()
    out = sink.text("first")
    assert out.startswith(b"a" * 3_000 + b"\n[buildworker] Log truncated: this log reached its")
    assert b"2000 bytes of output were dropped (this log reached its limit of 3000 bytes)" in out
    assert sink.text("second") == b"b" * 2_000  # untouched, nothing appended


def test_a_truncated_task_log_skips_the_redactor_for_what_it_drops() -> None:
    sink = RecordingSink()
    streamer = LogStreamer(sink, NeedleSet(), max_bytes=1_000)
    task = streamer.open("flood")
    task.write(b"z" * 2_000)  # truncated here
    calls: list[int] = []
    real = task._redactor.write

    def counting(data: bytes) -> bytes:
        calls.append(len(data))
        return real(data)

    task._redactor.write = counting  # type: ignore[method-assign]
    for _ in range(100):
        task.write(b"z" * 10_000)
    streamer.close()
    assert calls == [] and task.pending == 0
    assert task.dropped == 1_000 + 100 * 10_000


def test_an_overflowing_setup_log_still_ends_with_its_last_lines_masked() -> None:
    # Given a setup log that itself floods past the whole job cap (a huge package install)
    needles = NeedleSet()
    needles.add("hunter2-secret", "token")
    sink = RecordingSink()
    streamer = LogStreamer(sink, needles, max_bytes=5_000, setup_reserve=1_000)
    setup = streamer.open(SETUP_LOG)
    for n in range(20_000):
        setup.write(f"unpacking package {n}\n".encode())
    setup.write(b"[#1] Error: token hunter2-secret refused\n[#1] Build failed.\n")
    streamer.close()
    out = sink.text(SETUP_LOG)
    # Then the log was cut once, says how much it dropped, and its end still arrives
    assert out.count(b"Log truncated") == 1
    assert b"bytes of output were dropped" in out
    assert out.endswith(b"[#1] Error: token [MASKED] refused\n[#1] Build failed.\n")
    assert b"hunter2" not in out
    # The kept tail is bounded, and starts on a line
    tail = out.split(b"bytes of it:\n", 1)[1]
    assert len(tail) <= 64 * 1024 and tail.startswith(b"unpacking package ")
