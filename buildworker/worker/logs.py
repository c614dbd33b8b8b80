"""Live job logs: redacted, cut into offset-addressed chunks, flushed on a timer, capped.

One :class:`LogStreamer` per job owns a flusher thread and any number of :class:`LogStream`
objects (the setup log and one per task). Output written to a stream goes through the job's
:class:`~buildworker.worker.redact.Redactor` first, then into a buffer; the flusher sends
what is buffered at least every ``flush_interval_s`` through an injected :class:`ChunkSink`
(the API client or the terminal). Each chunk carries the byte offset it starts at, so a
retried upload is idempotent on the API side (Buildkite's log streamer, STYLE.md §2.4).

Caps, per stream and per job (``[worker] max-log-size``, ``max-task-log-size``,
``setup-log-reserve``): a task log stops at its own cap and at the job's, less a reserve that
only the setup log may use, so a task that floods its log cannot silence the setup log's last
lines (the build's end, errors, artifact URLs). A stream that reaches a cap gets one truncation
line; what follows is discarded cheaply (a task log no longer even passes it through the
redactor: only its length is counted) and, when the stream closes, one line says how many bytes
were dropped. Should the setup log itself overflow, its last ``SETUP_TAIL_BYTES`` are kept
(redacted) and sent after that line, so its end still arrives.
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
#: How much of the end of an overflowing setup log is kept and sent when it closes, in bytes.
SETUP_TAIL_BYTES = 64 * 1024


class ChunkSink(Protocol):
    """Where chunks go. ``send_chunk`` blocks until the chunk is stored (retrying as it sees
    fit) and raises when it gives up; the streamer counts that as a failed chunk."""

    def send_chunk(self, log: str, offset: int, data: bytes) -> None: ...


def setup_line(job_id: int | str, message: str, now: float | None = None) -> bytes:
    """A setup-log line as builds.sr.ht writes it: ``[#<id>] YYYY/MM/DD HH:MM:SS <message>``."""
    stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.gmtime(time.time() if now is None else now))
    return f"[#{job_id}] {stamp} {message}\n".encode()


class LogBudget:
    """The per-job byte allowance shared by all of a job's logs (thread-safe).

    ``reserve`` bytes of ``max_bytes`` are kept for the setup log: other logs stop when the
    job has used ``max_bytes - reserve``, the setup log only at ``max_bytes``.
    """

    def __init__(self, max_bytes: int, reserve: int = 0) -> None:
        self.max_bytes = max_bytes
        self.reserve = max(0, min(reserve, max_bytes))
        self.used = 0
        self.dropped = 0
        self._lock = threading.Lock()

    def take(self, n: int, *, reserved: bool = False) -> int:
        """Reserve up to ``n`` bytes (``reserved``: the setup log, which may use the reserve);
        returns how many may be kept. What is refused counts as dropped."""
        with self._lock:
            limit = self.max_bytes if reserved else self.max_bytes - self.reserve
            allowed = max(0, min(n, limit - self.used))
            self.used += allowed
            self.dropped += n - allowed
            return allowed

    def count_dropped(self, n: int) -> None:
        with self._lock:
            self.dropped += n


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
        *,
        max_bytes: int | None = None,
    ) -> None:
        self.name = name
        #: this stream's own cap (the job's budget applies as well); None: the budget only
        self.max_bytes = max_bytes
        self.is_setup = name == SETUP_LOG
        self.kept = 0  # bytes of output accepted (before any truncation notice)
        self.dropped = 0  # bytes of output discarded past a cap
        self._limit_reason = ""
        # The end of an overflowing setup log, redacted; None for task logs (not kept).
        self._tail: bytearray | None = bytearray() if self.is_setup else None
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
        if not data:
            return
        if self._truncated:
            self._discard(data)
            return
        wanted = len(data)
        if self.max_bytes is not None:
            wanted = min(wanted, max(0, self.max_bytes - self.kept))
        allowed = self._budget.take(wanted, reserved=self.is_setup)
        self._budget.count_dropped(len(data) - wanted)
        self._buf += data[:allowed]
        self.kept += allowed
        if allowed < len(data):
            self._truncated = True
            if allowed < wanted or self.max_bytes is None:
                self._limit_reason = (
                    f"this job's logs reached their limit of {self._budget.max_bytes} bytes"
                )
            else:
                self._limit_reason = f"this log reached its limit of {self.max_bytes} bytes"
            self._buf += (
                f"\n[buildworker] Log truncated: {self._limit_reason}; "
                "further output is dropped.\n".encode()
            )
            self._keep_tail(data[allowed:])
            self.dropped += len(data) - allowed

    def _discard(self, data: bytes) -> None:
        """Output past a cap: counted, and for the setup log its end kept (bounded)."""
        self.dropped += len(data)
        self._budget.count_dropped(len(data))
        self._keep_tail(data)

    def _keep_tail(self, data: bytes) -> None:
        if self._tail is None:
            return
        self._tail += data
        if len(self._tail) > 2 * SETUP_TAIL_BYTES:  # trim in bulk: amortised O(1) per byte
            del self._tail[: len(self._tail) - SETUP_TAIL_BYTES]

    def _closing_lines(self) -> bytes:
        """What a truncated stream says when it closes: how much was dropped, and for the
        setup log its last lines."""
        if not self._truncated:
            return b""
        out = (
            f"\n[buildworker] {self.dropped} bytes of output were dropped ({self._limit_reason}).\n"
        ).encode()
        if self._tail:
            tail = bytes(self._tail[-SETUP_TAIL_BYTES:])
            newline = tail.find(b"\n")
            if 0 <= newline < len(tail) - 1 and len(self._tail) > SETUP_TAIL_BYTES:
                tail = tail[newline + 1 :]  # start on a line boundary
            out += f"[buildworker] The last {len(tail)} bytes of it:\n".encode() + tail
        return out

    def write(self, data: bytes) -> None:
        """Append raw output (may hold a secret or part of one); never blocks on the network."""
        if self.first_byte_at is None and data:
            self.first_byte_at = time.monotonic()
        with self._lock:
            if self._closed:
                return
            if self._truncated and self._tail is None:
                self._discard(data)  # a task log past its cap: no redaction, no copy
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
                self._buf += self._closing_lines()
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
        max_bytes: per-job cap over all logs, in bytes.
        max_task_bytes: cap of each task log, in bytes (None: the job's cap only).
        setup_reserve: bytes of ``max_bytes`` only the setup log may use.
        flush_interval_s: longest time output waits in memory before it is sent, in seconds.
    """

    def __init__(
        self,
        sink: ChunkSink,
        needles: NeedleSet,
        *,
        max_bytes: int = 64 * 1024**2,
        max_task_bytes: int | None = None,
        setup_reserve: int = 0,
        flush_interval_s: float = 0.25,
    ) -> None:
        self._sink = sink
        self._needles = needles
        self.budget = LogBudget(max_bytes, setup_reserve)
        self.max_task_bytes = max_task_bytes
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
                    max_bytes=None if name == SETUP_LOG else self.max_task_bytes,
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
