"""The worker process: build slots fed by the consumer, a heartbeat per job, the signal ladder.

A delivery arrives on the consumer thread and gets a slot thread of its own (the consumer
only delivers while a slot is free). The slot claims the job over the internal API, and only
then asks the consumer to ack; a refused claim (unknown job, attempt already claimed or
finished, job cancelled) dead-letters the delivery with the reason; an API that cannot be
reached requeues it. While the build runs, a heartbeat thread renews the lease and turns a
cancel seen in its answer into a stop of the build. ``finish`` is sent after the VM is gone.

Shutdown ladder: the first SIGTERM (or :meth:`Daemon.drain`) stops consuming, lets running
builds finish for up to ``[worker] drain-timeout``, then cancels them and releases their
leases so they requeue. A second SIGTERM, or SIGINT, stops at once (cancel + release). VMs
are torn down in every case (the runner's ``finally``).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import structlog

from buildworker.config import Config
from buildworker.contract import ClaimAnswer
from buildworker.exitcodes import EXIT_KILLED, EXIT_OK, EXIT_UNAUTHORIZED
from buildworker.manifest import ManifestError, parse_manifest
from buildworker.ssh.texts import connect_command
from buildworker.worker.apiclient import (
    Conflict,
    InternalApi,
    InternalApiError,
    NotFound,
    Unauthorized,
)
from buildworker.worker.consumer import Consumer, Delivery
from buildworker.worker.context import BuildResult, CancelToken, JobSpec, SecretMaterial
from buildworker.worker.control import ControlServer
from buildworker.worker.hold import SessionHolder
from buildworker.worker.interfaces import Catalogue, Image, VmHost
from buildworker.worker.logs import SETUP_LOG
from buildworker.worker.metrics import WorkerMetrics
from buildworker.worker.redact import NeedleSet
from buildworker.worker.report import ApiReporter
from buildworker.worker.runner import BuildRunner, RunnerSettings, SshAccess

__all__ = ["Daemon", "routes_of"]

#: Seconds between heartbeats; a cancel is seen within this (plus the API round trip).
HEARTBEAT_S = 1.0
#: Cancel reasons that end in ``release`` (the job requeues) instead of ``finish``.
RELEASE_REASONS = ("drain",)
#: Seconds the report of a job's image may take, retries included (it delays the boot).
REPORT_IMAGE_BUDGET_S = 5.0


def routes_of(served: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(image, arch) pairs from ``ImageCatalogue.served()``, aliases included."""
    return [(entry["image"], arch) for entry in served for arch in entry.get("arches", [])]


@dataclass
class _Running:
    job_id: int
    attempt: int
    cancel: CancelToken
    thread: threading.Thread
    started: float = field(default_factory=time.monotonic)
    #: SSH sessions into the build (None: this worker serves no SSH access)
    holder: SessionHolder | None = None
    #: set once the job's status was sent (a standby reports before keeping the VM): the
    #: heartbeat stops, and its 409 from then on is expected, not a lost lease
    reported: threading.Event = field(default_factory=threading.Event)


