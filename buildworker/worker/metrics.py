"""Prometheus metrics of one worker process, on its own registry, served on /metrics.

Names follow ``buildworker_<thing>_<unit>``; labels are bounded (image, arch, result,
outcome), never a job id. The daemon records; steps never touch Prometheus.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from buildworker import __version__

__all__ = ["WorkerMetrics"]

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

    def serve(self, bind: str) -> Any:
        """Serve /metrics on ``HOST:PORT`` in a daemon thread; returns the server."""
        host, _, port = bind.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host, registry=self.registry)
        return server
