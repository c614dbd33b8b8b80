"""The worker's main loop as systemd and a probe see it: readiness, STATUS=, the watchdog.

`Supervisor.tick` runs on every turn of the daemon's main loop (`Daemon.run_until_stopped`,
twice a second, while waiting and while draining). Each tick records that the loop is
alive, reads the slots (under the daemon's lock: a loop wedged there stops ticking), and
every ``check_every_s`` evaluates ``/readyz``'s checks (broker, libvirt, images, API):

- ``READY=1`` at the first evaluation that passes, never before (``Type=notify``);
- ``STATUS=`` whenever the summary changes: ``ready; 1/2 slots busy, broker connected``,
  ``not ready: broker (not connected (reconnecting)); 0/2 slots busy``, ``draining: ...``;
- ``buildworker_worker_ready`` is 1 while ready and not draining.

`alive` is what the watchdog pings on and ``/healthz`` reports: the loop ticked within
``stall_s`` and the consumer thread runs. Not being ready is not being dead: a worker
whose broker is away keeps feeding the watchdog (a restart would not bring it back).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

import structlog

from buildworker.health import CheckResult, HealthChecks, HealthReport, fail, ok
from buildworker.sdnotify import Notifier, NotifyError
from buildworker.worker.metrics import WorkerMetrics

__all__ = ["Supervised", "Supervisor"]

_log = structlog.get_logger(__name__)

#: How long the main loop may go without a tick before it counts as wedged.
STALL_S = 30.0
#: Seconds between two readiness evaluations.
CHECK_EVERY_S = 2.0


class Supervised(Protocol):
    """What the supervisor reads of `buildworker.worker.daemon.Daemon`."""

    @property
    def draining(self) -> bool: ...

    def load(self) -> tuple[int, int]: ...

    def broker_connected(self) -> bool: ...

    def consumer_alive(self) -> bool: ...

    def broker_reconnects(self) -> int: ...


class Supervisor:
    """Parameters:
    daemon: the worker it watches.
    notifier: systemd's notify socket (inert outside systemd).
    readiness: ``/readyz``'s checks (`buildworker.worker.health.readiness`).
    metrics: where ``buildworker_worker_ready`` and the reconnect counter live.
    """

    def __init__(
        self,
        daemon: Supervised,
        notifier: Notifier,
        readiness: HealthChecks,
        metrics: WorkerMetrics,
        *,
        stall_s: float = STALL_S,
        check_every_s: float = CHECK_EVERY_S,
    ) -> None:
        self._daemon = daemon
        self._notifier = notifier
        self._readiness = readiness
        self._metrics = metrics
        self._stall_s = stall_s
        self._check_every_s = check_every_s
        self._lock = threading.Lock()
        self._last_tick: float | None = None
        self._last_check = -float("inf")
        self._report: HealthReport | None = None
        self._last_status: str | None = None
        self._reconnects_seen = 0
        self._stopping_sent = False
        self.ready_sent = False

    # -- the main loop's side ------------------------------------------------------------

    def tick(self) -> None:
        """One turn of the main loop (see the module's docstring)."""
        busy, slots = self._daemon.load()
        now = time.monotonic()
        with self._lock:
            self._last_tick = now
        reconnects = self._daemon.broker_reconnects()
        if reconnects > self._reconnects_seen:
            self._metrics.broker_reconnects.inc(reconnects - self._reconnects_seen)
            self._reconnects_seen = reconnects
        if now - self._last_check >= self._check_every_s:
            self._last_check = now
            self._report = self._readiness.run()
        report = self._report
        ready = report is not None and report.ok
        draining = self._daemon.draining
        self._metrics.ready.set(1 if ready and not draining else 0)
        status = self._status(report, busy, slots, draining)
        try:
            if ready and not self.ready_sent and not draining:
                self._notifier.ready(status)
                self.ready_sent = True
                _log.info("worker_ready", status=status)
            elif status != self._last_status:
                self._notifier.status(status)
                if not ready and not draining:
                    _log.warning("worker_not_ready", status=status)
        except NotifyError as exc:  # systemd went away: nothing to tell, keep building
            _log.warning("notify_failed", error=str(exc))
        self._last_status = status

    def draining(self) -> None:
        """The drain begins: ``STOPPING=1`` (once), with what is still running."""
        if self._stopping_sent:
            return
        self._stopping_sent = True
        busy, slots = self._daemon.load()
        self._metrics.ready.set(0)
        try:
            self._notifier.stopping(f"draining: {busy}/{slots} slots busy")
        except NotifyError as exc:
            _log.warning("notify_failed", error=str(exc))

    def _status(self, report: HealthReport | None, busy: int, slots: int, draining: bool) -> str:
        load = f"{busy}/{slots} slots busy"
        if draining:
            return f"draining: {load}"
        if report is None:
            return f"starting: {load}"
        broker = "broker connected" if self._daemon.broker_connected() else "broker reconnecting"
        if report.ok:
            return f"ready; {load}, {broker}"
        return f"{report.summary()}; {load}"

    # -- the watchdog's and /healthz's side ----------------------------------------------

    def alive(self) -> bool:
        """The main loop ticked within ``stall_s`` and the consumer thread runs."""
        return self._loop_check().ok and self._consumer_check().ok

    def liveness(self) -> HealthChecks:
        """``/healthz``: the main loop and the consumer thread."""
        return HealthChecks([("main-loop", self._loop_check), ("consumer", self._consumer_check)])

    def _loop_check(self) -> CheckResult:
        with self._lock:
            last = self._last_tick
        if last is None:
            return fail("the main loop has not started")
        age = time.monotonic() - last
        if age > self._stall_s:
            return fail(f"no tick for {age:.1f}s (limit {self._stall_s:g}s)")
        return ok(f"ticked {age:.1f}s ago")

    def _consumer_check(self) -> CheckResult:
        if self._daemon.consumer_alive():
            return ok("running")
        if self._daemon.draining:
            return ok("stopped for the drain")
        return fail("the consumer thread is not running")
