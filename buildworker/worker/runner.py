"""One build from start to end: image → boot and settle (retried once) → steps → teardown.

Shared by the daemon (reporter = the internal API) and `buildworker run` (the terminal). The
runner never talks to the broker or claims anything: the caller hands it a :class:`JobSpec`
and reports the returned :class:`BuildResult` (``finish``) after the VM is gone, because
"once we tell the API we're finished it might assign us new work" (Buildkite).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import structlog

from buildworker.ssh import texts
from buildworker.worker import pipeline
from buildworker.worker.apiclient import InternalApiError
from buildworker.worker.context import BuildContext, BuildResult, CancelToken, JobSpec, Reporter
from buildworker.worker.control import JobHandle
from buildworker.worker.errors import (
    BootError,
    BuildFailed,
    Cancelled,
    InfraError,
    SetupError,
)
from buildworker.worker.hold import HoldEnd, SessionHolder
from buildworker.worker.interfaces import BootedGuest, Catalogue, GuestSession, Image, VmHost
from buildworker.worker.logs import SETUP_LOG, LogStreamer, setup_line
from buildworker.worker.redact import NeedleSet

__all__ = ["BuildRunner", "RunnerSettings", "image_line"]

_STOP_LINES = {
    "cancelled": "Build cancelled.",
    "timeout": "Build timed out.",
    "drain": "Build stopped: this worker is shutting down; the job will run again.",
}


@dataclass(frozen=True)
class RunnerSettings:
    """Tunables of one build, in seconds and bytes (built once from worker.conf)."""

    settle_timeout_s: float = 120.0
    log_flush_s: float = 0.25
    max_log_bytes: int = 64 * 1024**2
    #: cap of each task log (None: the job's cap only) and the part of the job's cap kept
    #: for the setup log (buildworker.worker.logs)
    max_task_log_bytes: int | None = None
    setup_log_reserve_bytes: int = 0
    max_artifact_bytes: int = 1024**3
    #: Boot attempts for one build: a VM that fails to boot or settle is replaced once.
    boot_attempts: int = 2
    #: how long a failed build's VM waits for an SSH login (0: no standby)
    standby_s: float = 600.0
    #: how long a ``shell: true`` build's VM waits for a first SSH login
    shell_idle_s: float = 600.0
    #: secrets shorter than this are not masked (``[worker] mask-min-length``)
    mask_min_length: int = 4


@dataclass
class SshAccess:
    """A build reachable over SSH (`buildworker.worker.control`): its registry handle, the
    holder counting its sessions, and the command users connect with."""

    handle: JobHandle
    holder: SessionHolder
    connect_command: str
    #: told the result as soon as a failed build goes into standby (the API hears of the
    #: failure at once; triggers fire on time), before the VM is kept for the window
    report_early: Callable[[BuildResult], None] | None = None


def image_line(asked: str, name: str, arch: str, digest: str | None) -> str:
    """The setup log's line saying which image the job runs on: the release, the name the
    manifest asked for when it was an alias, the arch and the content digest."""
    alias = f" (asked as {asked})" if asked != name else ""
    return f"Image: {name}{alias}, {arch}, digest {digest or 'not recorded'}"


class BuildRunner:
    """Runs builds on one host.

    Parameters:
        catalogue: resolves the manifest's image and arch.
        vms: boots guests.
        settings: timeouts and caps.
    """

    def __init__(
        self,
        catalogue: Catalogue,
        vms: VmHost,
        settings: RunnerSettings,
        *,
        log_needles: NeedleSet | None = None,
    ) -> None:
        self._catalogue = catalogue
        self._vms = vms
        self._settings = settings
        # The process-wide needles our own structlog output is masked with (see
        # redact.structlog_masker): a job's secrets are in it while the job runs.
        self._log_needles = log_needles

    def run(
        self,
        spec: JobSpec,
        reporter: Reporter,
        cancel: CancelToken | None = None,
        *,
        log: Any = None,
        access: SshAccess | None = None,
        on_image: Callable[[Image], None] | None = None,
    ) -> BuildResult:
        """Run one build; never raises for anything the build or the VM did.

        ``log``: the logger to use (the daemon's, bound to the job); by default one bound
        to the job id, attempt and image, which every event of a build carries.
        ``on_image``: told the image once resolved, before the boot (the daemon reports it
        to the API for the job record); what it raises is logged, never the build's end.
        """
        cancel = cancel or CancelToken()
        if log is None:
            log = structlog.get_logger().bind(
                job_id=spec.job_id, attempt=spec.attempt, image=spec.manifest.image
            )
        needles = NeedleSet(min_len=self._settings.mask_min_length)
        added: list[bytes] = []
        for secret in spec.secrets:
            needles.add(secret.data, secret.name or secret.uuid)
            if self._log_needles is not None:
                added += self._log_needles.add(secret.data, secret.name or secret.uuid)
        try:
            return self._run(spec, reporter, cancel, needles, log, access, on_image)
        finally:
            if self._log_needles is not None:
                self._log_needles.discard(added)

    def _run(
        self,
        spec: JobSpec,
        reporter: Reporter,
        cancel: CancelToken,
        needles: NeedleSet,
        log: structlog.typing.FilteringBoundLogger,
        access: SshAccess | None = None,
        on_image: Callable[[Image], None] | None = None,
    ) -> BuildResult:
        """The phases of one build: boot and steps (each outcome mapped to a result once),
        the hold for SSH sessions, then teardown in ``finally`` (always), then the record."""
        logs = LogStreamer(
            reporter,
            needles,
            max_bytes=self._settings.max_log_bytes,
            max_task_bytes=self._settings.max_task_log_bytes,
            setup_reserve=self._settings.setup_log_reserve_bytes,
            flush_interval_s=self._settings.log_flush_s,
        ).start()
        setup = logs.open(SETUP_LOG)

        def say(message: str) -> None:
            setup.write(setup_line(spec.job_id, message))

        for name in needles.too_short:
            say(f"Warning: secret {name} is too short to be masked in logs")
        state = _BuildState(started=time.monotonic(), on_image=on_image)
        timer = threading.Timer(spec.timeout_s, cancel.cancel, args=("timeout",))
        timer.daemon = True
        timer.start()
        result = BuildResult("failed", "the build did not start")
        try:
            result = self._boot_and_steps(spec, reporter, cancel, logs, say, log, access, state)
            if access is not None and state.ctx is not None and self._may_hold(spec, result):
                state.held = True
                try:
                    result, state.end_message = self._hold(spec, result, access, logs, say, log)
                except Exception:  # a bug of ours in the hold: the build's result stands
                    log.exception("hold_crashed")
        finally:
            timer.cancel()
            if access is not None:
                # Sessions see why they end, tails see the end, before the VM goes.
                access.handle.end(
                    result.status if state.held else "stopped", state.end_message, wait_s=3.0
                )
            self._teardown(state.guest, state.conn, log)
        return self._record(spec, result, state, logs, say, log)

    def _boot_and_steps(
        self,
        spec: JobSpec,
        reporter: Reporter,
        cancel: CancelToken,
        logs: LogStreamer,
        say: Callable[[str], None],
        log: structlog.typing.FilteringBoundLogger,
        access: SshAccess | None,
        state: _BuildState,
    ) -> BuildResult:
        """Resolve, boot and settle, run the steps; every way this ends is mapped to a
        result here (the guest layer's errors were mapped to these by `BuildContext`)."""
        deadline = state.started + spec.timeout_s
        try:
            asked = spec.manifest.image
            try:
                # The release the API resolved an alias to, when it did: the job was routed
                # to that release's queue and its record names it.
                image = self._catalogue.resolve(spec.image or asked, spec.manifest.arch)
            except Exception as exc:  # the catalogue's own errors: the image is unusable
                raise SetupError(str(exc)) from exc
            say(image_line(asked, image.name, image.arch, image.digest))
            if state.on_image is not None:
                try:
                    state.on_image(image)
                except Exception as exc:  # the record misses it; the build goes on
                    log.warning("image_report_failed", error=str(exc))
            state.guest, state.conn, state.times = self._boot(
                spec, image, cancel, deadline, say, log
            )
            state.ready_at = time.monotonic()
            if access is not None:
                access.handle.attach_guest(state.conn)  # type: ignore[arg-type]
            state.ctx = BuildContext(
                spec=spec,
                image=image,
                conn=state.conn,
                logs=logs,
                reporter=reporter,
                cancel=cancel,
                deadline=deadline,
                max_artifact_bytes=self._settings.max_artifact_bytes,
                log=log,
                on_first_task=None if access is None else access.handle.finish_setup,
            )
            pipeline.run_steps(state.ctx)
            return BuildResult("success")
        except SetupError as exc:
            say(f"Error: {exc}")
            return BuildResult("failed", str(exc), setup_error=True)
        except BuildFailed as exc:
            return BuildResult("failed", str(exc))
        except Cancelled as exc:
            say(_STOP_LINES.get(exc.reason, f"Build stopped ({exc.reason})."))
            return BuildResult(exc.reason, str(exc))
        except InfraError as exc:
            reason = cancel.reason
            if reason is not None:  # the guest went away because we stopped it
                return BuildResult(reason, f"build {reason}")
            say(f"Error: {exc}")
            state.infra_reason = _infra_reason(exc)
            return BuildResult(
                "failed", str(exc), infrastructure=True, setup_error=isinstance(exc, BootError)
            )
        except Exception as exc:
            # The outermost edge of the build: anything else is a bug of ours. Report it as
            # one (an infrastructure failure, so the job is retried) and keep the slot.
            log.exception("build_crashed")
            state.infra_reason = "other"
            say(f"Error: internal error in the worker: {type(exc).__name__}: {exc}")
            return BuildResult("failed", f"internal error: {exc}", infrastructure=True)

    def _record(
        self,
        spec: JobSpec,
        result: BuildResult,
        state: _BuildState,
        logs: LogStreamer,
        say: Callable[[str], None],
        log: structlog.typing.FilteringBoundLogger,
    ) -> BuildResult:
        """After teardown: settle the task statuses, end the setup log, and return the
        result with what was measured."""
        ctx, times = state.ctx, state.times
        setup_s: float | None = None
        timings: tuple[tuple[str, float], ...] = ()
        statuses: dict[str, str] = {}
        first: float | None = None
        if ctx is not None:
            try:
                ctx.wait_reports()
            except Exception as exc:  # after the build: a lost report must not hide the end
                ctx.log.warning("task_status_failed", error=str(exc))
            self._settle_task_statuses(ctx, result)
            statuses = dict(ctx.task_statuses)
            first = ctx.first_task_byte_at
            timings = tuple(ctx.task_timings)
            if ctx.first_task_started_at is not None:
                setup_s = ctx.first_task_started_at - state.ready_at
            elif result.status == "success":  # a manifest with no tasks: setup was all of it
                setup_s = time.monotonic() - state.ready_at
        if not result.reported:  # a standby's log already said it, before the window
            say(f"Build {result.status}." if result.status != "success" else "Build complete.")
        logs.close()
        log.info(
            "build_finished",
            status=result.status,
            reason=result.reason,
            duration_s=round(time.monotonic() - state.started, 3),
        )
        return replace(
            result,
            task_statuses=statuses,
            boot_s=None if times is None else times.total_s,
            vm_boot_s=None if times is None else times.boot_s,
            settle_s=None if times is None else times.settle_s,
            boot_retries=0 if times is None else times.retries,
            start_path=None if times is None else times.path,
            setup_s=setup_s,
            task_timings=timings,
            infra_reason=state.infra_reason,
            held=state.held,
            first_task_byte_s=None if first is None else first - state.started,
            failed_chunks=logs.failed_chunks,
        )

    def _may_hold(self, spec: JobSpec, result: BuildResult) -> bool:
        """``shell: true`` holds after the tasks whatever they did; a standby follows a
        build that failed because of what it ran (not our infrastructure, not a bad
        manifest), when ``[worker] standby`` is not 0."""
        if result.status not in ("success", "failed") or result.infrastructure:
            return False
        if result.setup_error:
            return False
        if spec.manifest.shell:
            return True
        return result.status == "failed" and self._settings.standby_s > 0

    def _hold(
        self,
        spec: JobSpec,
        result: BuildResult,
        access: SshAccess,
        logs: LogStreamer,
        say: Callable[[str], None],
        log: structlog.typing.FilteringBoundLogger,
    ) -> tuple[BuildResult, str | None]:
        """Keep the VM for SSH sessions (failure standby or ``shell: true``); returns the
        build's result and what to tell open sessions when it ends."""
        holder = access.holder
        if spec.manifest.shell:
            window = self._settings.shell_idle_s
            say(f"Build environment ready (shell: true). Connect with: {access.connect_command}")
            say(
                f"It will be terminated {max(1, round(window / 60))} min after the tasks unless "
                "someone logs in, or when the last session logs out."
            )
        else:
            window = min(self._settings.standby_s, max(0.0, holder.deadline() - time.time()))
            logs.open(SETUP_LOG).write(
                texts.standby_notice(window, access.connect_command).encode()
            )
            logs.flush(release=False)
            result = replace(result, reported=True)
            if access.report_early is not None:
                access.report_early(result)
        log.info(
            "hold_started", mode="shell" if spec.manifest.shell else "standby", window_s=window
        )
        end = holder.hold(window)
        log.info("hold_ended", end=str(end), reason=holder.cancel_reason)
        if end is HoldEnd.CANCELLED:
            reason = holder.cancel_reason
            if reason == "timeout":
                message = texts.DEADLINE_ELAPSED
            elif reason == "cancelled":
                message = texts.BUILD_CANCELLED
                if not result.reported:
                    result = replace(result, status="cancelled", reason="build cancelled")
            else:
                message = "The build worker is shutting down. Terminating build environment."
            say(message)
            return result, message
        if end is HoldEnd.DEADLINE:
            say(texts.DEADLINE_ELAPSED)
            return result, texts.DEADLINE_ELAPSED
        if end is HoldEnd.WINDOW:
            say("Nobody logged in: terminating build environment.")
        else:
            say("The last session logged out: terminating build environment.")
        return result, None

    def _boot(
        self,
        spec: JobSpec,
        image: Image,
        cancel: CancelToken,
        deadline: float,
        say: Callable[[str], None],
        log: structlog.typing.FilteringBoundLogger,
    ) -> tuple[BootedGuest, GuestSession, _BootTimes]:
        """Boot and settle, on a fresh VM once more if the first fails.

        Raises:
            BootError: no VM answered after every attempt.
            Cancelled: the build was cancelled or timed out meanwhile.
        """
        last: Exception | None = None
        stage = "boot"
        for try_no in range(1, self._settings.boot_attempts + 1):
            cancel.raise_if_set()
            t0 = time.monotonic()
            say(f"Booting image {image.name} ({image.arch})")
            guest: BootedGuest | None = None
            stage = "boot"
            try:
                guest = self._vms.boot(image, job_id=spec.job_id, attempt=spec.attempt)
                t1 = time.monotonic()
                if guest.start_note:  # which way it was started, and why (docs/images.md)
                    say(f"Warm start: {guest.start_note}")
                stage = "settle"
                say("Waiting for guest to settle")
                budget = min(self._settings.settle_timeout_s, max(0.0, deadline - time.monotonic()))
                conn = guest.wait_ready(budget, cancel=cancel.event)
            except Cancelled:
                if guest is not None:
                    self._teardown(guest, None, log)
                raise
            except Exception as exc:  # libvirt's, the guest layer's: this VM is no good
                if guest is not None:
                    self._teardown(guest, None, log)
                cancel.raise_if_set()  # stopped while booting: that stop, not a boot failure
                last = exc
                log.warning("boot_failed", try_no=try_no, stage=stage, error=str(exc))
                say(f"Error: the VM did not boot or settle: {exc}")
                if try_no < self._settings.boot_attempts:
                    say("Retrying on a fresh VM")
                continue
            t2 = time.monotonic()
            path = guest.start_path
            say(f"Guest settled in {t2 - t0:.1f}s ({_PATH_WORDS.get(path, path)})")
            log.info(
                "guest_ready", domain=guest.domain_name, boot_s=round(t2 - t0, 3), start_path=path
            )
            return guest, conn, _BootTimes(t2 - t0, t1 - t0, t2 - t1, try_no - 1, path)
        raise BootError(f"the VM failed to boot or settle: {last}", stage=stage)

    @staticmethod
    def _teardown(
        guest: BootedGuest | None,
        conn: GuestSession | None,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        """Close SSH and destroy the VM; errors are logged, never raised."""
        if conn is not None:
            try:
                conn.close()
            except Exception as exc:  # teardown must reach the destroy below whatever this was
                log.warning("ssh_close_failed", error=str(exc))
        if guest is not None:
            try:
                guest.destroy()
            except Exception as exc:  # the outermost edge of teardown: log it, the reaper retries
                log.error("vm_destroy_failed", error=str(exc))

    @staticmethod
    def _settle_task_statuses(ctx: BuildContext, result: BuildResult) -> None:
        """A task still ``running`` when the build stopped ends ``failed`` (never stuck)."""
        if result.status == "success":
            return
        for name, status in list(ctx.task_statuses.items()):
            if status == "running":
                try:
                    ctx.set_task_status(name, "failed")
                except Exception as exc:  # after the build: a lost report must not hide the end
                    ctx.log.warning("task_status_failed", task=name, error=str(exc))


@dataclass
class _BuildState:
    """What one build has so far: what teardown must undo and what the record reports."""

    started: float
    guest: BootedGuest | None = None
    conn: GuestSession | None = None
    ctx: BuildContext | None = None
    times: _BootTimes | None = None
    ready_at: float = 0.0
    infra_reason: str | None = None
    held: bool = False
    end_message: str | None = None
    on_image: Callable[[Image], None] | None = None


@dataclass(frozen=True)
class _BootTimes:
    """How long the VM that answered took: in all, to running, and to its first login."""

    total_s: float
    boot_s: float
    settle_s: float
    #: VMs replaced before this one answered
    retries: int
    #: "cold", "snapshot" or "pool" (Guest.start_path)
    path: str = "cold"


_PATH_WORDS = {"cold": "cold boot", "snapshot": "restored from snapshot", "pool": "warm pool"}


def _infra_reason(exc: InfraError) -> str:
    """The bounded ``reason`` label of an infrastructure failure (metrics.INFRA_REASONS)."""
    if isinstance(exc, BootError):
        return exc.stage
    if isinstance(exc, InternalApiError):
        return "api"
    return "ssh"  # the rest of InfraError is the guest connection breaking
