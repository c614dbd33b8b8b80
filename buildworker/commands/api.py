"""`buildworker api`: serve the REST API, the internal worker API, logs and artifacts.

Under systemd (``Type=notify``) it reports through `buildworker.sdnotify`:

- ``READY=1`` once the server listens *and* ``/readyz``'s checks pass (database, store,
  broker), so ``systemctl start`` and units ordered after this one wait for a usable API;
- ``STATUS=`` whenever the readiness summary changes (``ready; serving on ...`` or
  ``not ready: broker (ConnectionRefusedError ...)``);
- ``WATCHDOG=1`` while the process is alive as ``/healthz`` judges it and uvicorn's event
  loop is ticking; a wedged loop or a dead background thread stops the pings and systemd
  restarts the process. A dependency outage does not: a restart would not fix the broker;
- ``STOPPING=1`` when SIGTERM or SIGINT starts the graceful shutdown.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from types import FrameType

import sqlalchemy.exc
import structlog
import uvicorn
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from buildworker.api.app import create_app
from buildworker.config import load_config
from buildworker.exitcodes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from buildworker.health import HealthChecks
from buildworker.log import configure_logging
from buildworker.sdnotify import Notifier, NotifyError, WatchdogPinger

NAME = "api"
HELP = "run the API tier (REST API, internal worker API, logs and artifacts) under uvicorn"

__all__ = ["ApiService", "NotifyingServer", "ReadinessReporter", "run"]

#: Seconds between two readiness evaluations (STATUS= updates, READY=1 at the first pass).
READINESS_POLL_S = 1.0
#: An event loop that has not ticked for this long is wedged (uvicorn ticks every 0.1 s).
LOOP_STALL_S = 5.0

_log = structlog.get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", default=None, help="HOST:PORT to listen on (default: [api] bind)")


class NotifyingServer(uvicorn.Server):
    """uvicorn's server, telling systemd when it stops and recording its loop's ticks."""

    def __init__(self, config: uvicorn.Config, notifier: Notifier) -> None:
        super().__init__(config)
        self._notifier = notifier
        self.last_tick = time.monotonic()

    async def on_tick(self, counter: int) -> bool:
        self.last_tick = time.monotonic()
        return await super().on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            _log.info("api.stopping", signal=sig)
            self._notifier.stopping("stopping: finishing requests in flight")
        super().handle_exit(sig, frame)

    def loop_ticking(self, stall_s: float = LOOP_STALL_S) -> bool:
        return self.started and time.monotonic() - self.last_tick < stall_s


class ReadinessReporter:
    """Evaluates ``/readyz``'s checks every ``poll_s`` once the server has started: sends
    ``READY=1`` at the first pass that is ready, and ``STATUS=`` at every change."""

    thread_name = "sd-readiness"

    def __init__(
        self,
        server: NotifyingServer,
        readiness: HealthChecks,
        notifier: Notifier,
        *,
        where: str,
        poll_s: float = READINESS_POLL_S,
    ) -> None:
        self._server = server
        self._readiness = readiness
        self._notifier = notifier
        self._where = where
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        #: READY=1 has been sent
        self.ready_sent = False

    def start(self) -> ReadinessReporter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._server.started:
            if self._stop.wait(0.05) or self._server.should_exit:
                return
        last = ""
        while not self._stop.is_set() and not self._server.should_exit:
            report = self._readiness.run()
            status = f"{report.summary()}; serving on {self._where}"
            if report.ok and not self.ready_sent:
                self._notifier.ready(status)
                self.ready_sent = True
                _log.info("api.ready", where=self._where)
            elif status != last:
                self._notifier.status(status)
            if status != last and not report.ok:
                _log.warning("api.not_ready", failing=report.failing(), status=status)
            last = status
            self._stop.wait(self._poll_s)


class ApiService:
    """The API app under a `NotifyingServer`, with the readiness reporter and the watchdog.

    Parameters:
        app: the app from `create_app` (its state holds the health registries).
        host, port: where to listen.
        notifier: systemd's notify socket (inert outside systemd).
        loop_stall_s: how long the event loop may go without a tick before the watchdog
            pings are withheld.
    """

    def __init__(
        self,
        app: FastAPI,
        *,
        host: str,
        port: int,
        notifier: Notifier,
        loop_stall_s: float = LOOP_STALL_S,
    ) -> None:
        self.server = NotifyingServer(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_config=None,  # our structlog handler already owns the root logger
                proxy_headers=True,
                server_header=False,
            ),
            notifier,
        )
        self._notifier = notifier
        self._loop_stall_s = loop_stall_s
        self._liveness: HealthChecks = app.state.liveness
        self.reporter = ReadinessReporter(
            self.server, app.state.readiness, notifier, where=f"{host}:{port}"
        )
        self.pinger = WatchdogPinger(notifier, self.alive)

    def alive(self) -> bool:
        """The event loop ticks and every background loop runs (what the watchdog needs)."""
        return self.server.loop_ticking(self._loop_stall_s) and self._liveness.run().ok

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT (or `stop`)."""
        self.reporter.start()
        self.pinger.start()
        try:
            self.server.run()
        finally:
            self.pinger.stop()
            self.reporter.stop()
            self._notifier.close()

    def stop(self) -> None:
        """What SIGTERM does: STOPPING=1, then uvicorn's graceful shutdown."""
        self.server.handle_exit(signal.SIGTERM, None)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    configure_logging(config.log.format, level=config.log.level)
    try:
        notifier = Notifier.from_environ()
    except NotifyError as exc:
        print(f"buildworker: systemd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    host, _, port = (args.bind or config.api.bind).rpartition(":")
    notifier.status("starting: migrating the database")
    try:
        app = create_app(config)
    except sqlalchemy.exc.OperationalError as exc:
        # No READY=1: systemd restarts the unit after RestartSec (Restart=on-failure).
        reason = str(exc.orig or exc).strip().splitlines()[0]
        where = make_url(config.database.url).render_as_string(hide_password=True)
        print(f"buildworker: database: {where}: {reason}", file=sys.stderr)
        return EXIT_FAILURE
    ApiService(app, host=host.strip("[]"), port=int(port), notifier=notifier).run()
    return EXIT_OK
