"""The live feed `tail` reads: bounded, ordered, many readers; task lines prefixed."""

from __future__ import annotations

import threading
import time

from buildworker.worker.livefeed import LiveFeed, TailRenderer, tee_reporter
from buildworker.worker.logs import SETUP_LOG


def test_readers_follow_from_a_cursor_and_see_the_end() -> None:
    feed = LiveFeed()
    feed.write(SETUP_LOG, b"booting\n")
    first = feed.read(feed.start_cursor(), 0.01)
    assert first.events == [(SETUP_LOG, b"booting\n")] and not first.ended

    def later() -> None:
        time.sleep(0.1)
        feed.write("build", b"make\n")
        feed.end("success")

    threading.Thread(target=later).start()
    # a reader waiting at the end is woken by the next write
    second = feed.read(first.cursor, 5.0)
    assert second.events == [("build", b"make\n")]
    third = feed.read(second.cursor, 5.0)
    assert third.ended and third.status == "success" and third.setup_finished


def test_the_buffer_is_bounded_and_late_readers_are_told_what_they_missed() -> None:
    feed = LiveFeed(keep_bytes=100)
    for i in range(50):
        feed.write("build", f"line {i:03}\n".encode())  # 9 bytes each
    read = feed.read(0, 0.01)
    assert sum(len(data) for _, data in read.events) <= 100
    assert read.events[-1] == ("build", b"line 049\n")
    assert read.skipped == 50 - len(read.events)


def test_finish_setup_wakes_a_waiting_reader() -> None:
    feed = LiveFeed()
    threading.Timer(0.1, feed.finish_setup).start()
    started = time.monotonic()
    read = feed.read(feed.start_cursor(), 10.0)
    assert read.setup_finished and time.monotonic() - started < 5


def test_tail_prefixes_task_lines_and_never_mixes_two_logs_on_a_line() -> None:
    renderer = TailRenderer()
    out = b"".join(
        [
            renderer.render(SETUP_LOG, b"[#1] 2026/01/01 00:00:00 Running task build\n"),
            renderer.render("build", b"compiling\r\nhalf a li"),
            renderer.render("build", b"ne\n"),
            renderer.render("test", b"progress 50%"),
            renderer.render("build", b"late\n"),
            renderer.finish(),
        ]
    )
    assert out.decode().splitlines() == [
        "[#1] 2026/01/01 00:00:00 Running task build",
        "[build] compiling",
        "[build] half a line",
        "[test] progress 50%",
        "[build] late",
    ]


def test_tee_reporter_feeds_the_chunks_and_passes_everything_on() -> None:
    class Inner:
        def __init__(self) -> None:
            self.chunks: list[tuple[str, int, bytes]] = []
            self.statuses: list[tuple[str, str]] = []
            self.custom = "kept"

        def send_chunk(self, log: str, offset: int, data: bytes) -> None:
            self.chunks.append((log, offset, data))

        def task_status(self, name: str, status: str) -> None:
            self.statuses.append((name, status))

    inner = Inner()
    feed = LiveFeed()
    reporter = tee_reporter(inner, feed)
    reporter.send_chunk("build", 0, b"out\n")
    reporter.task_status("build", "success")
    assert inner.chunks == [("build", 0, b"out\n")]
    assert inner.statuses == [("build", "success")]
    assert feed.read(0, 0.01).events == [("build", b"out\n")]
    assert reporter.custom == "kept"
