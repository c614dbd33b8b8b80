"""Acceptance: the real API (outbox publisher and reaper on), the real RabbitMQ (a fresh vhost),
the worker daemon and real libvirt guests.

Every test boots at least one guest (~20 s of CPU under TCG); each checks as much of one
build as it can.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import time
from dataclasses import replace
from typing import Any

import httpx
import pytest
from worker_helpers import SECRET, Stack

from buildworker.exitcodes import EXIT_OK

pytestmark = [pytest.mark.vm, pytest.mark.slow]


def test_a_full_build_succeeds_with_complete_logs_and_a_byte_identical_artifact(
    stack_factory: Any, git_server: tuple[int, str], keep_forward: Any
) -> None:
    port, tagged = git_server
    keep_forward(port)
    stack: Stack = stack_factory(forwards=(f"10.0.2.2:{port}=127.0.0.1:{port}",))
    live = stack.live
    # Given a plaintext_file secret of the user
    response = httpx.post(
        f"{live.url}/api/secrets",
        json={
            "name": "token",
            "type": "plaintext_file",
            "data_b64": base64.b64encode(SECRET.encode()).decode(),
            "path": "~/.config/token",
            "mode": "600",
        },
        headers=live.headers(),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    # And a manifest with two tasks, typed env values, a package, a git source, an artifact
    manifest = f"""\
