"""The internal API client and ApiReporter against the real API app under uvicorn."""

from __future__ import annotations

import io
import threading
import time
from typing import Any

import httpx
import pytest
from worker_helpers import WORKER_TOKEN, LiveApi

from buildworker.worker.apiclient import (
    Conflict,
    InternalApi,
    InternalApiError,
    NotFound,
    Unauthorized,
)
from buildworker.worker.logs import SETUP_LOG, LogStreamer
from buildworker.worker.redact import NeedleSet
from buildworker.worker.report import ApiReporter

MANIFEST = """\
image: debian/bookworm
artifacts: [out/result.bin]
tasks:
  - build: echo hi
  - test: echo there
"""


def test_a_whole_attempt_reported_through_the_client(live_api: LiveApi) -> None:
    # Given a queued job and a worker client
    job_id = live_api.submit(MANIFEST)
    api = InternalApi(live_api.url, WORKER_TOKEN)
    # When the worker claims it and reports everything
    claim = api.claim(job_id, "test-worker", 1)
    assert claim.manifest == MANIFEST and claim.secrets == []
    assert api.heartbeat(job_id, 1) is False
    reporter = ApiReporter(api, job_id, 1)
    streamer = LogStreamer(reporter, NeedleSet(), flush_interval_s=0.05).start()
    streamer.open(SETUP_LOG).write(b"booting\n")
    reporter.task_status("build", "running")
    streamer.open("build").write(b"hi\r\n")
    streamer.close()
    reporter.task_status("build", "success")
    reporter.task_status("test", "skipped")
    payload = bytes(range(256)) * 1000
    url = reporter.upload_artifact("out/result.bin", io.BytesIO(payload), len(payload))
    api.finish(job_id, 1, "success")
    # Then the API shows it all
    job = live_api.job(job_id)
    assert job["status"] == "success"
    assert {t["name"]: t["status"] for t in job["tasks"]} == {"build": "success", "test": "skipped"}
    assert live_api.get(f"/logs/{job_id}/log").content == b"booting\n"
    assert live_api.get(f"/logs/{job_id}/build/log").content == b"hi\r\n"
    path = httpx.URL(url).path
    assert live_api.get(path).content == payload
    # And a second claim of that attempt is refused
    with pytest.raises(Conflict):
        api.claim(job_id, "test-worker", 1)


def test_the_image_a_job_booted_is_reported_into_its_record(live_api: LiveApi) -> None:
    job_id = live_api.submit(MANIFEST)
    api = InternalApi(live_api.url, WORKER_TOKEN)
    claim = api.claim(job_id, "test-worker", 1)
    assert claim.image_release == "debian/bookworm"  # resolved at submit
    digest = "sha256:" + "e" * 64
    api.report_image(job_id, 1, "debian/bookworm", "amd64", digest, budget_s=5)
    job = live_api.job(job_id)
    assert (job["image_release"], job["image_digest"]) == ("debian/bookworm", digest)
    # A lost lease is a Conflict, raised at once
    with pytest.raises(Conflict):
        api.report_image(job_id, 2, "debian/bookworm", "amd64", None, budget_s=5)


def test_a_retried_log_chunk_is_not_duplicated(live_api: LiveApi) -> None:
    job_id = live_api.submit(MANIFEST)
    api = InternalApi(live_api.url, WORKER_TOKEN)
    api.claim(job_id, "w", 1)
    assert api.append_log(job_id, 1, SETUP_LOG, 0, b"hello ") == 6
    # A retry of a chunk that did land, extended by new bytes: only the new part is added
    assert api.append_log(job_id, 1, SETUP_LOG, 0, b"hello world\n") == 12
    assert api.append_log(job_id, 1, SETUP_LOG, 6, b"world\n") == 12
    # A gap is refused
    with pytest.raises(Conflict):
        api.append_log(job_id, 1, SETUP_LOG, 50, b"x")
    assert live_api.get(f"/logs/{job_id}/log").content == b"hello world\n"


def test_a_task_called_setup_has_its_own_log_apart_from_the_setup_log(live_api: LiveApi) -> None:
    # Given a job whose first task is named "setup", as in many real manifests
    job_id = live_api.submit(
        "image: debian/bookworm\ntasks:\n  - setup: echo a\n  - build: echo b\n"
    )
    api = InternalApi(live_api.url, WORKER_TOKEN)
    api.claim(job_id, "w", 1)
    reporter = ApiReporter(api, job_id, 1)
    streamer = LogStreamer(reporter, NeedleSet(), flush_interval_s=0.05).start()
    # When the worker writes both the setup log and the task's log
    streamer.open(SETUP_LOG).write(b"Booting image\n")
    streamer.open("setup").write(b"+ echo a\na\n")
    streamer.close()
    # Then each lands at its own URL, neither mixed into the other
    assert live_api.get(f"/logs/{job_id}/log").content == b"Booting image\n"
    assert live_api.get(f"/logs/{job_id}/setup/log").content == b"+ echo a\na\n"


def test_answers_retrying_cannot_change_are_raised_at_once(live_api: LiveApi) -> None:
    with pytest.raises(Unauthorized):
        InternalApi(live_api.url, "wrong").claim(1, "w", 1)
    with pytest.raises(NotFound):
        InternalApi(live_api.url, WORKER_TOKEN).claim(99999, "w", 1)


def test_calls_wait_out_an_api_restart(live_api: LiveApi) -> None:
    # Given a claimed job
    job_id = live_api.submit(MANIFEST)
    api = InternalApi(live_api.url, WORKER_TOKEN)
    api.claim(job_id, "w", 1)
    # When the API goes down for two seconds while the worker sends a log chunk
    live_api.stop()
    result: dict[str, Any] = {}

    def send() -> None:
        result["size"] = api.append_log(job_id, 1, SETUP_LOG, 0, b"still here\n")

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(2)
    assert sender.is_alive()
    live_api.start()
    sender.join(30)
    # Then the chunk landed once the API was back
    assert result["size"] == 11 and api.retries >= 1
    assert live_api.get(f"/logs/{job_id}/log").content == b"still here\n"


def test_an_api_that_stays_down_is_an_error_after_the_budget(live_api: LiveApi) -> None:
    live_api.stop()
    api = InternalApi(live_api.url, WORKER_TOKEN, retry_budget_s=1.0)
    started = time.monotonic()
    with pytest.raises(InternalApiError):
        api.heartbeat(1, 1)
    assert time.monotonic() - started < 10
