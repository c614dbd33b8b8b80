"""A real build scraped by a real Prometheus: builds.sr.ht's running gauge goes 1 then 0,
one build-duration observation with its status, a settle sample, and ours (queue wait,
boot, settle, setup, each task); the API's request series. The worker logs JSON lines (its
stderr is a file, `[log] format` is the default `auto`): every line of the build carries
the job id and none holds the job's secret.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ops_helpers import MANIFEST, answers_200, free_port, ops_config, stop, user_headers, wait_for
from prometheus_helpers import Prometheus, promtool

from buildworker.api.app import create_app
from buildworker.commands.api import ApiService
from buildworker.sdnotify import Notifier

pytestmark = [pytest.mark.vm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
WORKER_TOKEN = "ops-worker-token"  # ops_config's [api] worker-token
#: The images root holding debian/bookworm, symlinks resolved (in a worktree the image is a
#: link to another checkout's, and the catalogue refuses images outside its root).
IMAGES = (REPO / "images" / "debian" / "bookworm").resolve().parents[1]


#: Events of the worker process itself, not of a build (everything else must name the job).
PROCESS_EVENTS = {
    "hypervisor.ready",
    "worker_started",
    "amqp_connected",
    "worker_ready",
    "worker_not_ready",
    "worker_draining",
    "worker_stopped",
    "hypervisor.reaped",
    "reaped_leftover_vms",
    "egress.dead_owners_removed",
    "control.listening",
    "ssh_access_off",
}

#: Events of the worker's own guests before any job has them: snapshot templates and the
#: warm pool filling (a pooled guest's events carry the job's ids once a job takes it).
POOL_EVENTS = ("pool.sized", "pool.filled", "pool.discarded", "guest.snapshot")


def process_event(event: dict[str, object]) -> bool:
    name = str(event.get("event"))
    if name in PROCESS_EVENTS or name.startswith(POOL_EVENTS):
        return True
    # a guest event of a template or pool guest names its domain, never a job
    domain = str(event.get("domain", event.get("guest")))
    return (
        name.startswith("guest.")
        and "job_id" not in event
        and ("-0-" in domain or "snap-" in domain)
    )


@pytest.fixture
def api(tmp_path: Path, sqlite_url: str, amqp_url: str) -> Iterator[tuple[str, dict[str, str]]]:
    app = create_app(ops_config(sqlite_url, tmp_path / "api", amqp_url, metrics_cache=0.5))
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


def test_a_real_build_seen_by_prometheus(
    tmp_path: Path, api: tuple[str, dict[str, str]], amqp_url: str
) -> None:
    url, headers = api
    work_dir = Path(tempfile.mkdtemp(prefix="bw-ops-vms-", dir="/tmp"))
    work_dir.chmod(0o755)
    metrics_port = free_port()
    conf = tmp_path / "worker.conf"
    conf.write_text(
        f"[broker]\nurl = {amqp_url}\nheartbeat = 5s\nreconnect-max = 2s\n"
        f"[worker]\nname = ops-{uuid.uuid4().hex[:6]}\napi-url = {url}\ntoken = {WORKER_TOKEN}\n"
        f"images = {IMAGES}\nmetrics-bind = 127.0.0.1:{metrics_port}\n"
        f"[vm]\nssh-key = {REPO / '.state/id_ed25519'}\nwork-dir = {work_dir}\n"
    )
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "buildworker.cli", "--config", str(conf), "worker"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    targets = {
        "buildworker-api": [url.removeprefix("http://")],
        "buildworker-worker": [f"127.0.0.1:{metrics_port}"],
    }
    try:
        with Prometheus(tmp_path / "prom", targets) as prom:
            prom.wait_for_targets_up(timeout=120)
            secret = f"ops-secret-{uuid.uuid4().hex}"
            response = httpx.post(
                f"{url}/api/secrets",
                json={
                    "name": "opstoken",
                    "type": "plaintext_file",
                    "data_b64": base64.b64encode(secret.encode()).decode(),
                    "path": "~/.config/opstoken",
                    "mode": "600",
                },
                headers=headers,
                timeout=30,
            )
            assert response.status_code == 200, response.text
            started = time.time()
            manifest = MANIFEST.replace("tasks:", "secrets: [opstoken]\ntasks:")
            response = httpx.post(
                f"{url}/api/jobs",
                json={
                    "manifest": manifest + "  - show: cat ~/.config/opstoken\n  - wait: sleep 3\n"
                },
                headers=headers,
                timeout=30,
            )
            assert response.status_code == 200, response.text
            job_id = response.json()["id"]

            def status() -> str:
                job = httpx.get(f"{url}/api/jobs/{job_id}", headers=headers, timeout=10).json()
                return str(job["status"])

            wait_for(lambda: status() in ("success", "failed", "timeout", "cancelled"), 600, "end")
            assert status() == "success", log.read_text()[-3000:]
            # One build-duration observation (builds.sr.ht's name), with the job's status
            prom.wait_for('buildsrht_build_duration_count{status="success"}', lambda v: v == [1.0])
            image = 'image="debian/bookworm",arch="amd64"'  # the resolved arch
            # The settle histogram has a sample, and so has each of our phases
            assert prom.values(f"buildsrht_vm_settle_duration_seconds_count{{{image}}}") == [1.0]
            assert prom.values(f"buildsrht_image_runs_total{{{image}}}") == [1.0]
            for phase in ("job_queue_wait", "vm_boot", "vm_settle", "job_setup"):
                assert prom.values(f"buildworker_{phase}_seconds_count{{{image}}}") == [1.0], phase
            # three tasks, each timed under its status (never its name)
            tasks = f'buildworker_task_duration_seconds_count{{{image},status="success"}}'
            assert prom.values(tasks) == [3.0]
            assert prom.values('buildworker_jobs_finished_total{status="success"}') == [1.0]
            assert prom.values("buildworker_log_bytes_total")[0] > 0
            assert prom.values("buildworker_worker_ready") == [1.0]
            # The running gauge was 1 during the build, and is 0 now
            prom.wait_for("buildsrht_builds_running", lambda v: v == [0.0])
            # (the range's 1 s steps may all fall before the scrape that saw 0: end one step on)
            series = prom.query_range("buildsrht_builds_running", started - 5, time.time() + 1)
            values = [v for _, v in series[0]["values"]]
            assert 1.0 in values and values[-1] == 0.0, values
            first_one = values.index(1.0)
            assert all(v == 0.0 for v in values[:first_one])  # 0 (or absent), then 1, then 0
            # And the API's request series for /api/jobs
            assert prom.values(
                'buildworker_api_request_duration_seconds_count{route="/api/jobs",method="POST"}'
            ) == [1.0]
            # promtool is clean on both scrapes after a build
            for target in targets.values():
                text = httpx.get(f"http://{target[0]}/metrics", timeout=10).text
                print(f"--- scrape of {target[0]} ---\n{text}")
                lint = subprocess.run(
                    [promtool(), "check", "metrics"], input=text, capture_output=True, text=True
                )
                assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout
    finally:
        stop(worker, timeout=120)
    # Every line the worker wrote is a JSON object; every line of the build names the job,
    # its attempt and image; the secret is in none of them.
    lines = log.read_text().splitlines()
    events = [json.loads(line) for line in lines]  # raises on a line that is not JSON
    assert all(secret not in line for line in lines)
    build = [e for e in events if not process_event(e)]
    assert build, "no event of the build was logged"
    for event in build:
        assert event.get("job_id") == job_id, event
        assert event.get("attempt") == 1 and event.get("image") == "debian/bookworm", event
    assert {"build_finished", "guest_ready"} <= {e["event"] for e in build}
    finished = next(e for e in build if e["event"] == "build_finished")
    assert finished["attempt"] == 1 and finished["image"] == "debian/bookworm", finished
