"""What one build carries through the pipeline: the job, the guest, the logs, the cancel token."""

from __future__ import annotations

import base64
import contextlib
import shlex
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO, Protocol

import structlog

from buildworker.contract import ClaimedSecret
from buildworker.guest.errors import (
    CommandCancelled,
    CommandTimeout,
    FileTooLarge,
    GuestFileError,
    GuestLayerError,
    ImageConfigError,
    UnknownImage,
    UnsupportedOperation,
)
from buildworker.manifest import Manifest
from buildworker.secret_types import SECRET_TYPES
from buildworker.worker.errors import BuildFailed, Cancelled, InfraError, SetupError, WorkerError
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
    def from_claim(cls, item: ClaimedSecret) -> SecretMaterial:
        """From one entry of the claim's ``secrets``; raises ValueError naming the field."""
        if item.type not in SECRET_TYPES:
            raise ValueError(
                f"secrets.type: expected one of {', '.join(SECRET_TYPES)}, got {item.type!r}"
            )
        try:
            data = base64.b64decode(item.data_b64, validate=True)
        except ValueError:
            raise ValueError("secrets.data_b64: not valid base64") from None
        mode = item.mode
        if isinstance(mode, str):
            try:
                mode = int(mode, 8)
            except ValueError:
                raise ValueError(f"secrets.mode: expected octal digits, got {mode!r}") from None
        return cls(
            uuid=item.uuid,
            name=item.name,
            type=item.type,
            data=data,
            path=item.path,
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
    #: the release to boot, as the API resolved the manifest's image at submit (an alias
    #: such as debian/stable → debian/bookworm); None: resolve the manifest's image here
    image: str | None = None


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
    #: how the guest that ran the build was started: "cold", "snapshot" or "pool"
    start_path: str | None = None
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
    _report: threading.Thread | None = field(default=None, repr=False)
    _report_error: BaseException | None = field(default=None, repr=False)

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

    # -- the guest, through the one error boundary ----------------------------------------
    # Steps reach the guest only through these three methods; each maps an error of the
    # guest layer (buildworker.guest.errors) to a build outcome in one place (`_outcome`).

    def run(
        self,
        command: str,
        *,
        output: LogStream | None = None,
        pty: bool = False,
        on_output: Callable[[bytes], None] | None = None,
        stdin: bytes | None = None,
    ) -> int:
        """Run ``command`` in the guest, output into ``output`` (default: the setup log) or
        to ``on_output``; returns its exit status. ``stdin`` is fed to the command (then
        end of file); it needs ``pty=False``.

        Raises:
            Cancelled: the build was cancelled or timed out (before or during the command).
            InfraError: the SSH connection broke or the guest went away.
        """
        self.cancel.raise_if_set()
        sink = on_output or (output or self.setup).write
        with self._guest_call("running a command"):
            status = self.conn.run(
                command,
                pty=pty,
                on_output=sink,
                timeout=self.remaining() or 0.001,
                cancel=self.cancel.event,
                stdin=stdin,
            )
        self.cancel.raise_if_set()
        return status

    def upload(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write a file in the guest (raises as `run`; a file the guest refuses is
        BuildFailed)."""
        self.cancel.raise_if_set()
        with self._guest_call(f"writing {path}"):
            self.conn.upload(path, data, mode)

    def download(self, path: str, sink: BinaryIO, max_size: int) -> int:
        """Copy a guest file into ``sink``; returns its size. A missing file or one over
        ``max_size`` is BuildFailed (what the build left), the rest raises as `run`."""
        self.cancel.raise_if_set()
        with self._guest_call(f"reading {path}"):
            return self.conn.download(path, sink, max_size)

    @contextlib.contextmanager
    def _guest_call(self, what: str) -> Iterator[None]:
        try:
            yield
        except GuestLayerError as exc:
            raise guest_outcome(exc, what, self.cancel, self.remaining()) from exc

    def set_task_status(self, name: str, status: str) -> None:
        """Record and report a task's status (logs are flushed first so they stay in order).

        "running" is reported off the critical path: the task's command starts while the
        setup log is flushed and the API told (two HTTP calls that would come before the
        first task byte otherwise). The next status waits for that report, so the API sees
        a task's statuses in order, and an error of it is raised there."""
        self.wait_reports()
        now = time.monotonic()
        if status == "running":
            self._task_started[name] = now
            if self.first_task_started_at is None:
                self.first_task_started_at = now
                if self.on_first_task is not None:
                    self.on_first_task()
            self.task_statuses[name] = status
            self._report = threading.Thread(
                target=self._send_status, args=(name, status), name="task-status", daemon=True
            )
            self._report.start()
            return
        if name in self._task_started:
            self.task_timings.append((status, now - self._task_started.pop(name)))
        self.logs.flush(release=False)
        self.task_statuses[name] = status
        self.reporter.task_status(name, status)

    def _send_status(self, name: str, status: str) -> None:
        try:
            self.logs.flush(release=False)
            self.reporter.task_status(name, status)
        # Not the edge of anything: the error is handed to wait_reports, which raises it in
        # the build's own thread.
        except BaseException as exc:
            self._report_error = exc

    def wait_reports(self) -> None:
        """Wait for a status report still being sent; raise its error, if it failed."""
        report, self._report = self._report, None
        if report is not None:
            report.join()
        error, self._report_error = self._report_error, None
        if error is not None:
            raise error


def guest_outcome(
    exc: GuestLayerError, what: str, cancel: CancelToken, remaining_s: float
) -> WorkerError:
    """What an error of the guest layer means for the build (the one mapping).

    Our own stop comes first: a command cut short because the build was cancelled or timed
    out (the guest destroyed under it, the channel closed) is that stop, never an
    infrastructure failure. Then: a command's own timeout is the job's timeout; a file the
    guest does not have or that is over its cap is the build's doing; an unknown image is
    a setup error; everything else (transport lost, guest gone, host key) is ours.
    """
    if remaining_s <= 0.5:
        # The command hit the job's deadline a moment before the deadline timer did.
        cancel.cancel("timeout")
    if cancel.is_set():
        return Cancelled(cancel.reason or "cancelled")
    if isinstance(exc, CommandTimeout):
        return Cancelled("timeout")
    if isinstance(exc, CommandCancelled):
        return Cancelled("cancelled")
    if isinstance(exc, (FileTooLarge, GuestFileError)):
        return BuildFailed(str(exc))
    if isinstance(exc, (UnknownImage, ImageConfigError, UnsupportedOperation)):
        return SetupError(str(exc))
    return InfraError(f"lost the guest while {what}: {exc}")


def home_path(home: str, path: str) -> str:
    """A guest path for the shell: ``~`` and relative paths are under ``home``; quoted."""
    if path == "~":
        return shlex.quote(home)
    if path.startswith("~/"):
        path = path[2:]
    if not path.startswith("/"):
        return shlex.quote(f"{home.rstrip('/')}/{path}")
    return shlex.quote(path)
