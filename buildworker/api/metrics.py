"""Prometheus metrics of the API tier, served on ``/metrics`` of the API's own port.

Two kinds, so that several API processes behind a load balancer never make them lie:

- **Database gauges** (jobs by status, the oldest queued job, the outbox backlog and the age
  of its oldest unsent row, trigger deliveries by state) are computed at scrape time by
  `DatabaseCollector` from a few aggregate queries, cached for ``[api] metrics-cache``
  seconds so a scrape storm does not hammer the database. Every process reports the same
  values: aggregate them with ``max()`` (never ``sum()``) across ``instance``.
- **Counters and histograms** (requests, submits, lease reaps, requeues, trigger attempts)
  count what *this process* did. Prometheus scrapes each process at its own address and
  adds the ``instance`` label, so ``sum(rate(...))`` over instances is the farm's total.
  Scrape the nodes directly, not through the load balancer (each scrape would land on
  another process and the counters would seem to jump back and forth).

Increment points live in other modules (`buildworker.api.public`, `buildworker.api.lifecycle`,
`buildworker.api.reaper`, `buildworker.triggers.sender`); they reach this process's `ApiMetrics` through the
SQLAlchemy session they already hold (``metrics_of(session)``), which `install` puts in the
app's sessionmaker. No module-level registry: a session made elsewhere (a test, a script)
gets `NULL_METRICS`, which records nothing.

builds.sr.ht names kept: ``buildsrht_builds_submitted_total`` (a counter, as in its API),
and ``buildsrht_triggers_executed``, ``buildsrht_triggers_webhooks``,
``buildsrht_triggers_webhooks_failed``. builds.sr.ht's Go client exposes those three as
counters without ``_total``; Python's client would add the suffix to any counter, so they
are exposed as ``untyped`` with the exact names (``rate()`` works on them as on counters).
Our own names carry units: ``buildworker_..._seconds``, ``..._total``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from datetime import datetime
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric, UnknownMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from buildworker import __version__
from buildworker.db.models import Job, Outbox, TriggerDelivery, utcnow
from buildworker.jobstate import JobStatus

__all__ = [
    "JOB_STATUSES",
    "NULL_METRICS",
    "ApiMetrics",
    "DatabaseCollector",
    "RequestMetricsMiddleware",
    "install",
    "metrics_of",
    "router",
]

_log = structlog.get_logger(__name__)

#: Every job status, so each ``buildworker_jobs{status}`` series exists even at 0.
JOB_STATUSES = tuple(status.value for status in JobStatus)
_DELIVERY_STATES = ("pending", "sent", "failed")
_DELIVERY_ACTIONS = ("email", "webhook")
#: Request latency buckets, in seconds (the API answers in milliseconds; uploads take longer).
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: The classic text format (every name here is a legacy one): what Debian 12's Prometheus
#: 2.42 expects; prometheus_client's own default now announces format 1.0.0.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Key of `ApiMetrics` in ``Session.info``.
SESSION_KEY = "buildworker.metrics"
#: The ``route`` label of a request that matched no route template (404s, mounts).
UNMATCHED = "<unmatched>"

router = APIRouter(include_in_schema=False)


class ApiMetrics:
    """This process's metrics, on their own registry.

    Parameters:
        sessionmaker: sessions for the database gauges (None: no database gauges).
        cache_s: how long one computation of the database gauges is reused, in seconds.
    """

    def __init__(
        self, sessionmaker: sessionmaker[Session] | None = None, *, cache_s: float = 5.0
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Gauge("buildworker_build_info", "Version of this process", ["version"], registry=r).labels(
            version=__version__
        ).set(1)
        self.requests = Histogram(
            "buildworker_api_request_duration_seconds",
            "API requests by route template, method and status code, until the last byte",
            ["route", "method", "code"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.submitted = Counter(
            "buildsrht_builds_submitted_total",
            "Jobs sent to the queue to run: submitted with execute, or started (sr.ht's name)",
            registry=r,
        )
        self.reaped = Counter(
            "buildworker_leases_reaped_total",
            "Lapsed leases handled by the reaper, by what became of the job",
            ["outcome"],
            registry=r,
        )
        for outcome in ("requeued", "failed", "cancelled"):
            self.reaped.labels(outcome=outcome)
        self.requeued = Counter(
            "buildworker_jobs_requeued_total",
            "Running jobs put back in the queue (lapsed lease, infrastructure failure, release)",
            registry=r,
        )
        self.trigger_attempts = Counter(
            "buildworker_trigger_attempts_total",
            "Trigger delivery attempts by action and outcome (sent, retry, failed: gave up)",
            ["action", "outcome"],
            registry=r,
        )
        for action in _DELIVERY_ACTIONS:
            for outcome in ("sent", "retry", "failed"):
                self.trigger_attempts.labels(action=action, outcome=outcome)
        self._srht_triggers = _SrhtTriggerCounts()
        r.register(self._srht_triggers)
        if sessionmaker is not None:
            r.register(DatabaseCollector(sessionmaker, cache_s=cache_s))

    # --- increment points (called through metrics_of(session)) ---------------------------

    def job_submitted(self) -> None:
        self.submitted.inc()

    def lease_reaped(self, outcome: str) -> None:
        """``outcome``: requeued, failed or cancelled."""
        self.reaped.labels(outcome=outcome).inc()

    def job_requeued(self) -> None:
        self.requeued.inc()

    def trigger_attempt(self, action: str, sent: bool, status: str) -> None:
        """One delivery attempt of ``action`` (email, webhook); ``status`` is the delivery's
        state after it (sent, pending: will be retried, failed: given up)."""
        outcome = "sent" if sent else ("failed" if status == "failed" else "retry")
        self.trigger_attempts.labels(action=action, outcome=outcome).inc()
        self._srht_triggers.attempt(action, sent)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _NullMetrics(ApiMetrics):
    """Records nothing: what `metrics_of` gives a session made outside the app."""

    def __init__(self) -> None:  # no registry, no collectors
        pass

    def job_submitted(self) -> None:
        pass

    def lease_reaped(self, outcome: str) -> None:
        pass

    def job_requeued(self) -> None:
        pass

    def trigger_attempt(self, action: str, sent: bool, status: str) -> None:
        pass


NULL_METRICS: ApiMetrics = _NullMetrics()


def metrics_of(session: Session) -> ApiMetrics:
    """The `ApiMetrics` of the app that made ``session`` (`NULL_METRICS` if none)."""
    found = session.info.get(SESSION_KEY)
    return found if isinstance(found, ApiMetrics) else NULL_METRICS


class _SrhtTriggerCounts(Collector):
    """builds.sr.ht's three trigger counters under their exact names (see the module doc)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.executed = self.webhooks = self.webhooks_failed = 0

    def attempt(self, action: str, sent: bool) -> None:
        with self._lock:
            self.executed += 1
            if action == "webhook":
                self.webhooks += 1
                self.webhooks_failed += 0 if sent else 1

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            values = (self.executed, self.webhooks, self.webhooks_failed)
        for (name, doc), value in zip(
            (
                ("buildsrht_triggers_executed", "Trigger delivery attempts (builds.sr.ht's name)"),
                ("buildsrht_triggers_webhooks", "Webhook delivery attempts (builds.sr.ht's name)"),
                (
                    "buildsrht_triggers_webhooks_failed",
                    "Failed webhook delivery attempts (builds.sr.ht's name)",
                ),
            ),
            values,
            strict=True,
        ):
            yield UnknownMetricFamily(name, doc, value=value)


