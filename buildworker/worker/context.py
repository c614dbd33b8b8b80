"""What one build carries through the pipeline: the job, the guest, the logs, the cancel token."""

from __future__ import annotations

import base64
import shlex
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import structlog

from buildworker.manifest import Manifest
from buildworker.secret_types import SECRET_TYPES
from buildworker.worker.errors import Cancelled, InfraError
from buildworker.worker.interfaces import GuestSession, Image
from buildworker.worker.logs import SETUP_LOG, ChunkSink, LogStream, LogStreamer, setup_line

__all__ = [
    "BuildContext",
    "BuildResult",
    "CancelToken",
    "JobSpec",
    "Reporter",
    "SecretMaterial",
]


@dataclass(frozen=True)
class SecretMaterial:
    """A decrypted secret as the claim returns it. ``data`` is never logged."""

    uuid: str
    name: str | None
    type: str
    data: bytes = field(repr=False)
    path: str | None = None
    mode: int | None = None

    @classmethod
    def from_claim(cls, item: Mapping[str, Any]) -> SecretMaterial:
        """From one entry of the claim's ``secrets`` list; raises ValueError naming the field."""
        kind = item.get("type")
        if kind not in SECRET_TYPES:
            raise ValueError(
                f"secrets.type: expected one of {', '.join(SECRET_TYPES)}, got {kind!r}"
            )
        try:
            data = base64.b64decode(str(item.get("data_b64") or ""), validate=True)
        except ValueError:
            raise ValueError("secrets.data_b64: not valid base64") from None
        mode = item.get("mode")
        if isinstance(mode, str):
            mode = int(mode, 8)
        return cls(
            uuid=str(item.get("uuid") or ""),
            name=item.get("name"),
            type=str(kind),
            data=data,
            path=item.get("path"),
            mode=mode,
        )


@dataclass(frozen=True)
class JobSpec:
    """Everything the pipeline needs about one job (from a claim, or from `buildworker run`)."""

    job_id: int
    attempt: int
    manifest: Manifest
    secrets: tuple[SecretMaterial, ...] = ()
    job_url: str = ""
    owner: str = ""
    timeout_s: float = 45 * 60.0
    extra_env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildResult:
    """How a build ended: ``status`` is success|failed|timeout|cancelled."""

    status: str
    reason: str | None = None
    infrastructure: bool = False
    #: The job could not start as submitted (bad manifest, unknown image, no VM booted).
    setup_error: bool = False
    task_statuses: Mapping[str, str] = field(default_factory=dict)
    #: boot request to SSH answering (builds.sr.ht's "settle"), and its two halves
    boot_s: float | None = None
    vm_boot_s: float | None = None
    settle_s: float | None = None
    #: first SSH login to the first task's start (None: setup did not get that far)
    setup_s: float | None = None
    #: (status, seconds) of each task that ran, in order (names stay out of metrics)
    task_timings: tuple[tuple[str, float], ...] = ()
    first_task_byte_s: float | None = None
    failed_chunks: int = 0
    #: which part broke, for an infrastructure failure (metrics.INFRA_REASONS)
    infra_reason: str | None = None
    #: fresh-VM retries after a failed boot or settle
    boot_retries: int = 0
    #: the VM was kept for SSH sessions after the tasks (standby or ``shell: true``)
    held: bool = False
    #: the status was reported to the API already (a standby reports before its window)
    reported: bool = False


class Reporter(ChunkSink, Protocol):
    """Where a build's live results go: the internal API, or the terminal."""

    def task_status(self, name: str, status: str) -> None: ...

    def upload_artifact(self, guest_path: str, source: IO[bytes], size: int) -> str:
        """Store one artifact; returns its URL (or local path)."""
        ...


class CancelToken:
    """Why and when a build stops early. The first reason wins; ``event`` is what blocking
    guest calls watch (``GuestSession.run(cancel=...)``)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: str | None = None
        self._lock = threading.Lock()

    def cancel(self, reason: str = "cancelled") -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()

    def raise_if_set(self) -> None:
        if self.event.is_set():
            raise Cancelled(self.reason or "cancelled")


@dataclass
class BuildContext:
    """One build in progress. Steps read the job and talk to the guest through it."""

    spec: JobSpec
    image: Image
    conn: GuestSession
    logs: LogStreamer
    reporter: Reporter
    cancel: CancelToken
    deadline: float  # time.monotonic() by which the build must end
    task_statuses: dict[str, str] = field(default_factory=dict)
    first_task_byte_at: float | None = None
    first_task_started_at: float | None = None
    task_timings: list[tuple[str, float]] = field(default_factory=list)
    max_artifact_bytes: int = 1024**3
    log: Any = field(default_factory=lambda: structlog.get_logger())
    #: called once when the first task starts (SSH `connect` stops showing the setup log)
    on_first_task: Callable[[], None] | None = None
    _task_started: dict[str, float] = field(default_factory=dict, repr=False)

    @property
    def manifest(self) -> Manifest:
        return self.spec.manifest

    @property
    def home(self) -> str:
        return self.image.homedir

    @property
    def setup(self) -> LogStream:
        return self.logs.open(SETUP_LOG)

    def say(self, message: str) -> None:
        """One timestamped line in the setup log."""
        self.setup.write(setup_line(self.spec.job_id, message))

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def run(self, command: str, *, output: LogStream | None = None, pty: bool = False) -> int:
        """Run ``command`` in the guest, output into ``output`` (default: the setup log).

        Raises:
            Cancelled: the build was cancelled or timed out (before or during the command).
            InfraError: the SSH connection broke.
        """
        self.cancel.raise_if_set()
        sink = output or self.setup
        try:
            status = self.conn.run(
                command,
                pty=pty,
                on_output=sink.write,
                timeout=self.remaining() or 0.001,
                cancel=self.cancel.event,
            )
        except Exception as exc:
            if self.remaining() <= 0.5:
                # The command hit the job's deadline a moment before the deadline timer did.
                self.cancel.cancel("timeout")
            self.cancel.raise_if_set()
            raise InfraError(f"lost the guest while running a command: {exc}") from exc
        self.cancel.raise_if_set()
        return status

    def set_task_status(self, name: str, status: str) -> None:
        """Record and report a task's status (logs are flushed first so they stay in order)."""
        self.logs.flush(release=False)
        now = time.monotonic()
        if status == "running":
            self._task_started[name] = now
            if self.first_task_started_at is None:
                self.first_task_started_at = now
                if self.on_first_task is not None:
                    self.on_first_task()
        elif name in self._task_started:
            self.task_timings.append((status, now - self._task_started.pop(name)))
        self.task_statuses[name] = status
        self.reporter.task_status(name, status)


def home_path(home: str, path: str) -> str:
    """A guest path for the shell: ``~`` and relative paths are under ``home``; quoted."""
    if path == "~":
        return shlex.quote(home)
    if path.startswith("~/"):
        path = path[2:]
    if not path.startswith("/"):
        return shlex.quote(f"{home.rstrip('/')}/{path}")
    return shlex.quote(path)
