"""The API's /metrics: request durations by route template, database gauges (cached),
counters fed from the reaper, the submit path and the trigger sender, promtool-clean."""

from __future__ import annotations

import http.server
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from ops_helpers import MANIFEST, free_port, user_headers
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from buildworker.api.metrics import NULL_METRICS, DatabaseCollector, metrics_of
from buildworker.api.reaper import reap
from buildworker.db.models import Job, TriggerDelivery, utcnow
from buildworker.triggers.sender import TriggerSender


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def scrape(client: TestClient) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text


def submit(client: TestClient, headers: dict[str, str], **fields: object) -> int:
    response = client.post("/api/jobs", json={"manifest": MANIFEST, **fields}, headers=headers)
    assert response.status_code == 200, response.text
    return int(response.json()["id"])


def test_request_durations_are_labelled_by_route_template_method_and_code(
    make_app: Callable[..., FastAPI],
) -> None:
    app = make_app()
    client = TestClient(app)
    headers = user_headers(app)
    job_id = submit(client, headers)
    for _ in range(3):
        assert client.get(f"/api/jobs/{job_id}", headers=headers).status_code == 200
    assert client.get("/api/jobs", headers=headers).status_code == 200
    assert client.get("/api/jobs").status_code == 401
    assert client.get("/no/such/path").status_code == 404
    text = scrape(client)
    name = "buildworker_api_request_duration_seconds_count"
    assert value(text, name, route="/api/jobs", method="POST", code="200") == 1
    assert value(text, name, route="/api/jobs/{job_id}", method="GET", code="200") == 3
    assert value(text, name, route="/api/jobs", method="GET", code="200") == 1
    assert value(text, name, route="/api/jobs", method="GET", code="401") == 1
    assert value(text, name, route="<unmatched>", method="GET", code="404") == 1
    # never the raw path: that would be one series per job
    assert f'route="/api/jobs/{job_id}"' not in text
    assert "/no/such/path" not in text
    bucket = "buildworker_api_request_duration_seconds_bucket"
    assert value(text, bucket, route="/api/jobs/{job_id}", method="GET", code="200", le="+Inf") == 3


def test_job_and_outbox_gauges_come_from_the_database(make_app: Callable[..., FastAPI]) -> None:
    app = make_app(metrics_cache=0.0)
    client = TestClient(app)
    headers = user_headers(app)
    submit(client, headers)
    submit(client, headers, execute=False)
    submit(client, headers, execute=False)
    text = scrape(client)
    assert value(text, "buildworker_db_up") == 1
    assert value(text, "buildworker_jobs", status="queued") == 1
    assert value(text, "buildworker_jobs", status="pending") == 2
    assert value(text, "buildworker_jobs", status="running") == 0
    assert value(text, "buildworker_jobs", status="cancelled") == 0
    # no lifespan, so no publisher: the queued job's outbox row is unsent
    assert value(text, "buildworker_outbox_backlog") == 1
    age = value(text, "buildworker_outbox_oldest_unsent_age_seconds")
    assert age is not None and 0 <= age < 60
    queued_age = value(text, "buildworker_queue_oldest_job_age_seconds")
    assert queued_age is not None and 0 <= queued_age < 60


def test_the_oldest_waits_grow_with_the_rows_age(make_app: Callable[..., FastAPI]) -> None:
    app = make_app(metrics_cache=0.0)
    client = TestClient(app)
    job_id = submit(client, user_headers(app))
    with app.state.sessionmaker() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.updated = utcnow() - timedelta(minutes=30)
        session.execute(
            Job.metadata.tables["outbox"].update().values(created=utcnow() - timedelta(minutes=10))
        )
        session.commit()
    text = scrape(client)
    assert 1790 < (value(text, "buildworker_queue_oldest_job_age_seconds") or 0) < 1900
    assert 590 < (value(text, "buildworker_outbox_oldest_unsent_age_seconds") or 0) < 700


def test_a_scrape_storm_queries_the_database_once_per_cache_period(
    make_app: Callable[..., FastAPI],
) -> None:
    app = make_app(metrics_cache=60.0)
    client = TestClient(app)
    headers = user_headers(app)
    submit(client, headers)
    collector = next(
        c
        for c in app.state.metrics.registry._collector_to_names
        if isinstance(c, DatabaseCollector)
    )
    first = scrape(client)
    for _ in range(50):
        scrape(client)
    assert collector.computations == 1
    # within the period a new job is not seen yet: the cached values are served
    submit(client, headers)
    assert value(scrape(client), "buildworker_jobs", status="queued") == 1
    assert value(first, "buildworker_jobs", status="queued") == 1


def test_database_gauges_report_db_up_0_when_the_database_is_unreachable() -> None:
    engine = create_engine(
        f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none",
        connect_args={"connect_timeout": 2},
    )
    collector = DatabaseCollector(sessionmaker(bind=engine), cache_s=0)
    families = {m.name: m for m in collector.collect()}
    assert [s.value for s in families["buildworker_db_up"].samples] == [0]
    assert "buildworker_jobs" not in families  # missing, not a false 0
    engine.dispose()


