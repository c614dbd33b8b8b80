"""Live job logs: redacted, cut into offset-addressed chunks, flushed on a timer, capped.

One :class:`LogStreamer` per job owns a flusher thread and any number of :class:`LogStream`
objects (the setup log and one per task). Output written to a stream goes through the job's
:class:`~buildworker.worker.redact.Redactor` first, then into a buffer; the flusher sends
what is buffered at least every ``flush_interval_s`` through an injected :class:`ChunkSink`
(the API client or the terminal). Each chunk carries the byte offset it starts at, so a
retried upload is idempotent on the API side (Buildkite's log streamer, STYLE.md §2.4).

The cap is per job, across all its logs: when it is reached, the stream that hit it gets one
truncation line and everything after that is dropped (counted, not sent).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

import structlog

from buildworker.worker.redact import NeedleSet, Redactor

__all__ = ["SETUP_LOG", "ChunkSink", "LogBudget", "LogStream", "LogStreamer", "setup_line"]

#: The key of the setup log (boot, settle, steps, errors). Task logs are keyed by task name;
#: "#" can never start one (names match ^[a-z0-9_-]+$), so a task called "setup" — common in
#: real manifests — gets a log of its own.
SETUP_LOG = "#setup"
#: Largest chunk sent in one call, in bytes.
MAX_CHUNK_BYTES = 256 * 1024
#: Pause after new output before it is sent, so a burst becomes one chunk, in seconds.
COALESCE_S = 0.02
#: How often held-back bytes are checked against the flush interval, in seconds.
RELEASE_CHECK_S = 0.05


class ChunkSink(Protocol):
    """Where chunks go. ``send_chunk`` blocks until the chunk is stored (retrying as it sees
    fit) and raises when it gives up; the streamer counts that as a failed chunk."""

    def send_chunk(self, log: str, offset: int, data: bytes) -> None: ...


def setup_line(job_id: int | str, message: str, now: float | None = None) -> bytes:
    """A setup-log line as builds.sr.ht writes it: ``[#<id>] YYYY/MM/DD HH:MM:SS <message>``."""
    stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.gmtime(time.time() if now is None else now))
    return f"[#{job_id}] {stamp} {message}\n".encode()


class LogBudget:
    """The per-job byte allowance shared by all of a job's logs (thread-safe)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self.dropped = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> int:
        """Reserve up to ``n`` bytes; returns how many may be kept."""
        with self._lock:
            allowed = max(0, min(n, self.max_bytes - self.used))
            self.used += allowed
            self.dropped += n - allowed
            return allowed


class LogStream:
    """One log (setup or a task): ``write`` raw output, ``close`` at the end."""

    def __init__(
        self,
        name: str,
        sink: ChunkSink,
        redactor: Redactor,
        budget: LogBudget,
        on_failed_chunk: Callable[[], None],
        on_data: Callable[[], None] = lambda: None,
    ) -> None:
        self.name = name
        self._on_data = on_data
        self._sink = sink
        self._redactor = redactor
        self._budget = budget
        self._on_failed_chunk = on_failed_chunk
        self._buf = bytearray()
        self._lock = threading.Lock()  # guards _buf, the redactor, _truncated, _closed
        self._send_lock = threading.Lock()  # one sender at a time keeps offsets in order
        self.offset = 0  # bytes the sink has accepted
        self._truncated = False
        self._closed = False
        self._broken = False
        self.first_byte_at: float | None = None
        # When the redactor started holding bytes back (None: it holds nothing).
        self.held_since: float | None = None
        self._log = structlog.get_logger().bind(log=name)

    def _append(self, data: bytes) -> None:
        if not data or self._truncated:
            if self._truncated:
                self._budget.dropped += len(data)
            return
        allowed = self._budget.take(len(data))
        self._buf += data[:allowed]
        if allowed < len(data):
            self._truncated = True
            self._buf += (
                b"\n[buildworker] Log truncated: this job's logs reached the limit of "
                + str(self._budget.max_bytes).encode()
                + b" bytes; further output is dropped.\n"
            )

    def write(self, data: bytes) -> None:
        """Append raw output (may hold a secret or part of one); never blocks on the network."""
        if self.first_byte_at is None and data:
            self.first_byte_at = time.monotonic()
        with self._lock:
            if self._closed:
                return
            self._append(self._redactor.write(data))
            ready = bool(self._buf)
            self._note_held()
        if ready:
            self._on_data()

    def _note_held(self) -> None:
        if self._redactor.held == 0:
            self.held_since = None
        elif self.held_since is None:
            self.held_since = time.monotonic()

    def tick(self, release: bool = True, held_for_s: float = 0.0) -> None:
        """Flusher tick: with ``release``, show what the redactor has held for at least
        ``held_for_s`` seconds (as a mask); then send what is buffered."""
        if release:
            with self._lock:
                since = self.held_since
                if (
                    not self._closed
                    and since is not None
                    and time.monotonic() - since >= held_for_s
                ):
                    self._append(self._redactor.release())
                    self._note_held()
        self._send()

    def close(self) -> None:
        """End of this log: everything left is redacted, released and sent (idempotent)."""
        with self._lock:
            if not self._closed:
                self._append(self._redactor.flush())
                self._closed = True
        self._send()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._buf)

    def _send(self) -> None:
        with self._send_lock:
            while True:
                with self._lock:
                    if not self._buf or self._broken:
                        return
                    chunk = bytes(self._buf[:MAX_CHUNK_BYTES])
                try:
                    self._sink.send_chunk(self.name, self.offset, chunk)
                except Exception as exc:  # the sink already retried; stop this log, count it
                    self._log.error("log_chunk_failed", offset=self.offset, error=str(exc))
                    self._broken = True
                    self._on_failed_chunk()
                    return
                with self._lock:
                    del self._buf[: len(chunk)]
                    self.offset += len(chunk)


class LogStreamer:
    """A job's logs and the thread that flushes them.

    Parameters:
        sink: where chunks go.
        needles: the job's secrets (shared; may grow mid-job).
        max_bytes: per-job cap over all logs.
        flush_interval_s: longest time output waits in memory before it is sent, in seconds.
    """

    def __init__(
        self,
        sink: ChunkSink,
        needles: NeedleSet,
        *,
        max_bytes: int = 64 * 1024**2,
        flush_interval_s: float = 0.25,
    ) -> None:
        self._sink = sink
        self._needles = needles
        self.budget = LogBudget(max_bytes)
        self.flush_interval_s = flush_interval_s
        self._streams: dict[str, LogStream] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.failed_chunks = 0

    def _failed(self) -> None:
        with self._lock:
            self.failed_chunks += 1

    def open(self, name: str) -> LogStream:
        """The stream for log ``name`` (created on first use)."""
        with self._lock:
            stream = self._streams.get(name)
            if stream is None:
                stream = LogStream(
                    name,
                    self._sink,
                    Redactor(self._needles),
                    self.budget,
                    self._failed,
                    self._wake.set,
                )
                self._streams[name] = stream
            return stream

    def start(self) -> LogStreamer:
        self._thread = threading.Thread(target=self._run, name="log-flusher", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        # Output is sent soon after it arrives (after a short pause that lets a burst of
        # PTY reads coalesce into one chunk). Bytes the redactor holds back are checked every
        # RELEASE_CHECK_S and shown (as a mask) once held for the rest of the interval, so
        # nothing written waits longer than the interval, and text that merely ends on what
        # looks like the start of a secret is given the whole interval to continue.
        check = min(RELEASE_CHECK_S, self.flush_interval_s)
        held_for = max(0.0, self.flush_interval_s - check)
        next_check = time.monotonic() + check
        while not self._stop.is_set():
            self._wake.wait(max(0.0, next_check - time.monotonic()))
            if self._stop.is_set():
                return
            if self._wake.is_set():
                time.sleep(COALESCE_S)
                self._wake.clear()
            release = time.monotonic() >= next_check
            if release:
                next_check = time.monotonic() + check
            self.flush(release=release, held_for_s=held_for)

    def flush(self, release: bool = True, held_for_s: float = 0.0) -> None:
        """Send what every stream has buffered; with ``release``, also what a redactor has
        held back for at least ``held_for_s`` seconds."""
        with self._lock:
            streams = list(self._streams.values())
        for stream in streams:
            stream.tick(release, held_for_s)

    def close(self) -> None:
        """Stop the flusher, then close and send every stream (call once, at job end)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            streams = list(self._streams.values())
        for stream in streams:
            stream.close()
