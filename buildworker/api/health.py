"""``/healthz`` and ``/readyz`` of the API tier, and the checks behind them.

- ``/healthz`` (alive): the process answers HTTP, and its background loops (outbox
  publisher, lease reaper, trigger sender) are running. A load balancer or systemd restarts
  a process that fails it.
- ``/readyz`` (can do its job): the database answers, the store is writable, and the broker
  is reachable. A load balancer stops sending traffic to a node that fails it; nothing is
  restarted for it, since a restart does not bring a database back.

The broker is watched by `BrokerWatch`, one idle AMQP connection per process that notices a
lost connection at once (a reset) or within a heartbeat (a silent drop), so a probe costs no
connection set-up and RabbitMQ's log does not fill with a connection per probe.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text

from buildworker.health import CheckResult, HealthChecks, fail, ok
from buildworker.service import ServiceThread

__all__ = [
    "BrokerWatch",
    "database_answers",
    "liveness",
    "readiness",
    "router",
    "store_writable",
    "threads_alive",
]

_log = structlog.get_logger(__name__)

router = APIRouter(include_in_schema=False)

#: Longest wait between two connection attempts of the broker watch, in seconds: short, so
#: /readyz turns back to 200 soon after the broker returns.
WATCH_RETRY_MAX_S = 5.0


# --- checks --------------------------------------------------------------------------------


def database_answers(engine: Engine) -> CheckResult:
    """``SELECT 1`` through the app's pool."""
    started = time.monotonic()
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # a probe reports every failure as "not ready", never raises
        return fail(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return ok(f"answered in {(time.monotonic() - started) * 1000:.0f} ms")


def store_writable(path: Path) -> CheckResult:
    """Create, write, fsync and remove a file in the store directory (made if missing, as
    the store itself does at its first write)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".readyz-", dir=path)
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        return fail(f"{path}: {exc.strerror or exc}")
    return ok(str(path))


def threads_alive(threads: dict[str, ServiceThread | None]) -> CheckResult:
    """Every background loop started and still running."""
    dead = [name for name, thread in threads.items() if thread is None or not thread.alive]
    if dead:
        return fail("not running: " + ", ".join(dead))
    return ok("running: " + ", ".join(threads))


class BrokerWatch(ServiceThread):
    """Keeps one idle AMQP connection to the broker and says whether it is up.

    Parameters:
        url: the broker's AMQP URL.
        heartbeat_s: AMQP heartbeat; a silently dropped connection is noticed within it.
    """

    thread_name = "broker-watch"

    def __init__(self, url: str, *, heartbeat_s: float = 30.0) -> None:
        super().__init__()
        self._url = url
        self._heartbeat_s = heartbeat_s
        self._lock = threading.Lock()
        self._state = fail("not connected yet")

    def check(self) -> CheckResult:
        with self._lock:
            return self._state

    def _set(self, state: CheckResult) -> None:
        with self._lock:
            changed = state.ok != self._state.ok
            self._state = state
        if changed:
            (_log.info if state.ok else _log.warning)(
                "health.broker", ok=state.ok, detail=state.detail
            )

    def run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            connection = None
            try:
                params = pika.URLParameters(self._url)
                params.heartbeat = max(1, int(self._heartbeat_s))
                params.socket_timeout = 5
                params.stack_timeout = 10
                params.connection_attempts = 1
                params.client_properties = {"connection_name": "buildworker api health"}
                connection = pika.BlockingConnection(params)
                failures = 0
                self._set(ok(f"connected to {params.host}:{params.port}"))
                while not self._stop.is_set():
                    connection.process_data_events(time_limit=0.5)
            except (pika.exceptions.AMQPError, OSError) as exc:
                failures += 1
                self._set(fail(f"{type(exc).__name__}: {exc}".rstrip(": ")))
                self._stop.wait(min(WATCH_RETRY_MAX_S, 0.5 * 2 ** min(failures, 4)))
            finally:
                if connection is not None and connection.is_open:
                    with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                        connection.close()


# --- registries ----------------------------------------------------------------------------


def liveness(state: Any) -> HealthChecks:
    """The checks of ``/healthz`` for an app whose ``state`` holds its background threads."""

    def loops() -> CheckResult:
        names = ["publisher", "reaper", "trigger_sender", "broker_watch"]
        if state.config.broker.republish_interval > 0:  # off means not started, not dead
            names.append("republisher")
        return threads_alive({name: getattr(state, name, None) for name in names})

    return HealthChecks([("background", loops)])


def readiness(state: Any) -> HealthChecks:
    """The checks of ``/readyz``: database, store, broker."""

    def broker() -> CheckResult:
        watch: BrokerWatch | None = getattr(state, "broker_watch", None)
        return watch.check() if watch is not None else fail("not watched (background not started)")

    return HealthChecks(
        [
            ("database", lambda: database_answers(state.engine)),
            ("store", lambda: store_writable(Path(state.store))),
            ("broker", broker),
        ]
    )


def install(state: Any) -> None:
    """Put the two registries on the app's ``state`` (``liveness``, ``readiness``)."""
    state.liveness = liveness(state)
    state.readiness = readiness(state)


def _respond(checks: HealthChecks) -> JSONResponse:
    report = checks.run()
    return JSONResponse(
        report.body(), status_code=report.http_status, headers={"Cache-Control": "no-store"}
    )


@router.get("/healthz")
def healthz(request: Request) -> JSONResponse:
    """200 while the process and its background loops run; 503 naming the dead loop."""
    return _respond(request.app.state.liveness)


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """200 when the database answers, the store is writable and the broker is reachable."""
    return _respond(request.app.state.readiness)
