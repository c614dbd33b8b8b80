"""With the broker cut off, submits still land in the outbox; once it is back, every job is
published exactly once.

The system RabbitMQ is never stopped: the publisher reaches it through a TCP proxy on
127.0.0.1 that this test owns (tests/tcp_proxy.py), and "the broker is down" means the proxy
drops every connection and refuses new ones.
"""

from __future__ import annotations

import collections
import json
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import replace

import pytest
from api_helpers import MANIFEST, drain, make_account, submit, unpublished, wait_until
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker
from tcp_proxy import TcpProxy

from buildworker.api.app import create_app
from buildworker.api.publisher import OutboxPublisher
from buildworker.config import BrokerConfig, Config
from buildworker.queue import queue_name


@pytest.fixture
def proxy(amqp_url: str) -> Iterator[TcpProxy]:
    parsed = urllib.parse.urlsplit(amqp_url)
    proxy = TcpProxy(parsed.port or 5672, parsed.hostname or "127.0.0.1")
    try:
        yield proxy
    finally:
        proxy.close()


def via(amqp_url: str, proxy: TcpProxy) -> str:
    parsed = urllib.parse.urlsplit(amqp_url)
    netloc = f"{parsed.username}:{parsed.password}@127.0.0.1:{proxy.port}"
    return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))


@pytest.mark.slow
def test_jobs_submitted_while_the_broker_is_cut_are_published_once_when_it_is_back(
    sessions: sessionmaker[Session], amqp_url: str, proxy: TcpProxy
) -> None:
    publisher = OutboxPublisher(sessions, via(amqp_url, proxy), poll_s=0.05, reconnect_max_s=0.5)
    publisher.start()
    try:
        # Given jobs published while the broker is reachable
        before = submit(sessions, 5)
        wait_until(lambda: unpublished(sessions) == 0)
        assert publisher.connections == 1
        # When the broker is cut and jobs keep being submitted, in several bursts
        proxy.cut()
        during: list[int] = []
        for _ in range(4):
            during += submit(sessions, 5)
            time.sleep(0.3)
        # Then the submits succeeded and their rows wait in the outbox
        time.sleep(1.0)
        assert unpublished(sessions) == len(during)
        # When the broker is back
        proxy.restore()
        after = submit(sessions, 5)
        wait_until(lambda: unpublished(sessions) == 0, timeout_s=30)
    finally:
        publisher.stop()
    # Then every job is in the queue exactly once
    messages = drain(amqp_url, queue_name("debian/bookworm", "amd64"))
    counts = collections.Counter(props.message_id for props, _ in messages)
    expected = before + during + after
    assert sorted(counts) == sorted(f"{job_id}.1" for job_id in expected)
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v > 1}
    assert sorted(json.loads(body)["job_id"] for _, body in messages) == sorted(expected)
    # and the publisher reconnected rather than giving up
    assert publisher.connections >= 2


@pytest.mark.slow
def test_submits_over_http_succeed_while_the_broker_is_cut_and_publish_once_after(
    api_config: Config, amqp_url: str, proxy: TcpProxy
) -> None:
    # Given the API with its background publisher reaching RabbitMQ through the proxy
    config = replace(
        api_config,
        broker=BrokerConfig(url=via(amqp_url, proxy), outbox_poll=0.05, reconnect_max=0.5),
    )
    app = create_app(config)
    sessions = app.state.sessionmaker
    with TestClient(app) as client:
        alice = make_account(app, "alice")

        def post() -> int:
            response = client.post(
                "/api/jobs", json={"manifest": MANIFEST}, headers=alice.headers()
            )
            assert response.status_code == 200, response.text
            job_id: int = response.json()["id"]
            return job_id

        before = [post() for _ in range(3)]
        wait_until(lambda: unpublished(sessions) == 0)
        # When the broker is cut while users keep submitting
        proxy.cut()
        during = [post() for _ in range(10)]
        time.sleep(1.0)
        assert unpublished(sessions) == len(during)
        # And it comes back
        proxy.restore()
        wait_until(lambda: unpublished(sessions) == 0, timeout_s=30)
    # Then every job was published exactly once
    messages = drain(amqp_url, queue_name("debian/bookworm", "amd64"))
    counts = collections.Counter(props.message_id for props, _ in messages)
    assert sorted(counts) == sorted(f"{job_id}.1" for job_id in before + during)
    assert set(counts.values()) == {1}
