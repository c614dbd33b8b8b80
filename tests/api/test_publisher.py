"""The outbox publisher against the real RabbitMQ (a fresh vhost) and both databases."""

from __future__ import annotations

import json
import time

import pika
import pika.exceptions
import pytest
from api_helpers import drain, submit, unpublished, wait_until
from sqlalchemy.orm import Session, sessionmaker

from buildworker.api.publisher import OutboxPublisher
from buildworker.db.engine import make_engine, make_sessionmaker
from buildworker.db.migrate import upgrade
from buildworker.db.models import Job
from buildworker.queue import DEAD_EXCHANGE, JOBS_EXCHANGE, JobMessage, queue_name


def test_message_body_round_trips_and_carries_ids_only() -> None:
    message = JobMessage(7, 2, "debian/bookworm", "amd64")
    assert json.loads(message.body()) == {
        "job_id": 7,
        "attempt": 2,
        "image": "debian/bookworm",
        "arch": "amd64",
    }
    assert JobMessage.decode(message.body()) == message
    assert message.message_id == "7.2"


def test_every_queued_job_is_published_once_as_the_contract_says(
    sessions: sessionmaker[Session], amqp_url: str
) -> None:
    # Given three queued jobs for two image/arch pairs
    amd = submit(sessions, 2)
    arm = submit(sessions, 1, arch="arm64")
    publisher = OutboxPublisher(sessions, amqp_url, poll_s=0.05)
    # When the publisher runs until the outbox is empty
    publisher.start()
    try:
        wait_until(lambda: unpublished(sessions) == 0)
    finally:
        publisher.stop()
    # Then each job is in its image@arch queue once, persistent, JSON, with its message id
    got = drain(amqp_url, queue_name("debian/bookworm", "amd64"))
    assert [json.loads(body)["job_id"] for _, body in got] == amd
    props, body = got[0]
    assert props.delivery_mode == 2
    assert props.content_type == "application/json"
    assert props.message_id == f"{amd[0]}.1"
    assert json.loads(body) == {
        "job_id": amd[0],
        "attempt": 1,
        "image": "debian/bookworm",
        "arch": "amd64",
    }
    got_arm = drain(amqp_url, queue_name("debian/bookworm", "arm64"))
    assert [json.loads(body)["job_id"] for _, body in got_arm] == arm
    assert publisher.published == 3


def test_queues_are_declared_durable_with_the_dead_letter_exchange(
    sessions: sessionmaker[Session], amqp_url: str
) -> None:
    submit(sessions, 1)
    publisher = OutboxPublisher(sessions, amqp_url, poll_s=0.05)
    publisher.start()
    try:
        wait_until(lambda: unpublished(sessions) == 0)
    finally:
        publisher.stop()
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        # Declaring with the contract's arguments succeeds: they match what exists...
        channel.exchange_declare(JOBS_EXCHANGE, exchange_type="direct", durable=True)
        channel.exchange_declare(DEAD_EXCHANGE, exchange_type="fanout", durable=True)
        channel.queue_declare(
            queue_name("debian/bookworm", "amd64"),
            durable=True,
            arguments={"x-dead-letter-exchange": DEAD_EXCHANGE},
        )
        channel.queue_declare("buildworker.dead", durable=True)
        # ...and with other arguments the broker refuses (406), so the check can fail.
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            channel.queue_declare(queue_name("debian/bookworm", "amd64"), durable=True)
        assert info.value.reply_code == 406
    finally:
        connection.close()


def test_rows_of_cancelled_or_superseded_jobs_are_stamped_without_being_sent(
    sessions: sessionmaker[Session], amqp_url: str
) -> None:
    # Given a cancelled job and a job whose outbox row is for an older attempt
    cancelled, superseded, live = submit(sessions, 3)
    with sessions() as session:
        session.get_one(Job, cancelled).status = "cancelled"
        session.get_one(Job, superseded).attempt = 2
        session.commit()
    publisher = OutboxPublisher(sessions, amqp_url, poll_s=0.05)
    publisher.start()
    try:
        wait_until(lambda: unpublished(sessions) == 0)
    finally:
        publisher.stop()
    got = drain(amqp_url, queue_name("debian/bookworm", "amd64"))
    assert [json.loads(body)["job_id"] for _, body in got] == [live]


def test_a_publisher_with_no_broker_keeps_retrying_and_publishes_nothing(
    sessions: sessionmaker[Session],
) -> None:
    # Given a broker URL where nothing listens (a closed loopback port)
    submit(sessions, 1)
    publisher = OutboxPublisher(
        sessions, "amqp://guest:guest@127.0.0.1:1/%2F", poll_s=0.05, reconnect_max_s=0.2
    )
    publisher.start()
    time.sleep(1.0)
    publisher.stop()
    # Then the row is still waiting and the thread ended when asked
    assert unpublished(sessions) == 1
    assert publisher.published == 0
    assert publisher._thread is not None and not publisher._thread.is_alive()


def test_two_publishers_on_postgresql_never_send_a_row_twice(pg_url: str, amqp_url: str) -> None:
    # Given one PostgreSQL database shared by two API processes' publishers
    upgrade(pg_url)
    engine = make_engine(pg_url)
    sessions = make_sessionmaker(engine)
    publishers = [OutboxPublisher(sessions, amqp_url, poll_s=0.01) for _ in range(2)]
    try:
        for publisher in publishers:
            publisher.start()
        # When jobs keep arriving while both drain the outbox
        ids: list[int] = []
        for _ in range(10):
            ids += submit(sessions, 20)
        wait_until(lambda: unpublished(sessions) == 0)
    finally:
        for publisher in publishers:
            publisher.stop()
        engine.dispose()
    # Then each job was sent once, by one of them
    got = drain(amqp_url, queue_name("debian/bookworm", "amd64"))
    assert sorted(props.message_id for props, _ in got) == sorted(f"{i}.1" for i in ids)
    assert sum(p.published for p in publishers) == len(ids)
