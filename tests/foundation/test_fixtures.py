"""The shared fixtures really reach fresh, isolated services."""

from __future__ import annotations

import pika
import psycopg
import pytest


def test_pg_url_is_a_fresh_empty_database(pg_url: str) -> None:
    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        tables = conn.execute(
            "select count(*) from information_schema.tables where table_schema = 'public'"
        ).fetchone()
    assert tables == (0,)


def test_amqp_url_is_an_isolated_vhost(amqp_url: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = conn.channel()
        # A queue that cannot exist yet: passive declare fails in a fresh vhost.
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            channel.queue_declare("buildworker.jobs.debian/bookworm@amd64", passive=True)
    finally:
        conn.close()
