"""Prometheus metrics of one worker process, on its own registry, served on /metrics.

Two families, both in docs/operations.md's table (the contract; a test checks the two
agree): builds.sr.ht's names kept exactly, with their types, labels and buckets, so that
dashboards built for builds.sr.ht's workers show ours; and ours, ``buildworker_<thing>_<unit>``
in seconds and bytes. Labels are bounded (image, arch, status, reason, endpoint, outcome),
never a job id, an owner or a task name. The daemon records; steps never touch Prometheus.

`serve` runs one small HTTP server on ``[worker] metrics-bind`` for ``/metrics`` and, when
health registries are given, ``/healthz`` and ``/readyz`` (`buildworker.health` JSON, 200
or 503), so a probe needs no second port.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from buildworker import __version__
from buildworker.health import HealthChecks

__all__ = ["CONTENT_TYPE", "INFRA_REASONS", "MetricsServer", "WorkerMetrics"]

#: The classic text format, which Debian 12's Prometheus 2.42 expects.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# builds.sr.ht's buckets, exactly (its worker's Go code); ours are in seconds as well.
_SRHT_BUILD_BUCKETS = (10, 30, 60, 90, 120, 300, 600, 900, 1800)
_SRHT_SETTLE_BUCKETS = (1, 2, 3, 5, 10, 30, 60, 90, 120, 300)
_QUEUE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
_VM_BUCKETS = (1, 2, 3, 5, 10, 15, 20, 30, 60, 120)
_SETUP_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600)
_TASK_BUCKETS = (1, 10, 30, 60, 300, 600, 1800, 3600)

#: The bounded values of ``buildworker_infra_failures_total{reason}``.
INFRA_REASONS = ("boot", "settle", "ssh", "api", "broker", "artifacts", "other")
#: The bounded values of ``buildworker_cache_*{cache}``: the host caches (buildworker.cache).
CACHES = ("apt", "git")
#: The bounded ``result`` values of ``buildworker_cache_requests_total``, per cache.
CACHE_RESULTS = {"apt": ("hit", "miss"), "git": ("hit", "miss", "bypass", "error")}
#: The bounded values of ``buildworker_api_request_errors_total{endpoint}``.
API_ENDPOINTS = (
    "claim",
    "heartbeat",
    "task",
    "log",
    "artifact",
    "finish",
    "release",
    "register",
    "image",
)


class WorkerMetrics:
    """Every series of a worker, on a registry of its own (tests make several per process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry

        def per_image(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            # Most timings are per (image, arch): one place that says so.
            return Histogram(name, doc, ["image", "arch"], buckets=buckets, registry=r)

        # --- builds.sr.ht's names ------------------------------------------------------------
        self.srht_workers = Gauge(
            "buildsrht_build_workers", "Configured build slots (builds.sr.ht)", registry=r
        )
        self.srht_running = Gauge(
            "buildsrht_builds_running", "Builds running now (builds.sr.ht)", registry=r
        )
        self.srht_duration = Histogram(
            "buildsrht_build_duration",
            "Claim to finish, in seconds (builds.sr.ht)",
            ["status"],
            buckets=_SRHT_BUILD_BUCKETS,
            registry=r,
        )
        self.image_runs = Counter(
            "buildsrht_image_runs",
            "Builds started per image (builds.sr.ht)",
            ["image", "arch"],
            registry=r,
        )
        self.srht_settle = per_image(
            "buildsrht_vm_settle_duration_seconds",
            "Boot request to SSH answering (builds.sr.ht)",
            _SRHT_SETTLE_BUCKETS,
        )
        # --- ours -----------------------------------------------------------------------------
        self.ready = Gauge(
            "buildworker_worker_ready",
            "1 while /readyz passes and the worker is not draining",
            registry=r,
        )
        self.slots = Gauge("buildworker_slots", "Build slots of this worker", registry=r)
        self.slots_busy = Gauge("buildworker_slots_busy", "Slots running a build", registry=r)
        self.slots_standby = Gauge(
            "buildworker_slots_standby",
            "Busy slots whose VM waits for SSH sessions (failure standby, shell: true)",
            registry=r,
        )
        self.guest_starts = Counter(
            "buildworker_guest_starts_total",
            "Guests that ran a build, by how they started (cold, snapshot, pool)",
            ["image", "arch", "path"],
            registry=r,
        )
        self.pool_ready = Gauge(
            "buildworker_pool_ready",
            "Restored guests waiting in the warm pool, logged in",
            ["image", "arch"],
            registry=r,
        )
        self.queue_wait = per_image(
            "buildworker_job_queue_wait_seconds", "Enqueue (outbox row) to claim", _QUEUE_BUCKETS
        )
        self.boot = per_image(
            "buildworker_vm_boot_seconds", "Define to domain running", _VM_BUCKETS
        )
        self.settle = per_image(
            "buildworker_vm_settle_seconds", "Domain running to first SSH login", _VM_BUCKETS
        )
        self.setup = per_image(
            "buildworker_job_setup_seconds",
            "Env, secrets, repositories, packages and sources (login to first task)",
            _SETUP_BUCKETS,
        )
        self.task_duration = Histogram(
            "buildworker_task_duration_seconds",
            "Each task, by its status (never its name)",
            ["image", "arch", "status"],
            buckets=_TASK_BUCKETS,
            registry=r,
        )
        self.finished = Counter(
            "buildworker_jobs_finished", "Builds ended, by status", ["status"], registry=r
        )
        self.infra_failures = Counter(
            "buildworker_infra_failures",
            "Builds ended or retried by an infrastructure failure",
            ["reason"],
            registry=r,
        )
        self.infra_retries = Counter(
            "buildworker_infra_retries",
            "Fresh-VM retries after an infrastructure failure",
            registry=r,
        )
        self.log_bytes = Counter(
            "buildworker_log_bytes", "Log bytes accepted by the API", registry=r
        )
        self.log_chunks_failed = Counter(
            "buildworker_log_chunks_failed", "Log chunks the API never accepted", registry=r
        )
        self.artifact_bytes = Counter(
            "buildworker_artifact_bytes", "Artifact bytes uploaded", registry=r
        )
        self.broker_reconnects = Counter(
            "buildworker_broker_reconnects", "AMQP reconnects", registry=r
        )
        self.api_errors = Counter(
            "buildworker_api_request_errors",
            "Internal-API calls that failed after their retries",
            ["endpoint"],
            registry=r,
        )
        self.deliveries = Counter(
            "buildworker_amqp_deliveries",
            "Deliveries by outcome (ack, dead, requeue)",
            ["outcome"],
            registry=r,
        )
        self.cache_requests = Counter(
            "buildworker_cache_requests",
            "Requests to host caches, by cache and result: apt, files served (hit|miss); "
            "git, sources cloned (hit: mirror updated, miss: created, bypass: not eligible, "
            "error: fetch failed; both went direct)",
            ["cache", "result"],
            registry=r,
        )
        self.cache_served_bytes = Counter(
            "buildworker_cache_served_bytes",
            "Bytes host caches sent to guests (git: the git protocol stream of clones)",
            ["cache"],
            registry=r,
        )
        self.cache_fetched_bytes = Counter(
            "buildworker_cache_fetched_bytes",
            "Bytes host caches fetched upstream for guests (git: growth of the mirrors' "
            "objects on disk)",
            ["cache"],
            registry=r,
        )
        info = Gauge("buildworker_build_info", "Version", ["version"], registry=r)
        info.labels(version=__version__).set(1)
        # Process metrics (CPU, memory, open fds) and the Python version, as every exporter.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        # Every bounded label value exists from the start: rate() over a series that appears
        # with its first failure misses that failure, and alerts compare against 0.
        for reason in INFRA_REASONS:
            self.infra_failures.labels(reason=reason)
        for endpoint in API_ENDPOINTS:
            self.api_errors.labels(endpoint=endpoint)
        for outcome in ("ack", "dead", "requeue"):
            self.deliveries.labels(outcome=outcome)
        for status in ("success", "failed", "timeout", "cancelled"):
            self.finished.labels(status=status)
        for cache in CACHES:
            for result in CACHE_RESULTS[cache]:
                self.cache_requests.labels(cache=cache, result=result)
            self.cache_served_bytes.labels(cache=cache)
            self.cache_fetched_bytes.labels(cache=cache)

    def set_slots(self, slots: int) -> None:
        self.slots.set(slots)
        self.srht_workers.set(slots)

    def build_started(self, image: str, arch: str) -> None:
        self.image_runs.labels(image=image, arch=arch).inc()
        self.srht_running.inc()
        self.slots_busy.inc()

    def build_ended(self) -> None:
        self.srht_running.dec()
        self.slots_busy.dec()

    def cache_transfer(self, cache: str, hit: bool, served: int, fetched: int) -> None:
        """One file a host cache sent to a guest (buildworker.cache)."""
        self.cache_requests.labels(cache=cache, result="hit" if hit else "miss").inc()
        self.cache_served_bytes.labels(cache=cache).inc(served)
        self.cache_fetched_bytes.labels(cache=cache).inc(fetched)

    def cache_request(self, cache: str, result: str, fetched: int = 0) -> None:
        """One request to a host cache that is not one file (the git mirrors' sources)."""
        self.cache_requests.labels(cache=cache, result=result).inc()
        self.cache_fetched_bytes.labels(cache=cache).inc(fetched)

    def cache_served(self, cache: str, served: int) -> None:
        self.cache_served_bytes.labels(cache=cache).inc(served)

    def api_error(self, endpoint: str) -> None:
        """Counts a failed internal-API call; an endpoint outside the list counts as
        ``other`` (a label must stay bounded even if a new call forgets to register)."""
        self.api_errors.labels(endpoint=endpoint if endpoint in API_ENDPOINTS else "other").inc()

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
