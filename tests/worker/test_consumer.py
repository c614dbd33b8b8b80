"""The AMQP consumer against the real RabbitMQ (a fresh vhost per test)."""

from __future__ import annotations

import json
import queue
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest

from buildworker.api import publisher
from buildworker.queue import (
    DEAD_QUEUE,
    JOBS_EXCHANGE,
    REASON_HEADER,
    JobMessage,
    declare_topology,
    queue_name,
)
from buildworker.worker import consumer as consumer_mod
from buildworker.worker.consumer import Consumer, Delivery

ROUTE = ("debian/bookworm", "amd64")


def publish(url: str, body: dict[str, object] | bytes) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    declare_topology(ch, [ROUTE])
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    ch.basic_publish(
        JOBS_EXCHANGE,
        "debian/bookworm@amd64",
        data,
        pika.BasicProperties(delivery_mode=2, content_type="application/json"),
    )
    conn.close()


def queue_depth(url: str, name: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    depth = conn.channel().queue_declare(name, passive=True).method.message_count
    conn.close()
    return int(depth)


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def got() -> queue.Queue[Delivery]:
    return queue.Queue()


@pytest.fixture
def started(amqp_url: str, got: queue.Queue[Delivery]) -> Iterator[Consumer]:
    c = Consumer(amqp_url, [ROUTE], got.put, capacity=1, heartbeat_s=5).start()
    assert c.connected.wait(10)
    yield c
    c.stop()


class RecordingChannel:
    """Records the declarations made on it, as (method, args, kwargs)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[object, ...], dict[str, object]]] = []

    def __getattr__(self, method: str) -> Callable[..., None]:
        return lambda *args, **kwargs: self.calls.append((method, args, kwargs))


def test_topology_is_declared_in_one_place_for_the_api_publisher_and_the_consumer() -> None:
    # Both sides declare through the same function: a difference between them would make
    # the broker refuse the second declaration (406).
    assert vars(consumer_mod)["declare_topology"] is declare_topology
    assert vars(publisher)["declare_topology"] is declare_topology
    channel = RecordingChannel()
    declare_topology(channel, [ROUTE])
    queue = "buildworker.jobs.debian/bookworm@amd64"
    assert channel.calls == [
        ("exchange_declare", ("buildworker.dead",), {"exchange_type": "fanout", "durable": True}),
        ("queue_declare", ("buildworker.dead",), {"durable": True}),
        ("queue_bind", ("buildworker.dead", "buildworker.dead"), {}),
        ("exchange_declare", ("buildworker.jobs",), {"exchange_type": "direct", "durable": True}),
        (
            "queue_declare",
            (queue,),
            {"durable": True, "arguments": {"x-dead-letter-exchange": "buildworker.dead"}},
        ),
        ("queue_bind", (queue, "buildworker.jobs"), {"routing_key": "debian/bookworm@amd64"}),
    ]


def test_message_decoding_names_the_bad_field() -> None:
    assert JobMessage.decode(b'{"job_id": 1, "attempt": 2, "image": "x", "arch": "y"}') == (
        JobMessage(1, 2, "x", "y")
    )
    with pytest.raises(ValueError, match="attempt"):
        JobMessage.decode(b'{"job_id": 1, "attempt": "2", "image": "x", "arch": "y"}')
    with pytest.raises(ValueError, match="body"):
        JobMessage.decode(b"nope")


def test_a_delivery_is_acked_only_when_asked(
    amqp_url: str, started: Consumer, got: queue.Queue[Delivery]
) -> None:
    # Given a job message on the image's queue
    publish(amqp_url, {"job_id": 7, "attempt": 1, "image": "debian/bookworm", "arch": "amd64"})
    delivery = got.get(timeout=10)
    assert delivery.message == JobMessage(7, 1, "debian/bookworm", "amd64")
    # While unacked, the message is not gone: stopping would requeue it
    started.ack(delivery)
    wait_for(lambda: queue_depth(amqp_url, queue_name(*ROUTE)) == 0)


def test_no_delivery_while_no_slot_is_free(
    amqp_url: str, started: Consumer, got: queue.Queue[Delivery]
) -> None:
    # Given one slot, taken by a first delivery
    body = {"job_id": 1, "attempt": 1, "image": "debian/bookworm", "arch": "amd64"}
    publish(amqp_url, body)
    publish(amqp_url, {**body, "job_id": 2})
    first = got.get(timeout=10)
    started.ack(first)  # acked at claim: the slot is still busy running the build
    # Then the second message stays in the queue
    time.sleep(1.0)
    assert got.empty()
    assert queue_depth(amqp_url, queue_name(*ROUTE)) == 1
    # When the slot frees, it arrives
    started.set_capacity(1)
    second = got.get(timeout=10)
    assert second.message is not None and second.message.job_id == 2


def test_refused_and_malformed_deliveries_are_dead_lettered_with_the_reason(
    amqp_url: str, started: Consumer, got: queue.Queue[Delivery]
) -> None:
    publish(amqp_url, b"not json")
    publish(amqp_url, {"job_id": 3, "attempt": 1, "image": "debian/bookworm", "arch": "amd64"})
    delivery = got.get(timeout=10)
    started.dead_letter(delivery, "job 3 attempt 1 already claimed")
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    reasons: list[str] = []
    deadline = time.monotonic() + 10
    while len(reasons) < 2 and time.monotonic() < deadline:
        method, props, _ = ch.basic_get(DEAD_QUEUE, auto_ack=True)
        if method is None:
            time.sleep(0.1)
            continue
        reasons.append(props.headers[REASON_HEADER])
    conn.close()
    assert sorted(reasons) == [
        "job 3 attempt 1 already claimed",
        "malformed message: body: not JSON",
    ]
    wait_for(lambda: queue_depth(amqp_url, queue_name(*ROUTE)) == 0)


def test_unsettled_deliveries_are_requeued_on_stop(
    amqp_url: str, got: queue.Queue[Delivery]
) -> None:
    c = Consumer(amqp_url, [ROUTE], got.put, capacity=1).start()
    publish(amqp_url, {"job_id": 4, "attempt": 1, "image": "debian/bookworm", "arch": "amd64"})
    got.get(timeout=10)
    c.stop()
    assert not c.is_alive()
    wait_for(lambda: queue_depth(amqp_url, queue_name(*ROUTE)) == 1)


def test_the_consumer_reconnects_after_broker_loss(
    amqp_url: str, got: queue.Queue[Delivery], make_proxy: Any
) -> None:
    # Given a consumer connected through a proxy we control
    parsed = urllib.parse.urlsplit(amqp_url)
    proxy = make_proxy(parsed.port or 5672)
    via_proxy = amqp_url.replace(f":{parsed.port}", f":{proxy.port}")
    c = Consumer(via_proxy, [ROUTE], got.put, capacity=1, reconnect_max_s=1).start()
    try:
        assert c.connected.wait(10)
        # When the broker goes away for a while and comes back
        proxy.cut()
        wait_for(lambda: not c.connected.is_set())
        time.sleep(1.5)
        proxy.restore()
        assert c.connected.wait(15)
        # Then deliveries flow again
        publish(amqp_url, {"job_id": 5, "attempt": 1, "image": "debian/bookworm", "arch": "amd64"})
        delivery = got.get(timeout=10)
        assert delivery.message is not None and delivery.message.job_id == 5
        assert c.reconnects >= 1
    finally:
        c.stop()


def test_broker_heartbeats_keep_an_idle_connection_alive(
    amqp_url: str, got: queue.Queue[Delivery]
) -> None:
    # Given a 1 s heartbeat and a consumer that has nothing to do (a build running elsewhere)
    c = Consumer(amqp_url, [ROUTE], got.put, capacity=0, heartbeat_s=1).start()
    try:
        assert c.connected.wait(10)
        # When many heartbeat intervals pass
        time.sleep(6)
        # Then the connection was never lost
        assert c.connected.is_set() and c.reconnects == 0
    finally:
        c.stop()
