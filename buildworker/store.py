"""The file store of the API tier: job logs and artifacts under one directory.

Layout (relative to the store root)::

    logs/<job>/log               the setup log
    logs/<job>/<task>/log        one log per task
    logs/<job>/log.task/log      the log of a task literally named ``log`` (see below)
    artifacts/<job>/<segment>/<name>

Task names match ``^[a-z0-9_-]+$``, so ``log.task`` can never be another task's name: it
only exists because ``logs/<job>/log`` is already the setup log *file* and cannot also be
the directory of a task called ``log``.

Logs grow by appends at an explicit byte offset, which makes a retried chunk harmless:
the part already on disk is skipped, the rest appended; a chunk that would leave a hole
raises `LogGap` carrying the current size, so the writer can resume from there. An
exclusive `flock` per file serialises appends from several threads or API processes.

Artifacts are written to a temporary file next to their final place and renamed once
complete, so a reader never sees half an artifact and a failed upload leaves nothing.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "ArtifactTooLarge",
    "InvalidName",
    "LogGap",
    "Store",
    "StoreError",
    "read_range",
]

#: What a task name may look like (the manifest's rule, repeated here as a path guard).
_TASK_NAME = re.compile(r"^[a-z0-9_-]{1,128}$")
#: An artifact's basename must be a plain file name.
_BAD_ARTIFACT_NAMES = {"", ".", ".."}
#: How much one read() of a log range returns at most.
READ_CHUNK = 64 * 1024


class StoreError(Exception):
    """Base class of the store's errors."""


class InvalidName(StoreError, ValueError):
    """A task, segment or artifact name that is not safe to use as a path component."""


class LogGap(StoreError):
    """An append whose offset lies past the end of the log; ``size`` is the current size."""

    def __init__(self, size: int, offset: int) -> None:
        super().__init__(f"offset {offset} is past the end of the log ({size} bytes)")
        self.size = size
        self.offset = offset


class ArtifactTooLarge(StoreError):
    """An artifact that grew past the size cap while being written; nothing was kept."""

    def __init__(self, max_size: int) -> None:
        super().__init__(f"artifact exceeds the maximum size of {max_size} bytes")
        self.max_size = max_size


def _check_task(task: str) -> None:
    if not _TASK_NAME.match(task):
        raise InvalidName(f"invalid task name {task!r}")


class Store:
    """Logs and artifacts of every job, under ``root``.

    Parameters:
        root: the store directory; created (with parents) on first write, not here.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # --- logs -----------------------------------------------------------------------------

    def log_path(self, job_id: int, task: str | None = None) -> Path:
        """Where the setup log (``task=None``) or a task's log lives."""
        base = self.root / "logs" / str(int(job_id))
        if task is None:
            return base / "log"
        _check_task(task)
        return base / ("log.task" if task == "log" else task) / "log"

    def log_size(self, job_id: int, task: str | None = None) -> int | None:
        """Size in bytes, or None when nothing was ever written to that log."""
        try:
            return self.log_path(job_id, task).stat().st_size
        except FileNotFoundError:
            return None

    def append_log(self, job_id: int, task: str | None, offset: int, data: bytes) -> int:
        """Write ``data`` so that it starts at byte ``offset``; return the size afterwards.

        The bytes below the current size are assumed to be the same as already stored (a
        retried chunk) and skipped. Raises `LogGap` when ``offset`` is past the end.
        """
        if offset < 0:
            raise ValueError("offset must not be negative")
        path = self.log_path(job_id, task)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if offset > size:
                raise LogGap(size, offset)
            new = data[size - offset :]
            if new:
                os.pwrite(fd, new, size)
                size += len(new)
            return size
        finally:
            os.close(fd)  # closing releases the flock

    def read_log(self, job_id: int, task: str | None, start: int, end: int) -> Iterator[bytes]:
        """Yield the bytes ``[start, end)`` of a log in chunks (end is clamped to the size)."""
        return read_range(self.log_path(job_id, task), start, end)

    def reset_logs(self, job_id: int) -> None:
        """Forget every log of a job (a new attempt starts its logs from zero)."""
        shutil.rmtree(self.root / "logs" / str(int(job_id)), ignore_errors=True)

    # --- artifacts ------------------------------------------------------------------------

    def artifact_key(self, job_id: int, segment: str, name: str) -> str:
        """The storage key (path relative to the root) of one artifact."""
        if not re.fullmatch(r"[0-9a-f]{8,64}", segment):
            raise InvalidName(f"invalid artifact segment {segment!r}")
        if name in _BAD_ARTIFACT_NAMES or "/" in name or "\0" in name:
            raise InvalidName(f"invalid artifact name {name!r}")
        return f"artifacts/{int(job_id)}/{segment}/{name}"

    def artifact_path(self, key: str) -> Path:
        """The file of a storage key; refuses keys that would leave the store."""
        path = (self.root / key).resolve()
        root = self.root.resolve()
        if root not in path.parents:
            raise InvalidName(f"storage key {key!r} is outside the store")
        return path

    @contextmanager
    def artifact_writer(self, key: str, max_size: int) -> Iterator[ArtifactSink]:
        """Open a sink for one artifact; it becomes visible only when the block ends cleanly.

        Raises `ArtifactTooLarge` from ``sink.write`` once more than ``max_size`` bytes came.
        """
        final = self.artifact_path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.{id(final)}.part")
        fh = tmp.open("wb")
        sink = ArtifactSink(fh, max_size)
        try:
            yield sink
            fh.close()
            os.replace(tmp, final)
        finally:
            if not fh.closed:
                fh.close()
            tmp.unlink(missing_ok=True)

    def remove_artifacts(self, job_id: int) -> None:
        shutil.rmtree(self.root / "artifacts" / str(int(job_id)), ignore_errors=True)


class ArtifactSink:
    """Counts what is written and stops at the cap (see `Store.artifact_writer`)."""

    def __init__(self, fh: BinaryIO, max_size: int) -> None:
        self._fh = fh
        self.max_size = max_size
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_size:
            raise ArtifactTooLarge(self.max_size)
        self._fh.write(data)


def read_range(path: Path, start: int, end: int) -> Iterator[bytes]:
    """Yield the bytes ``[start, end)`` of a file in chunks; stops early at end of file.

    Logs and artifacts are served through this, so a large file never sits in memory.
    """
    with path.open("rb") as fh:
        fh.seek(start)
        remaining = end - start
        while remaining > 0:
            chunk = fh.read(min(READ_CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk
