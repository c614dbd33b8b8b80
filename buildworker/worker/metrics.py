"""Prometheus metrics of one worker process, on its own registry, served on /metrics.

Names follow ``buildworker_<thing>_<unit>``; labels are bounded (image, arch, result,
outcome), never a job id. The daemon records; steps never touch Prometheus.

`serve` runs one small HTTP server on ``[worker] metrics-bind`` for ``/metrics`` and, when
health registries are given, ``/healthz`` and ``/readyz`` (`buildworker.health` JSON, 200
or 503), so a probe needs no second port.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from buildworker import __version__
from buildworker.health import HealthChecks

__all__ = ["CONTENT_TYPE", "MetricsServer", "WorkerMetrics"]

#: The classic text format, which Debian 12's Prometheus 2.42 expects.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_BUILD_BUCKETS = (10, 30, 60, 90, 120, 300, 600, 900, 1800, 3600)
_BOOT_BUCKETS = (1, 2, 3, 5, 10, 15, 20, 30, 60, 90, 120, 300)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.slots = Gauge("buildworker_capacity_slots", "Build slots of this worker", registry=r)
        self.running = Gauge("buildworker_jobs_running", "Builds running now", registry=r)
        self.started = Counter(
            "buildworker_jobs_started_total", "Builds started after a claim", registry=r
        )
        self.finished = Counter(
            "buildworker_jobs_finished_total", "Builds ended, by result", ["result"], registry=r
        )
        self.duration = Histogram(
            "buildworker_build_duration_seconds",
            "Claim to finish",
            ["result"],
            buckets=_BUILD_BUCKETS,
            registry=r,
        )
        self.settle = Histogram(
            "buildworker_vm_ssh_ready_seconds",
            "Boot request to SSH answering",
            ["image", "arch"],
            buckets=_BOOT_BUCKETS,
            registry=r,
        )
        self.deliveries = Counter(
            "buildworker_amqp_deliveries_total",
            "Deliveries by outcome (ack, dead, requeue)",
            ["outcome"],
            registry=r,
        )
        self.infra_failures = Counter(
            "buildworker_infra_failures_total",
            "Builds ended by an infrastructure failure",
            registry=r,
        )
        self.log_chunks_failed = Counter(
            "buildworker_log_chunks_failed_total", "Log chunks the API never accepted", registry=r
        )
        info = Gauge("buildworker_build_info", "Version", ["version"], registry=r)
        info.labels(version=__version__).set(1)

    def serve(
        self,
        bind: str,
        *,
        liveness: HealthChecks | None = None,
        readiness: HealthChecks | None = None,
    ) -> MetricsServer:
        """Serve /metrics (and the health routes given) on ``HOST:PORT`` in a daemon
        thread; returns the server (``close()`` stops it)."""
        host, _, port = bind.rpartition(":")
        return MetricsServer(
            (host.strip("[]"), int(port)), self.registry, liveness=liveness, readiness=readiness
        )


class MetricsServer(ThreadingHTTPServer):
    """``/metrics``, ``/healthz``, ``/readyz`` over HTTP/1.1 from a daemon thread."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        *,
        liveness: HealthChecks | None = None,
        readiness: HealthChecks | None = None,
    ) -> None:
        self.registry = registry
        self.health = {"/healthz": liveness, "/readyz": readiness}
        super().__init__(address, _Handler)
        self._thread = threading.Thread(target=self.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, CONTENT_TYPE, generate_latest(self.server.registry))
            return
        checks = self.server.health.get(path)
        if checks is None:
            self._send(404, "text/plain; charset=utf-8", b"404 not found\n")
            return
        report = checks.run()
        body = json.dumps(report.body()).encode()
        self._send(report.http_status, "application/json", body)

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not news (the stdlib would print each one)."""
