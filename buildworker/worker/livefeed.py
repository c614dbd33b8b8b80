"""A job's live log output as the worker sent it, for ``tail`` and ``connect`` over SSH.

:class:`LiveFeed` keeps the most recent output of a job (already masked: it is fed from the
same chunks the log streamer sends to the API) in a bounded buffer, and lets any number of
readers follow it from a cursor. :func:`tee_reporter` puts it beside the job's reporter, so the
daemon feeds it with one line of wiring. :class:`TailRenderer` turns the events into what
``tail`` prints: the setup log as it is, each task's lines prefixed ``[task] ``.

Why the daemon's own stream and not the API's logs: the daemon has the bytes the moment they
leave the guest (the API would be polled, as builds.sr.ht polls every 3 s), it needs no user
token for private jobs, and ``connect`` during setup needs to know when setup ends, which only
the daemon knows. The buffer is bounded (``keep_bytes``), so a reader that joins late sees the
recent output, as ``tail -f`` shows the last lines of a file.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import IO, Any

from buildworker.worker.logs import SETUP_LOG

__all__ = [
    "DEFAULT_KEEP_BYTES",
    "FeedRead",
    "FeedingReporter",
    "LiveFeed",
    "TailRenderer",
    "tee_reporter",
]

#: Output kept for readers that join late, per job, in bytes.
DEFAULT_KEEP_BYTES = 256 * 1024


@dataclass(frozen=True)
class FeedRead:
    """What one ``LiveFeed.read`` returns: events after the cursor, the next cursor, and
    whether the build has ended (``status`` then says how)."""

    events: list[tuple[str, bytes]]
    cursor: int
    ended: bool
    status: str | None
    setup_finished: bool
    #: events the reader missed because the buffer had moved past its cursor
    skipped: int = 0


class LiveFeed:
    """Bounded, ordered, multi-reader buffer of ``(log, bytes)`` events (thread-safe)."""

    def __init__(self, keep_bytes: int = DEFAULT_KEEP_BYTES) -> None:
        self._keep = keep_bytes
        self._events: deque[tuple[int, str, bytes]] = deque()
        self._size = 0
        self._next = 0
        self._cond = threading.Condition()
        self._ended = False
        self._status: str | None = None
        self._setup_finished = False

    def write(self, log: str, data: bytes) -> None:
        """One chunk of log ``log`` (``SETUP_LOG`` or a task name)."""
        if not data:
            return
        with self._cond:
            self._events.append((self._next, log, data))
            self._next += 1
            self._size += len(data)
            while self._size > self._keep and len(self._events) > 1:
                _, _, old = self._events.popleft()
                self._size -= len(old)
            self._cond.notify_all()

    def finish_setup(self) -> None:
        """The setup steps are done (tasks begin): ``connect`` stops tailing and connects."""
        with self._cond:
            self._setup_finished = True
            self._cond.notify_all()

    def end(self, status: str) -> None:
        """The build is over (readers drain what is left, then stop)."""
        with self._cond:
            self._ended = True
            self._status = status
            self._setup_finished = True
            self._cond.notify_all()

    @property
    def ended(self) -> bool:
        with self._cond:
            return self._ended

    @property
    def setup_finished(self) -> bool:
        with self._cond:
            return self._setup_finished

    def start_cursor(self) -> int:
        """A cursor at the oldest event still kept (a new reader starts there)."""
        with self._cond:
            return self._events[0][0] if self._events else self._next

    def read(self, cursor: int, timeout: float) -> FeedRead:
        """Events from ``cursor`` on, waiting up to ``timeout`` seconds for the first one
        (or for setup to finish, or the end)."""
        with self._cond:
            if cursor >= self._next and not self._ended:
                was_setup = self._setup_finished
                self._cond.wait_for(
                    lambda: self._next > cursor or self._ended or self._setup_finished != was_setup,
                    timeout,
                )
            oldest = self._events[0][0] if self._events else self._next
            skipped = max(0, oldest - cursor)
            events = [(log, data) for seq, log, data in self._events if seq >= cursor]
            return FeedRead(
                events=events,
                cursor=self._next,
                ended=self._ended,
                status=self._status,
                setup_finished=self._setup_finished,
                skipped=skipped,
            )


class TailRenderer:
    """Render feed events as ``tail`` shows them: task lines prefixed ``[task] ``.

    Lines of different logs never share a line on screen: when output switches to another
    log in the middle of a line, a newline ends it first. ``crlf`` writes ``\\r\\n`` for a
    terminal in raw mode.
    """

    def __init__(self, crlf: bool = False) -> None:
        self._crlf = crlf
        self._last: str | None = None
        self._mid_line = False

    def _prefix(self, log: str) -> bytes:
        return b"" if log == SETUP_LOG else f"[{log}] ".encode()

    def render(self, log: str, data: bytes) -> bytes:
        out = bytearray()
        if self._last is not None and self._last != log and self._mid_line:
            out += b"\n"
            self._mid_line = False
        self._last = log
        prefix = self._prefix(log)
        normal = data.replace(b"\r\n", b"\n")
        for piece in normal.splitlines(keepends=True):
            if not self._mid_line:
                out += prefix
            out += piece
            self._mid_line = not piece.endswith(b"\n")
        text = bytes(out)
        return text.replace(b"\n", b"\r\n") if self._crlf else text

    def finish(self) -> bytes:
        """What ends the output cleanly (a newline if the last line was left open)."""
        if not self._mid_line:
            return b""
        self._mid_line = False
        return b"\r\n" if self._crlf else b"\n"


class FeedingReporter:
    """A job's reporter that also copies every log chunk into a :class:`LiveFeed`.

    Everything else is the wrapped reporter's (``task_status``, ``upload_artifact`` and any
    method added later).
    """

    def __init__(self, inner: Any, feed: LiveFeed) -> None:
        self._inner = inner
        self._feed = feed

    def send_chunk(self, log: str, offset: int, data: bytes) -> None:
        # The feed first: a chunk the API refuses was still shown to whoever follows the build.
        self._feed.write(log, data)
        self._inner.send_chunk(log, offset, data)

    def task_status(self, name: str, status: str) -> None:
        self._inner.task_status(name, status)

    def upload_artifact(self, guest_path: str, source: IO[bytes], size: int) -> str:
        result: str = self._inner.upload_artifact(guest_path, source, size)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def tee_reporter(inner: Any, feed: LiveFeed) -> FeedingReporter:
    """``inner`` with its log chunks copied into ``feed``."""
    return FeedingReporter(inner, feed)