class Daemon:
    """One worker process.

    Parameters:
        config: the whole config (worker, broker, vm, api sections are read).
        catalogue: images this host serves (``served()`` is registered with the API).
        vms: boots guests.
        api: the internal API client.
    """

    def __init__(
        self,
        config: Config,
        catalogue: Catalogue,
        vms: VmHost,
        api: InternalApi,
        *,
        metrics: WorkerMetrics | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        log_needles: NeedleSet | None = None,
        control: ControlServer | None = None,
    ) -> None:
        self._config = config
        self._catalogue = catalogue
        self._api = api
        self._name = config.worker.name
        self._slots = max(1, config.worker.slots)
        self._heartbeat_s = heartbeat_s
        self.metrics = metrics or WorkerMetrics()
        api.on_error = self.metrics.api_error
        self._control = control
        self.metrics.slots_standby.set_function(self._holding)
        self._runner = BuildRunner(
            catalogue,
            vms,
            RunnerSettings(
                settle_timeout_s=config.vm.settle_timeout,
                log_flush_s=config.worker.log_flush,
                max_log_bytes=config.worker.max_log_size,
                max_task_log_bytes=config.worker.max_task_log_size,
                setup_log_reserve_bytes=config.worker.setup_log_reserve,
                max_artifact_bytes=config.api.max_artifact_size,
                standby_s=config.worker.standby,
                shell_idle_s=config.worker.shell_idle,
                mask_min_length=config.worker.mask_min_length,
            ),
            log_needles=log_needles,
        )
        self._lock = threading.Lock()
        self._busy = 0
        self._running: dict[int, _Running] = {}
        self._threads: list[threading.Thread] = []
        self._draining = threading.Event()
        self._stop_now = threading.Event()
        #: set when the API refused the worker token: the stop it causes is not a kill
        self._token_refused = threading.Event()
        self._consumer: Consumer | None = None
        self.jobs_done = 0
        self._log = structlog.get_logger().bind(worker=self._name)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Register with the API, start metrics and the consumer (returns at once)."""
        served_fn = getattr(self._catalogue, "served", None)
        served: list[dict[str, Any]] = served_fn() if served_fn is not None else []
        self._api.register(self._name, served)
        routes = routes_of(served)
        if not routes:
            raise RuntimeError("this host serves no images: nothing to consume")
        self.metrics.set_slots(self._slots)
        self._consumer = Consumer(
            self._config.broker.url,
            routes,
            self._on_delivery,
            capacity=self._slots,
            heartbeat_s=self._config.broker.heartbeat,
            reconnect_max_s=self._config.broker.reconnect_max,
        ).start()
        self._log.info("worker_started", slots=self._slots, routes=[f"{i}@{a}" for i, a in routes])

    @property
    def name(self) -> str:
        return self._name

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def load(self) -> tuple[int, int]:
        """(busy slots, slots). Takes the daemon's lock: a main loop wedged on it is what
        the watchdog is there to notice."""
        with self._lock:
            return self._busy, self._slots

    def broker_connected(self) -> bool:
        return self._consumer is not None and self._consumer.connected.is_set()

    def consumer_alive(self) -> bool:
        """The consumer thread runs (False before `start` and after the drain stopped it)."""
        return self._consumer is not None and self._consumer.is_alive()

    def broker_reconnects(self) -> int:
        return 0 if self._consumer is None else self._consumer.reconnects

    def install_signal_handlers(self) -> None:
        """SIGTERM: drain (second: stop now); SIGINT: stop now. Handlers only set events."""

        def on_term(signum: int, frame: FrameType | None) -> None:
            if self._draining.is_set():
                self._stop_now.set()
            self._draining.set()

        def on_int(signum: int, frame: FrameType | None) -> None:
            self._draining.set()
            self._stop_now.set()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_int)

    def drain(self) -> None:
        self._draining.set()

    def stop_now(self) -> None:
        self._draining.set()
        self._stop_now.set()

    def run_until_stopped(
        self,
        *,
        on_tick: Callable[[], None] | None = None,
        on_drain: Callable[[], None] | None = None,
    ) -> int:
        """Block until drained (or stopped); returns the exit code (`EXIT_OK` drained,
        `EXIT_KILLED` stopped at once, `EXIT_UNAUTHORIZED` the API refused the token).

        This is the main loop: ``on_tick`` runs on every turn of it, waiting and draining
        alike (the supervisor's readiness, STATUS= and watchdog health hang on it), and
        ``on_drain`` once when the drain begins (STOPPING=1).
        """
        tick = on_tick or (lambda: None)
        tick()
        while not self._draining.wait(0.5):
            tick()
        self._log.info("worker_draining", running=list(self._running))
        if on_drain is not None:
            on_drain()
        if self._consumer is not None:
            self._consumer.pause()
        deadline = time.monotonic() + self._config.worker.drain_timeout
        while self._has_running() and not self._stop_now.is_set():
            if time.monotonic() >= deadline:
                self._log.warning("drain_timeout", running=list(self._running))
                break
            self._end_holds()
            tick()
            self._stop_now.wait(0.2)
        for running in self._snapshot():
            running.cancel.cancel("drain")
        for thread in list(self._threads):
            while thread.is_alive():  # teardown takes seconds: keep the watchdog fed
                tick()
                thread.join(0.5)
        if self._consumer is not None:
            self._consumer.stop()
        self._log.info("worker_stopped", jobs_done=self.jobs_done)
        # A refused token stops at once too (stop_now), but systemd and the operator must
        # see why: every restart would be refused the same way until the token is fixed.
        if self._token_refused.is_set():
            return EXIT_UNAUTHORIZED
        return EXIT_KILLED if self._stop_now.is_set() else EXIT_OK

    def _end_holds(self) -> None:
        """A drain does not wait for SSH sessions: a VM kept for them (a standby, whose job
        is finished, or ``shell: true`` after its tasks) ends now, its sessions told why."""
        for running in self._snapshot():
            if running.holder is not None and running.holder.holding:
                running.cancel.cancel("drain")

    def _has_running(self) -> bool:
        with self._lock:
            return self._busy > 0

    def _snapshot(self) -> list[_Running]:
        with self._lock:
            return list(self._running.values())

    # -- deliveries ------------------------------------------------------------------------

    def _on_delivery(self, delivery: Delivery) -> None:
        """On the consumer thread: hand the delivery to a slot thread at once."""
        with self._lock:
            self._busy += 1
        thread = threading.Thread(
            target=self._slot, args=(delivery,), name=f"slot-{delivery.tag}", daemon=True
        )
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _free_slot(self) -> None:
        with self._lock:
            self._busy -= 1
            free = self._slots - self._busy
        if self._consumer is not None and not self._draining.is_set():
            self._consumer.set_capacity(free)

    def _slot(self, delivery: Delivery) -> None:
        assert self._consumer is not None and delivery.message is not None
        message = delivery.message
        # In this thread's context too, so that events of other loggers (the API client's
        # retries, the hypervisor's) carry the job as well.
        structlog.contextvars.bind_contextvars(job_id=message.job_id, attempt=message.attempt)
        log = self._log.bind(job_id=message.job_id, attempt=message.attempt)
        try:
            if self._draining.is_set():
                self._consumer.requeue(delivery)
                self.metrics.deliveries.labels(outcome="requeue").inc()
                return
            try:
                claim = self._api.claim(message.job_id, self._name, message.attempt)
            except (Conflict, NotFound) as exc:
                reason = f"job {message.job_id} attempt {message.attempt}: {exc}"
                log.info("claim_refused", reason=str(exc))
                self._consumer.dead_letter(delivery, reason)
                self.metrics.deliveries.labels(outcome="dead").inc()
                return
            except Unauthorized as exc:
                log.error("worker_token_refused", error=str(exc))
                self._consumer.requeue(delivery)
                self._token_refused.set()
                self.stop_now()
                return
            except InternalApiError as exc:
                log.warning("claim_failed", error=str(exc))
                self._consumer.requeue(delivery)
                self.metrics.deliveries.labels(outcome="requeue").inc()
                return
            # Acked only now: a redelivery of this message will find the attempt claimed.
            self._consumer.ack(delivery)
            self.metrics.deliveries.labels(outcome="ack").inc()
            self._build(message.job_id, message.attempt, claim, log)
        except Exception:  # a bug of ours must not take the slot down silently
            log.exception("slot_crashed")
        finally:
            self._free_slot()

    def _build(self, job_id: int, attempt: int, claim: ClaimAnswer, log: Any) -> None:
        cancel = CancelToken()
        running = _Running(job_id, attempt, cancel, threading.current_thread())
        image, arch = self._labels(claim)
        log = log.bind(image=image, arch=arch)
        structlog.contextvars.bind_contextvars(image=image)
        with self._lock:
            self._running[job_id] = running
        self.metrics.build_started(image, arch)
        wait_s = _queue_wait(claim.queued_at)
        if wait_s is not None:
            self.metrics.queue_wait.labels(image=image, arch=arch).observe(wait_s)
        heartbeat = threading.Thread(
            target=self._heartbeat, args=(running, log), name=f"heartbeat-{job_id}", daemon=True
        )
        heartbeat.start()
        reporter: Any = ApiReporter(
            self._api,
            job_id,
            attempt,
            on_log_bytes=self.metrics.log_bytes.inc,
            on_artifact_bytes=self.metrics.artifact_bytes.inc,
        )
        access = self._ssh_access(running, claim, log)
        if access is not None:
            reporter = access.handle.tee(reporter)  # feeds `tail` and `connect`
        try:
            try:
                spec = self._spec_from_claim(job_id, attempt, claim)
            except (ManifestError, ValueError) as exc:
                log.error("claim_unusable", error=str(exc))
                self._api.append_log(job_id, attempt, SETUP_LOG, 0, f"Error: {exc}\n".encode())
                self._api.finish(job_id, attempt, "failed", str(exc), False)
                return

            reports: list[threading.Thread] = []

            def report_image(image: Image) -> None:
                # Off the job's way (a pooled guest's first byte comes ~0.3 s after the
                # claim), with a short budget; joined before the job ends, so the record
                # has it when the job shows finished. A failure only costs the record its
                # digest: the setup log has it.
                def send() -> None:
                    try:
                        self._api.report_image(
                            job_id,
                            attempt,
                            image.name,
                            image.arch,
                            image.digest,
                            budget_s=REPORT_IMAGE_BUDGET_S,
                        )
                    except Exception as exc:  # the edge of this thread: log, never raise
                        log.warning("image_report_failed", error=str(exc))

                thread = threading.Thread(target=send, name=f"image-{job_id}", daemon=True)
                thread.start()
                reports.append(thread)

            try:
                result = self._runner.run(
                    spec, reporter, cancel, log=log, access=access, on_image=report_image
                )
            finally:
                for thread in reports:
                    thread.join(timeout=REPORT_IMAGE_BUDGET_S + 1.0)
            self._record(result, image, arch)
            if result.reported:  # a standby: finished before its window
                self._count_finished(result, running)
                return
            if cancel.reason in RELEASE_REASONS and not result.held:
                log.info("job_released", reason=cancel.reason)
                self._api.release(job_id, attempt, "worker draining")
                return
            if cancel.reason == "lease-lost":
                log.warning("job_abandoned", reason="the lease was lost")
                return
            self._finish(running, result)
        except InternalApiError as exc:
            log.error("report_failed", error=str(exc))
        finally:
            if access is not None:
                access.handle.end("stopped")  # idempotent: the runner ended it normally
            cancel.event.set()  # also stops the heartbeat loop
            heartbeat.join()
            self.metrics.build_ended()
            with self._lock:
                self._running.pop(job_id, None)

    def _finish(self, running: _Running, result: BuildResult) -> None:
        """Send the job's final status (the heartbeat stops first: a 409 after this is
        the finished job's, not a lost lease)."""
        running.reported.set()
        self._api.finish(
            running.job_id, running.attempt, result.status, result.reason, result.infrastructure
        )
        self._count_finished(result, running)

    def _count_finished(self, result: BuildResult, running: _Running) -> None:
        self.metrics.finished.labels(status=result.status).inc()
        self.metrics.srht_duration.labels(status=result.status).observe(
            time.monotonic() - running.started
        )
        with self._lock:
            self.jobs_done += 1

    def _ssh_access(self, running: _Running, claim: ClaimAnswer, log: Any) -> SshAccess | None:
        """Register the build with the control server (SSH `connect` and `tail`)."""
        if self._control is None:
            return None
        timeout_s = claim.timeout_seconds or self._config.worker.timeout
        holder = SessionHolder(time.time() + timeout_s, running.cancel)
        try:
            handle = self._control.register(
                running.job_id,
                deadline=holder.deadline,
                on_session_start=holder.session_started,
                on_session_end=holder.session_ended,
            )
        except ValueError as exc:  # the same job twice on this host: SSH goes to the first
            log.warning("ssh_register_failed", error=str(exc))
            return None
        running.holder = holder

        def report_early(result: BuildResult) -> None:
            try:
                self._finish(running, result)
            except InternalApiError as exc:
                log.error("report_failed", error=str(exc))

        return SshAccess(
            handle, holder, self.connect_command(running.job_id), report_early=report_early
        )

    def connect_command(self, job_id: int) -> str:
        """``ssh -t builds@HOST connect N`` for this host (``[worker] ssh-host``, else the
        worker's name and the first ``[ssh] listen`` port)."""
        host = self._config.worker.ssh_host
        if host:
            name, sep, port = host.rpartition(":")
            if sep and port.isdigit():
                return connect_command(self._config.ssh.user, name, int(port), job_id)
            return connect_command(self._config.ssh.user, host, 22, job_id)
        listen = self._config.ssh.listen
        listen_port = int(listen[0].rpartition(":")[2]) if listen else 22
        return connect_command(self._config.ssh.user, self._name, listen_port, job_id)

    def _holding(self) -> int:
        """Slots held by a standby or a ``shell: true`` VM waiting for sessions."""
        with self._lock:
            running = list(self._running.values())
        return sum(1 for r in running if r.holder is not None and r.holder.holding)

    def _labels(self, claim: ClaimAnswer) -> tuple[str, str]:
        """The (image, arch) metric labels of a claim: the image the catalogue resolves it
        to (an alias counts under its release), else what the job asked for."""
        image, arch = claim.image_release or claim.image or "unknown", claim.arch
        try:
            resolved = self._catalogue.resolve(image, arch or None)
        except Exception:  # an unknown image: the build fails in setup and says why
            return image, arch or "default"
        return resolved.name, resolved.arch

    def _record(self, result: BuildResult, image: str, arch: str) -> None:
        """One build's timings and failures into the metrics."""
        m = self.metrics
        m.log_chunks_failed.inc(result.failed_chunks)
        if result.boot_s is not None:
            m.srht_settle.labels(image=image, arch=arch).observe(result.boot_s)
        if result.vm_boot_s is not None:
            m.boot.labels(image=image, arch=arch).observe(result.vm_boot_s)
        if result.settle_s is not None:
            m.settle.labels(image=image, arch=arch).observe(result.settle_s)
        if result.setup_s is not None:
            m.setup.labels(image=image, arch=arch).observe(result.setup_s)
        for status, seconds in result.task_timings:
            m.task_duration.labels(image=image, arch=arch, status=status).observe(seconds)
        m.infra_retries.inc(result.boot_retries)
        if result.start_path is not None:
            m.guest_starts.labels(image=image, arch=arch, path=result.start_path).inc()
        if result.infrastructure:
            m.infra_failures.labels(reason=result.infra_reason or "other").inc()

    def _spec_from_claim(self, job_id: int, attempt: int, claim: ClaimAnswer) -> JobSpec:
        manifest = parse_manifest(claim.manifest)
        secrets = tuple(SecretMaterial.from_claim(item) for item in claim.secrets)
        return JobSpec(
            job_id=job_id,
            attempt=attempt,
            manifest=manifest,
            secrets=secrets,
            job_url=claim.job_url,
            owner=claim.owner,
            timeout_s=claim.timeout_seconds or self._config.worker.timeout,
            image=claim.image_release,
        )

    def _heartbeat(self, running: _Running, log: Any) -> None:
        """Renew the lease until the build ends; turn a cancel into a stop of the build."""
        while not running.cancel.event.wait(self._heartbeat_s):
            if running.reported.is_set():
                return
            try:
                cancelled = self._api.heartbeat(
                    running.job_id, running.attempt, budget_s=self._config.api.lease / 2
                )
            except Conflict:
                if running.reported.is_set():
                    return  # the job finished while this beat was in flight
                log.warning("lease_lost")
                running.cancel.cancel("lease-lost")
                return
            except InternalApiError as exc:
                log.warning("heartbeat_failed", error=str(exc))
                continue
            if cancelled:
                log.info("job_cancelled_by_api")
                running.cancel.cancel("cancelled")
                return


def _queue_wait(queued_at: Any) -> float | None:
    """Seconds from ``queued_at`` (the claim's ISO 8601 time the job was queued) to now."""
    if not isinstance(queued_at, str):
        return None
    try:
        when = datetime.fromisoformat(queued_at)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - when).total_seconds())