class DatabaseCollector(Collector):
    """Gauges computed from the database at scrape time, cached for ``cache_s`` seconds.

    Four aggregate queries: jobs ``GROUP BY status``, the oldest queued job, the unpublished
    outbox rows, and trigger deliveries ``GROUP BY action, status``. If the
    database fails, ``buildworker_db_up`` is 0 and the other gauges are left out (not 0:
    a missing series is not a false "nothing queued").
    """

    def __init__(
        self,
        sessionmaker: sessionmaker[Session],
        *,
        cache_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._cache_s = cache_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: list[Metric] | None = None
        self._cached_at = 0.0
        #: database queries made (for tests: a scrape storm must not raise it much)
        self.computations = 0

    def describe(self) -> Iterable[Metric]:
        return []  # do not query at registration

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            now = self._clock()
            if self._cached is None or now - self._cached_at >= self._cache_s:
                self._cached = self._compute()
                self._cached_at = now
            return list(self._cached)

    def _compute(self) -> list[Metric]:
        self.computations += 1
        started = time.monotonic()
        up = GaugeMetricFamily("buildworker_db_up", "1 if the database gauges could be read")
        try:
            metrics = self._query()
        except Exception as exc:  # any database failure: the scrape still answers, db_up=0
            _log.warning("metrics.database_error", error=f"{type(exc).__name__}: {exc}")
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        took = GaugeMetricFamily(
            "buildworker_db_metrics_query_seconds", "Time the database gauges took to compute"
        )
        took.add_metric([], time.monotonic() - started)
        return [up, took, *metrics]

    def _query(self) -> list[Metric]:
        now = utcnow()
        with self._sessionmaker() as session:
            # count(*) alone so the status index answers it; the oldest queued job is a
            # second, indexed lookup among the (few) queued rows.
            by_status = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
            oldest_queued = session.execute(
                select(func.min(Job.updated)).where(Job.status == JobStatus.QUEUED)
            ).scalar()
            backlog, oldest_unsent = session.execute(
                select(func.count(), func.min(Outbox.created)).where(Outbox.published_at.is_(None))
            ).one()
            deliveries = session.execute(
                select(TriggerDelivery.action, TriggerDelivery.status, func.count()).group_by(
                    TriggerDelivery.action, TriggerDelivery.status
                )
            ).all()
            session.rollback()

        jobs = GaugeMetricFamily(
            "buildworker_jobs", "Jobs in the database by status", labels=["status"]
        )
        counts = {status: 0 for status in JOB_STATUSES}
        for status, count in by_status:
            counts[status] = int(count)
        for status, count in counts.items():
            jobs.add_metric([status], count)
        queued_age = GaugeMetricFamily(
            "buildworker_queue_oldest_job_age_seconds",
            "How long the longest-waiting queued job has waited (0 when none is queued)",
        )
        queued_age.add_metric([], _age(now, oldest_queued))
        outbox = GaugeMetricFamily(
            "buildworker_outbox_backlog", "Outbox rows not yet confirmed by the broker"
        )
        outbox.add_metric([], int(backlog))
        outbox_age = GaugeMetricFamily(
            "buildworker_outbox_oldest_unsent_age_seconds",
            "Age of the oldest outbox row not yet published (0 when none)",
        )
        outbox_age.add_metric([], _age(now, oldest_unsent))
        triggers = GaugeMetricFamily(
            "buildworker_trigger_deliveries",
            "Trigger deliveries kept in the database by action and state",
            labels=["action", "state"],
        )
        table = {(a, s): 0 for a in _DELIVERY_ACTIONS for s in _DELIVERY_STATES}
        for action, state, count in deliveries:
            table[(action, state)] = int(count)
        for (action, state), count in sorted(table.items()):
            triggers.add_metric([action, state], count)
        return [jobs, queued_age, outbox, outbox_age, triggers]


def _age(now: datetime, then: datetime | None) -> float:
    if then is None:
        return 0.0
    return max(0.0, (now - then).total_seconds())


# --- request metrics -----------------------------------------------------------------------

_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]


class RequestMetricsMiddleware:
    """Pure ASGI middleware: observes each HTTP request's duration, labelled with the route
    template that matched (``/api/jobs/{job_id}``, never the raw path, so labels stay
    bounded), the method and the status code. Streaming bodies are timed to the last byte.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], metrics: ApiMetrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before the response started is what a client sees

        async def send_wrapper(message: _Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            method = scope.get("method", "GET")
            if method not in _METHODS:
                method = "other"  # an arbitrary method must not grow the label set
            self._metrics.requests.labels(route=route, method=method, code=str(status)).observe(
                time.perf_counter() - started
            )


_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


@router.get("/metrics")
def metrics_endpoint(request: Request) -> Response:
    metrics: ApiMetrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE)


def install(app: FastAPI, *, cache_s: float) -> ApiMetrics:
    """Create the app's `ApiMetrics`, time its requests, serve ``/metrics``, and make the
    app's sessions carry the metrics for `metrics_of`."""
    metrics = ApiMetrics(app.state.sessionmaker, cache_s=cache_s)
    app.state.metrics = metrics
    app.state.sessionmaker.configure(info={SESSION_KEY: metrics})
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    app.include_router(router)
    return metrics
