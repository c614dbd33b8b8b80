"""The contract from both sides: the worker's own internal-API client
(`buildworker.worker.apiclient.InternalApi`) against the real API over HTTP on loopback."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
import uvicorn
from api_helpers import MANIFEST, WORKER_TOKEN, Account, make_account
from fastapi import FastAPI

from buildworker.api.app import create_app
from buildworker.config import Config
from buildworker.worker.apiclient import Conflict, InternalApi, NotFound, TooLarge, Unauthorized
from buildworker.worker.logs import SETUP_LOG


@pytest.fixture
def served(api_config: Config) -> Iterator[tuple[str, FastAPI, Account]]:
    """The app under uvicorn on a free 127.0.0.1 port (no background threads)."""
    sock = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = create_app(
        replace(api_config, api=replace(api_config.api, origin=url, max_artifact_size=4096))
    )
    alice = make_account(app, "alice")
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    try:
        yield url, app, alice
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
        app.state.engine.dispose()


def test_the_worker_client_plays_a_whole_job_against_the_api(
    served: tuple[str, FastAPI, Account],
) -> None:
    url, _app, alice = served
    user = httpx.Client(base_url=url, headers=alice.headers())
    api = InternalApi(url, WORKER_TOKEN, retry_budget_s=5)
    try:
        api.register("host1", [{"image": "debian/bookworm", "arches": ["amd64"]}])
        job_id = user.post("/api/jobs", json={"manifest": MANIFEST}).json()["id"]
        claimed = api.claim(job_id, "host1", 1)
        assert claimed.manifest == MANIFEST and claimed.secrets == []
        # A redelivered message's claim is refused as a Conflict the worker dead-letters
        with pytest.raises(Conflict):
            api.claim(job_id, "host2", 1)
        assert api.heartbeat(job_id, 1) is False
        assert api.append_log(job_id, 1, SETUP_LOG, 0, b"Booting\n") == 8
        # a chunk re-sent after a lost answer, overlapping what landed: only the rest is kept
        assert api.append_log(job_id, 1, SETUP_LOG, 4, b"ing\nReady\n") == 14
        api.task_status(job_id, 1, "build", "running")
        assert api.append_log(job_id, 1, "build", 0, b"hello\n") == 6
        api.task_status(job_id, 1, "build", "success")
        artifact_url = api.upload_artifact(job_id, 1, "out/a.txt", io.BytesIO(b"abc"), 3)
        with pytest.raises(TooLarge):
            api.upload_artifact(job_id, 1, "big", io.BytesIO(b"x" * 5000), 5000)
        # a chunk that would leave a gap is a Conflict carrying the size
        with pytest.raises(Conflict) as gap:
            api.append_log(job_id, 1, "build", 100, b"x")
        assert gap.value.body["size"] == 6
        api.finish(job_id, 1, "success")
        api.finish(job_id, 1, "success")  # retried: a no-op
        with pytest.raises(NotFound):
            api.claim(10**6, "host1", 1)
    finally:
        api.close()
    job = user.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "success" and job["runner"] == "host1"
    assert [(t["name"], t["status"]) for t in job["tasks"]] == [
        ("build", "success"),
        ("test", "skipped"),
    ]
    assert httpx.get(job["setup_log"]).content == b"Booting\nReady\n"
    assert httpx.get(artifact_url).content == b"abc"
    user.close()


def test_the_worker_client_is_refused_with_a_wrong_token(
    served: tuple[str, FastAPI, Account],
) -> None:
    url, _app, _alice = served
    api = InternalApi(url, "not-the-token", retry_budget_s=1)
    try:
        with pytest.raises(Unauthorized):
            api.register("host1", [])
    finally:
        api.close()
