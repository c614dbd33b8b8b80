"""A real Prometheus scraping the API (real uvicorn) and a worker's /metrics on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ops_helpers import MANIFEST, answers_200, free_port, ops_config, user_headers, wait_for
from prometheus_helpers import Prometheus

from buildworker.api.app import create_app
from buildworker.commands.api import ApiService
from buildworker.sdnotify import Notifier
from buildworker.worker.metrics import WorkerMetrics

pytestmark = pytest.mark.slow


@pytest.fixture
def api(tmp_path: Path, sqlite_url: str, amqp_url: str) -> Iterator[tuple[str, dict[str, str]]]:
    app = create_app(ops_config(sqlite_url, tmp_path, amqp_url, metrics_cache=0.5))
    headers = user_headers(app)
    port = free_port()
    service = ApiService(app, host="127.0.0.1", port=port, notifier=Notifier(None))
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers_200(f"{url}/readyz"), 30, "API ready")
    yield url, headers
    service.stop()
    thread.join(30)
    app.state.engine.dispose()


def test_prometheus_scrapes_request_durations_for_api_jobs_and_the_worker(
    tmp_path: Path, api: tuple[str, dict[str, str]]
) -> None:
    url, headers = api
    worker = WorkerMetrics()
    worker.set_slots(2)
    server = worker.serve(f"127.0.0.1:{free_port()}")
    targets = {
        "buildworker-api": [url.removeprefix("http://")],
        "buildworker-worker": [f"127.0.0.1:{server.port}"],
    }
    try:
        with Prometheus(tmp_path / "prom", targets) as prom:
            prom.wait_for_targets_up()
            # Given some requests to /api/jobs
            for _ in range(3):
                response = httpx.post(
                    f"{url}/api/jobs", json={"manifest": MANIFEST}, headers=headers, timeout=10
                )
                assert response.status_code == 200
            job_id = response.json()["id"]
            httpx.get(f"{url}/api/jobs", headers=headers, timeout=10)
            httpx.get(f"{url}/api/jobs/{job_id}", headers=headers, timeout=10)
            # Then Prometheus has request-duration series for the route templates
            posted = prom.wait_for(
                'buildworker_api_request_duration_seconds_count{route="/api/jobs",method="POST"}',
                lambda v: v == [3.0],
            )
            assert posted == [3.0]
            # (the GETs came after the POSTs: wait until a scrape has seen them too)
            prom.wait_for(
                'buildworker_api_request_duration_seconds_count{route="/api/jobs/{job_id}"}',
                lambda v: v == [1.0],
            )
            series = prom.query(
                'buildworker_api_request_duration_seconds_bucket{route="/api/jobs/{job_id}"}'
            )
            assert series and all(s["metric"]["job"] == "buildworker-api" for s in series)
            assert {s["metric"]["code"] for s in series} == {"200"}
            # no series was made from a raw path
            assert prom.query(f'{{route=~".*/{job_id}$"}}') == []
            # And the database gauges (published: the publisher runs on a real vhost)
            prom.wait_for('buildworker_jobs{status="queued"}', lambda v: v == [3.0])
            prom.wait_for("buildworker_outbox_backlog", lambda v: v == [0.0])
            assert prom.values("buildsrht_builds_submitted_total") == [3.0]
            # And the worker's scrape, with the instance label telling processes apart
            assert prom.values('buildworker_slots{job="buildworker-worker"}') == [2.0]
            assert prom.values('buildsrht_build_workers{job="buildworker-worker"}') == [2.0]
            up = {s["metric"]["instance"]: s["value"][1] for s in prom.query("up")}
            assert set(up.values()) == {"1"} and len(up) == 2
    finally:
        server.close()
