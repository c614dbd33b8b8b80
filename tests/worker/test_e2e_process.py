"""Acceptance with `buildworker worker` as a real process: kill -9 mid-build, then SIGTERM.

The API runs in this process (publisher and lease reaper on, short lease); the worker is a
subprocess we signal. Two guests are booted.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from worker_helpers import (
    IMAGES,
    SSH_KEY,
    WORKER_TOKEN,
    LiveApi,
    api_config,
    job_dirs,
    vm_work_dir,
)

pytestmark = [pytest.mark.vm, pytest.mark.slow]


@pytest.fixture
def live(data_dir: Path, sqlite_url: str, amqp_url: str) -> Iterator[LiveApi]:
    config = api_config(data_dir, sqlite_url, amqp_url)
    config = replace(config, api=replace(config.api, lease=6.0, reap_interval=1.0))
    api = LiveApi(config, lifespan="on")
    yield api
    api.close()


def worker_conf(path: Path, live: LiveApi, amqp_url: str, work_dir: Path, name: str) -> Path:
    path.write_text(
        f"""\
[api]
lease = 6s
[broker]
url = {amqp_url}
heartbeat = 5s
reconnect-max = 2s
[worker]
name = {name}
api-url = {live.url}
token = {WORKER_TOKEN}
images = {IMAGES}
drain-timeout = 5m
[vm]
ssh-key = {SSH_KEY}
work-dir = {work_dir}
[log]
level = info
"""
    )
    return path


def start_worker(conf: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "buildworker.cli", "worker", "--no-metrics", "--config", str(conf)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def task_log(live: LiveApi, job_id: int, task: str) -> bytes:
    response = live.get(f"/logs/{job_id}/{task}/log")
    return response.content if response.status_code in (200, 206) else b""


def test_kill_9_mid_build_reruns_the_job_once_and_sigterm_drains(
    live: LiveApi, amqp_url: str, tmp_path: Path
) -> None:
    work_dir = vm_work_dir()
    name = f"proc-{uuid.uuid4().hex[:6]}"
    conf = worker_conf(tmp_path / "worker.conf", live, amqp_url, work_dir, name)
    log = tmp_path / "worker.log"
    manifest = (
        "image: debian/bookworm\ntasks:\n  - work: |\n"
        "      echo started-$JOB_ID\n      sleep 12\n      echo finished-work\n"
    )
    job_id = live.submit(manifest)
    first = start_worker(conf, log)
    second: subprocess.Popen[bytes] | None = None
    try:
        # Given a worker killed with SIGKILL while the task runs
        wait_for(lambda: b"started-" in task_log(live, job_id, "work"), 240, "the task to start")
        first.kill()
        first.wait(10)
        # When a worker starts again on this host
        second = start_worker(conf, log)
        # Then the lease lapses, the job is requeued (attempt 2) and runs to success once
        wait_for(
            lambda: live.job(job_id)["status"] in ("success", "failed", "timeout", "cancelled"),
            300,
            "the job to end",
        )
        assert live.job(job_id)["status"] == "success", log.read_text()[-3000:]
        work_log = task_log(live, job_id, "work")
        assert work_log.count(b"\nfinished-work\r\n") == 1
        # And the first VM was reaped: only the second build's directory ever remains, and it
        # is gone after the build (the second worker's warm-pool guest stays until it stops)
        wait_for(lambda: job_dirs(work_dir) == [], 30, "VM directories to be removed")

        # Given a build running on the second worker
        other = live.submit(manifest)
        wait_for(lambda: b"started-" in task_log(live, other, "work"), 240, "the 2nd build")
        # When it gets SIGTERM and another job is submitted
        second.send_signal(signal.SIGTERM)
        late = live.submit("image: debian/bookworm\ntasks:\n  - x: echo x\n")
        # Then the running build finishes, the process exits 0 and the new job stays queued
        assert second.wait(180) == 0, log.read_text()[-3000:]
        assert live.job(other)["status"] == "success"
        assert b"finished-work" in task_log(live, other, "work")
        assert live.job(late)["status"] == "queued"
        assert list(work_dir.iterdir()) == []
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(work_dir, ignore_errors=True)


def test_no_line_of_the_workers_own_log_holds_a_secret(
    live: LiveApi, amqp_url: str, tmp_path: Path
) -> None:
    import base64
    import json
    import uuid

    # Given a secret, and two builds that put it where the worker's own log looks:
    secret = f"leak{uuid.uuid4().hex}"
    response = httpx.post(
        f"{live.url}/api/secrets",
        json={
            "name": "leaky",
            "type": "plaintext_file",
            "data_b64": base64.b64encode(secret.encode()).decode(),
            "path": "~/.config/leaky",
            "mode": "600",
        },
        headers=live.headers(),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    # a task that fails with a message quoting the secret
    failing = live.submit(
        "image: debian/bookworm\nsecrets: [leaky]\ntasks:\n"
        '  - leak: |\n      echo "cannot use $(cat ~/.config/leaky)" >&2\n      exit 1\n'
    )
    # and an exception raised inside a step (artifacts) whose text carries the secret
    in_step = live.submit(
        "image: debian/bookworm\nsecrets: [leaky]\ntasks:\n  - ok: echo fine\n"
        f"artifacts: [out/{secret}.txt]\n"
    )
    conf = worker_conf(
        tmp_path / "worker.conf", live, amqp_url, vm_work_dir(), f"mask-{uuid.uuid4().hex[:6]}"
    )
    # (no standby: the first failed build must not hold the one slot for its owner)
    text = conf.read_text().replace("drain-timeout = 5m\n", "drain-timeout = 5m\nstandby = 0\n")
    conf.write_text(text + "format = json\n")  # under [log], the last section
    log = tmp_path / "worker.log"
    worker = start_worker(conf, log)
    try:
        for job_id in (failing, in_step):
            wait_for(lambda j=job_id: live.job(j)["status"] == "failed", 400, f"job {job_id}")
    finally:
        worker.send_signal(15)
        worker.wait(120)
    # Then every line of the worker's output is JSON and none holds the secret
    lines = log.read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert all(secret not in line for line in lines)
    # and the masker was what kept it out: the step's error reached the log, masked
    reasons = [str(e.get("reason", "")) for e in events if e.get("event") == "build_finished"]
    assert any("[MASKED]" in r and "artifact out/" in r for r in reasons), reasons
    # (the job's own logs are masked by the redactor as always)
    assert secret.encode() not in task_log(live, failing, "leak")
    assert b"cannot use [MASKED]" in task_log(live, failing, "leak")