def test_builds_submitted_counts_jobs_sent_to_the_queue(make_app: Callable[..., FastAPI]) -> None:
    app = make_app()
    client = TestClient(app)
    headers = user_headers(app)
    submit(client, headers)
    pending = submit(client, headers, execute=False)
    assert value(scrape(client), "buildsrht_builds_submitted_total") == 1
    assert client.post(f"/api/jobs/{pending}/start", headers=headers).status_code == 200
    assert value(scrape(client), "buildsrht_builds_submitted_total") == 2


def _lapse(app: FastAPI, job_id: int) -> None:
    with app.state.sessionmaker() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status, job.runner = "running", "gone-worker"
        job.lease_expires = utcnow() - timedelta(seconds=5)
        session.commit()


def test_reaped_leases_and_requeues_are_counted(make_app: Callable[..., FastAPI]) -> None:
    app = make_app()
    client = TestClient(app)
    headers = user_headers(app)
    first, second = submit(client, headers), submit(client, headers)
    _lapse(app, first)
    with app.state.sessionmaker() as session:
        assert reap(session, max_attempts=3) == [first]
    # the second reaches its last attempt and fails
    with app.state.sessionmaker() as session:
        session.get(Job, second).attempt = 3  # type: ignore[union-attr]
        session.commit()
    _lapse(app, second)
    with app.state.sessionmaker() as session:
        assert reap(session, max_attempts=3) == [second]
    text = scrape(client)
    assert value(text, "buildworker_leases_reaped_total", outcome="requeued") == 1
    assert value(text, "buildworker_leases_reaped_total", outcome="failed") == 1
    assert value(text, "buildworker_leases_reaped_total", outcome="cancelled") == 0
    assert value(text, "buildworker_jobs_requeued_total") == 1


@pytest.fixture
def webhook_receiver() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def test_trigger_attempts_are_counted_by_outcome_and_under_srht_names(
    make_app: Callable[..., FastAPI], webhook_receiver: str
) -> None:
    app = make_app()
    client = TestClient(app)
    job_id = submit(client, user_headers(app))
    with app.state.sessionmaker() as session:
        for index, url in enumerate((webhook_receiver, f"http://127.0.0.1:{free_port()}/")):
            session.add(
                TriggerDelivery(
                    job_id=job_id,
                    index=index,
                    action="webhook",
                    condition="always",
                    details={"url": url},
                    fired_status="success",
                )
            )
        # an email whose job or group is gone: a permanent failure
        session.add(
            TriggerDelivery(
                index=9, action="email", condition="always", details={}, fired_status="failed"
            )
        )
        session.commit()
    config = app.state.config
    config = replace(config, triggers=replace(config.triggers, webhook_allow_private=True))
    assert TriggerSender(app.state.sessionmaker, config).run_once() == 3
    text = scrape(client)
    attempts = "buildworker_trigger_attempts_total"
    assert value(text, attempts, action="webhook", outcome="sent") == 1
    assert value(text, attempts, action="webhook", outcome="retry") == 1
    assert value(text, attempts, action="email", outcome="failed") == 1
    assert value(text, attempts, action="email", outcome="sent") == 0
    assert value(text, "buildsrht_triggers_executed") == 3
    assert value(text, "buildsrht_triggers_webhooks") == 2
    assert value(text, "buildsrht_triggers_webhooks_failed") == 1
    assert "# TYPE buildsrht_triggers_executed untyped" in text
    # and the database view: one sent, one pending retry, one failed
    fresh = TestClient(make_app(metrics_cache=0.0))
    db_view = scrape(fresh)
    assert value(db_view, "buildworker_trigger_deliveries", action="webhook", state="sent") == 1
    assert value(db_view, "buildworker_trigger_deliveries", action="webhook", state="pending") == 1
    assert value(db_view, "buildworker_trigger_deliveries", action="email", state="failed") == 1


def test_sessions_made_outside_the_app_record_nothing(make_app: Callable[..., FastAPI]) -> None:
    app = make_app()
    assert metrics_of(app.state.sessionmaker()) is app.state.metrics
    bare = sessionmaker(bind=app.state.engine)
    with bare() as session:
        assert metrics_of(session) is NULL_METRICS
        metrics_of(session).lease_reaped("requeued")  # no error, no registry


def test_promtool_check_metrics_is_clean_on_the_api_scrape(
    make_app: Callable[..., FastAPI],
) -> None:
    app = make_app()
    client = TestClient(app)
    headers = user_headers(app)
    job_id = submit(client, headers)
    client.get(f"/api/jobs/{job_id}", headers=headers)
    client.get("/api/jobs", headers=headers)
    text = scrape(client)
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/setup installs Debian's prometheus"
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr
