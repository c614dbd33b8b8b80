"""The daemon with the real API (outbox publisher on) and RabbitMQ, for deliveries it must
not build: no VM is booted in these tests (BootForbidden fails the test if one is asked for).
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pika
import pika.exceptions
import pytest
from worker_helpers import IMAGES, WORKER_TOKEN, LiveApi, api_config

from buildworker.exitcodes import EXIT_OK, EXIT_UNAUTHORIZED
from buildworker.guest.images import ImageCatalogue
from buildworker.queue import DEAD_QUEUE, REASON_HEADER
from buildworker.worker.apiclient import InternalApi
from buildworker.worker.daemon import Daemon

MANIFEST = "image: debian/bookworm\ntasks:\n  - build: echo hi\n"


class BootForbidden:
    """A VmHost that fails the test when a VM is requested (these paths must not boot)."""

    def __init__(self) -> None:
        self.calls = 0

    def boot(self, image: Any, *, job_id: int, attempt: int) -> Any:
        self.calls += 1
        raise AssertionError("no VM may be booted for a refused delivery")


@pytest.fixture
def stack(data_dir: Path, sqlite_url: str, amqp_url: str) -> Iterator[tuple[LiveApi, str]]:
    config = api_config(data_dir, sqlite_url, amqp_url)
    api = LiveApi(config, lifespan="on")
    yield api, amqp_url
    api.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dead_letters(amqp_url: str, want: int, timeout: float = 20) -> list[str]:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.queue_declare(DEAD_QUEUE, durable=True)
    reasons: list[str] = []
    deadline = time.monotonic() + timeout
    while len(reasons) < want and time.monotonic() < deadline:
        method, props, _ = ch.basic_get(DEAD_QUEUE, auto_ack=True)
        if method is None:
            time.sleep(0.1)
            continue
        reasons.append(str((props.headers or {}).get(REASON_HEADER)))
    conn.close()
    return reasons


def wait_for_depth(amqp_url: str, queue: str, depth: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        try:
            count = conn.channel().queue_declare(queue, passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker:
            count = -1
        conn.close()
        if count == depth:
            return
        time.sleep(0.1)
    raise AssertionError(f"{queue} never held {depth} messages")


def test_a_delivery_for_an_already_claimed_attempt_is_dead_lettered_with_the_reason(
    stack: tuple[LiveApi, str],
) -> None:
    live, amqp_url = stack
    # Given a job whose message is queued, then claimed by another worker
    job_id = live.submit(MANIFEST)
    wait_for_depth(amqp_url, "buildworker.jobs.debian/bookworm@amd64", 1)
    InternalApi(live.url, WORKER_TOKEN).claim(job_id, "other-worker", 1)
    # When our daemon receives its message
    vms = BootForbidden()
    api = InternalApi(live.url, WORKER_TOKEN)
    daemon = Daemon(live.config, ImageCatalogue(IMAGES), vms, api)
    daemon.start()
    port = free_port()
    server = daemon.metrics.serve(f"127.0.0.1:{port}")
    try:
        reasons = dead_letters(amqp_url, 1)
        metrics_text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).content
    finally:
        server.shutdown()
        daemon.drain()
        code = daemon.run_until_stopped()
    # Then it is dead-lettered naming the job and why, and nothing was booted
    assert len(reasons) == 1 and f"job {job_id} attempt 1" in reasons[0], reasons
    # And /metrics counts it
    text = metrics_text.decode()
    assert 'buildworker_amqp_deliveries_total{outcome="dead"} 1.0' in text, text
    assert "buildworker_slots 1.0" in text and "buildsrht_build_workers 1.0" in text
    assert vms.calls == 0
    assert code == EXIT_OK
    # And the job is still the other worker's
    assert live.job(job_id)["status"] == "running"


def test_drain_with_nothing_running_exits_at_once(stack: tuple[LiveApi, str]) -> None:
    live, _ = stack
    daemon = Daemon(
        live.config, ImageCatalogue(IMAGES), BootForbidden(), InternalApi(live.url, WORKER_TOKEN)
    )
    daemon.start()
    result: dict[str, int] = {}
    runner = threading.Thread(target=lambda: result.setdefault("code", daemon.run_until_stopped()))
    runner.start()
    started = time.monotonic()
    daemon.drain()
    runner.join(20)
    assert result == {"code": EXIT_OK}
    assert time.monotonic() - started < 15


def test_a_worker_whose_token_the_api_refuses_stops_with_exit_unauthorized(
    stack: tuple[LiveApi, str],
) -> None:
    live, amqp_url = stack
    # Given a daemon registered with the API, whose worker token the API then stops
    # accepting (rotated on the API side while the worker runs)
    vms = BootForbidden()
    daemon = Daemon(live.config, ImageCatalogue(IMAGES), vms, InternalApi(live.url, WORKER_TOKEN))
    daemon.start()
    rotated = dataclasses.replace(live.config.api, worker_token="rotated-" + WORKER_TOKEN)
    live.app.state.config = dataclasses.replace(live.config, api=rotated)
    result: dict[str, int] = {}
    runner = threading.Thread(target=lambda: result.setdefault("code", daemon.run_until_stopped()))
    runner.start()
    # When a job arrives and its claim is refused with 401
    job_id = live.submit(MANIFEST)
    runner.join(30)
    # Then the worker stops by itself and tells systemd why: not a kill (4), a refused
    # token (3), which a restart alone does not fix
    assert not runner.is_alive()
    assert result == {"code": EXIT_UNAUTHORIZED}
    # And nothing was booted, and the job waits in its queue for a worker that may claim it
    assert vms.calls == 0
    assert live.job(job_id)["status"] == "queued"
    wait_for_depth(amqp_url, "buildworker.jobs.debian/bookworm@amd64", 1)


def test_a_delivery_for_an_unknown_job_is_dead_lettered(stack: tuple[LiveApi, str]) -> None:
    live, amqp_url = stack
    # Given a message for a job the API never heard of
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.exchange_declare("buildworker.jobs", exchange_type="direct", durable=True)
    ch.exchange_declare("buildworker.dead", exchange_type="fanout", durable=True)
    queue = "buildworker.jobs.debian/bookworm@amd64"
    ch.queue_declare(queue, durable=True, arguments={"x-dead-letter-exchange": "buildworker.dead"})
    ch.queue_bind(queue, "buildworker.jobs", routing_key="debian/bookworm@amd64")
    body = b'{"job_id": 4242, "attempt": 1, "image": "debian/bookworm", "arch": "amd64"}'
    ch.basic_publish("buildworker.jobs", "debian/bookworm@amd64", body)
    conn.close()
    # When the daemon receives it
    daemon = Daemon(
        live.config, ImageCatalogue(IMAGES), BootForbidden(), InternalApi(live.url, WORKER_TOKEN)
    )
    daemon.start()
    try:
        reasons = dead_letters(amqp_url, 1)
    finally:
        daemon.drain()
        daemon.run_until_stopped()
    # Then it is dead-lettered saying the job is unknown
    assert len(reasons) == 1 and "job 4242 attempt 1" in reasons[0] and "404" in reasons[0]