image: debian/bookworm
packages: [jq]
sources: [http://10.0.2.2:{port}/repo.git#v1]
secrets: [token]
environment:
  WORDS: two words
  COUNT: 1000000
  FLAG: false
artifacts: [out/blob.bin]
tasks:
  - inspect: |
      cat repo/file.txt
      echo "words=$WORDS count=$COUNT flag=$FLAG"
      echo '{{"k": 41}}' | jq '.k + 1'
      cat ~/.config/token
      for c in $(cat ~/.config/token | fold -w1); do printf '%s' "$c"; done; echo
      echo inspect-done
  - package: |
      mkdir -p out
      head -c 300000 /dev/urandom > out/blob.bin
      sha256sum out/blob.bin
      echo package-done
"""
    job_id = live.submit(manifest)
    stack.start_daemon()
    job = stack.wait(job_id)
    setup = stack.log(job_id)
    inspect = stack.log(job_id, "inspect")
    package = stack.log(job_id, "package")
    assert job["status"] == "success", setup.decode(errors="replace")
    assert {t["name"]: t["status"] for t in job["tasks"]} == {
        "inspect": "success",
        "package": "success",
    }
    # Both task logs are complete
    assert tagged.encode() in inspect and b"words=two words count=1000000 flag=false" in inspect
    assert b"42" in inspect and inspect.rstrip().endswith(b"inspect-done")
    assert package.rstrip().endswith(b"package-done")
    # No secret in any log, even cat'd and printed one character at a time
    for text in (setup, inspect, package):
        assert SECRET.encode() not in text and SECRET[:10].encode() not in text
    assert b"[MASKED]" in inspect
    # The artifact downloads byte-identical from its URL
    listing = live.get(f"/api/jobs/{job_id}/artifacts").json()
    artifacts = listing["results"] if isinstance(listing, dict) else listing
    assert len(artifacts) == 1
    blob = live.get(httpx.URL(artifacts[0]["url"]).path).content
    assert len(blob) == 300000
    assert hashlib.sha256(blob).hexdigest().encode() in package
    assert artifacts[0]["url"].encode() in setup


def test_failure_cancel_and_timeout_end_with_the_right_statuses(stack_factory: Any) -> None:
    stack: Stack = stack_factory(job_timeout=75.0)
    live = stack.live
    failing = live.submit(
        "image: debian/bookworm\ntasks:\n  - a: echo a\n  - b: exit 3\n  - c: echo c\n"
    )
    stack.start_daemon()
    job = stack.wait(failing)
    assert job["status"] == "failed"
    assert {t["name"]: t["status"] for t in job["tasks"]} == {
        "a": "success",
        "b": "failed",
        "c": "skipped",
    }
    # A cancel mid-task stops the build within 2 s
    cancelled = live.submit(
        "image: debian/bookworm\ntasks:\n  - wait: |\n      echo started\n      sleep 600\n"
    )
    stack.wait_log(cancelled, b"started", task="wait")
    sent = time.monotonic()
    response = httpx.post(f"{live.url}/api/jobs/{cancelled}/cancel", headers=live.headers())
    assert response.status_code == 200, response.text
    stopped = stack.wait_log(cancelled, b"Build cancelled.", timeout=30)
    assert stopped - sent <= 2.0 + 0.3, f"took {stopped - sent:.2f}s"  # 0.3: our log polling
    assert stack.wait(cancelled, timeout=60)["status"] == "cancelled"
    # A sleep past the job timeout (75 s from claim, sent by the API) ends in timeout
    slow = live.submit("image: debian/bookworm\ntasks:\n  - slow: sleep 600\n")
    job = stack.wait(slow, timeout=200)
    assert job["status"] == "timeout"
    assert b"Build timed out." in stack.log(slow)


def test_a_guest_destroyed_mid_task_is_an_infrastructure_failure_and_the_job_runs_again(
    stack_factory: Any,
) -> None:
    stack: Stack = stack_factory()
    live = stack.live
    job_id = live.submit(
        "image: debian/bookworm\ntasks:\n  - wait: |\n      echo started\n      sleep 15\n"
        "      echo finished-after-sleep\n"
    )
    daemon = stack.start_daemon()
    stack.wait_log(job_id, b"started", task="wait")
    # When the VM is destroyed from outside while the task runs (not by the build)
    listing = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--name"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    (domain,) = [name for name in listing if name.endswith(f"-{job_id}-1")]
    subprocess.run(["virsh", "-c", "qemu:///system", "destroy", domain], check=True, timeout=60)
    # Then the attempt ends as an infrastructure failure (never "cancelled" or a task
    # failure), the API requeues the job, and the second attempt, on a fresh VM, succeeds
    job = stack.wait(job_id, timeout=300)
    assert job["status"] == "success", stack.log(job_id)[-2000:]
    from buildworker.db.models import Job

    with live.app.state.sessionmaker() as session:
        row = session.get(Job, job_id)
        assert row is not None and row.attempt == 2
    assert b"finished-after-sleep" in stack.log(job_id, "wait")
    infra = daemon.metrics.registry.get_sample_value(
        "buildworker_infra_failures_total", {"reason": "ssh"}
    )
    assert infra == 1.0
    finished = daemon.metrics.registry.get_sample_value(
        "buildworker_jobs_finished_total", {"status": "success"}
    )
    assert finished == 1.0


def test_a_task_flooding_its_log_leaves_the_setup_log_its_end_and_the_job_its_status(
    stack_factory: Any,
) -> None:
    # Given caps far below what a task writes: 2 MiB per job, 1 MiB per task, 256 KiB of it
    # kept for the setup log
    stack: Stack = stack_factory()
    stack.config = replace(
        stack.config,
        worker=replace(
            stack.config.worker,
            max_log_size=2 * 1024**2,
            max_task_log_size=1024**2,
            setup_log_reserve=256 * 1024,
        ),
    )
    # When a task writes 8 MB, the next one a line, and the last fails
    job_id = stack.live.submit(
        "image: debian/bookworm\ntasks:\n"
        "  - flood: head -c 8000000 /dev/zero | tr '\\0' x | fold -w 200\n"
        "  - after: echo after-the-flood\n"
        "  - last: exit 3\n"
    )
    stack.start_daemon()
    job = stack.wait(job_id, timeout=600)
    # Then the job ends with its real status, each task with its own
    assert job["status"] == "failed"
    assert {t["name"]: t["status"] for t in job["tasks"]} == {
        "flood": "success",
        "after": "success",
        "last": "failed",
    }
    # And the setup log still ends with the build's final line
    setup = stack.log(job_id)
    assert setup.rstrip(b"\r\n").endswith(b"Build failed."), setup[-500:]
    # And the flooding task's log stopped at its cap, saying once how much was dropped
    flood = stack.log(job_id, "flood")
    assert len(flood) < 1024**2 + 1024
    assert flood.count(b"[buildworker] Log truncated: this log reached its limit") == 1
    assert flood.count(b"bytes of output were dropped") == 1
    assert b"after-the-flood" in stack.log(job_id, "after")


def test_the_build_survives_a_broker_and_an_api_restart_mid_build(
    stack_factory: Any, make_proxy: Any, amqp_url: str
) -> None:
    stack: Stack = stack_factory()
    live = stack.live
    broker = make_proxy(5672)
    via_proxy = amqp_url.replace(":5672", f":{broker.port}")
    job_id = live.submit(
        "image: debian/bookworm\ntasks:\n  - long: |\n"
        "      for i in $(seq 1 40); do echo line-$i; sleep 0.5; done\n"
        "      echo all-done\n"
    )
    daemon = stack.start_daemon(broker_url=via_proxy)
    stack.wait_log(job_id, b"line-3", task="long")
    # The broker goes away (connections cut and refused) for 5 s
    broker.cut()
    time.sleep(5)
    broker.restore()
    # The API goes down for 5 s
    live.stop()
    time.sleep(5)
    live.start()
    job = stack.wait(job_id, timeout=240)
    assert job["status"] == "success"
    log = stack.log(job_id, "long")
    lines = [f"line-{i}".encode() for i in range(1, 41)]
    assert all(line in log for line in lines) and log.rstrip().endswith(b"all-done")
    assert log.count(b"\nline-7\r\n") == 1  # nothing duplicated by retries
    assert daemon._consumer is not None and daemon._consumer.connected.wait(30)


def test_sigterm_drains_takes_no_new_job_and_exits_0(stack_factory: Any) -> None:
    stack: Stack = stack_factory()
    live = stack.live
    first = live.submit(
        "image: debian/bookworm\ntasks:\n  - work: |\n      echo begun\n      sleep 15\n      echo finished-work\n"
    )
    daemon = stack.start_daemon()
    stack.wait_log(first, b"begun", task="work")
    daemon.drain()  # what the first SIGTERM does (the handler only sets this event)
    second = live.submit("image: debian/bookworm\ntasks:\n  - x: echo x\n")
    assert stack.thread is not None
    stack.thread.join(180)
    assert stack.exit_code == EXIT_OK
    assert stack.wait(first, timeout=5)["status"] == "success"
    assert b"finished-work" in stack.log(first, "work")
    time.sleep(2)
    assert live.job(second)["status"] == "queued"


def test_a_second_stop_signal_cancels_the_build_and_releases_the_lease(
    stack_factory: Any,
) -> None:
    stack: Stack = stack_factory()
    live = stack.live
    job_id = live.submit(
        "image: debian/bookworm\ntasks:\n  - wait: |\n      echo begun\n      sleep 600\n"
    )
    daemon = stack.start_daemon()
    stack.wait_log(job_id, b"begun", task="wait")
    # First SIGTERM: drain (the build goes on), second: stop at once
    daemon.drain()
    time.sleep(2)
    assert live.job(job_id)["status"] == "running"
    sent = time.monotonic()
    daemon.stop_now()
    assert stack.thread is not None
    stack.thread.join(60)
    assert not stack.thread.is_alive() and time.monotonic() - sent < 20
    # The lease was released: the job is queued again for its next attempt, not failed
    assert stack.wait(job_id, statuses=("queued",), timeout=10)["status"] == "queued"
