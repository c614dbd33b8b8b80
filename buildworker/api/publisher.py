"""The outbox publisher: sends committed outbox rows to RabbitMQ, then stamps them published.

One thread owns one pika `BlockingConnection` (pika is not thread-safe). The loop:

1. connect, put the channel in confirm mode, declare the exchanges and the dead-letter queue
   (`buildworker.queue.declare_topology`, which the worker's consumer calls too);
2. take a batch of unpublished rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several API
   processes never take the same row), declare each job's exchange/queue/binding (once per
   connection), publish it persistent and ``mandatory`` and wait for the broker's confirm;
3. stamp ``published_at`` on the confirmed rows only, and commit;
4. when idle, let pika serve heartbeats for ``poll`` seconds, then look again.

A broker that is down or goes away mid-batch is retried with capped exponential backoff; rows
not confirmed stay unpublished and go out after the reconnect. Delivery is at least once: if
the connection drops after the broker took a message but before its confirm arrived, the row
is sent again, and the worker's claim (one per attempt) makes the copy harmless.

Rows whose job has moved on (cancelled, or a newer attempt exists) are stamped without being
sent: a worker would only be refused at claim.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pika
import pika.exceptions
import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from buildworker.backoff import BROKER_RECONNECT_START_S, compute_backoff
from buildworker.db.models import Job, Outbox, utcnow
from buildworker.jobstate import JobStatus
from buildworker.queue import JOBS_EXCHANGE, JobMessage, declare_topology, routing_key
from buildworker.service import ServiceThread

__all__ = ["OutboxPublisher"]

#: Rows taken per transaction; bounds the work redone after a crash mid-batch.
BATCH_SIZE = 100

_log = structlog.get_logger(__name__)


class OutboxPublisher(ServiceThread):
    """Drains the outbox to RabbitMQ in its own thread (`start`/`stop`), or step by step
    from a test (`publish_pending` on an open connection).

    Parameters:
        sessionmaker: sessions on the API's database.
        url: the broker's AMQP URL.
        poll_s: how long to wait for new rows when the outbox is empty.
        reconnect_max_s: the longest wait between reconnect attempts.
        heartbeat_s: the AMQP heartbeat negotiated with the broker.
    """

    def __init__(
        self,
        sessionmaker: sessionmaker[Session],
        url: str,
        *,
        poll_s: float = 0.25,
        reconnect_max_s: float = 30.0,
        heartbeat_s: float = 30.0,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._url = url
        self._poll_s = poll_s
        self._reconnect_max_s = reconnect_max_s
        self._heartbeat_s = heartbeat_s
        super().__init__()
        self._declared: set[str] = set()
        #: messages confirmed by the broker since start (for tests and logs)
        self.published = 0
        #: connections opened since start
        self.connections = 0

    thread_name = "outbox-publisher"

    def run(self) -> None:
        """Connect, drain, wait; reconnect with backoff on any broker error, until stopped."""
        failures = 0
        while not self._stop.is_set():
            connection = None
            try:
                connection = self._connect()
                failures = 0
                channel = connection.channel()
                channel.confirm_delivery()
                declare_topology(channel)
                while not self._stop.is_set():
                    if self.publish_pending(channel) == 0:
                        # Serves heartbeats and notices a closed connection while idle.
                        connection.process_data_events(time_limit=self._poll_s)
            except (pika.exceptions.AMQPError, OSError) as exc:
                failures += 1
                delay = compute_backoff(
                    failures - 1, base_s=BROKER_RECONNECT_START_S, max_s=self._reconnect_max_s
                )
                _log.warning(
                    "publisher.broker_unavailable",
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_s=round(delay, 2),
                )
                self._stop.wait(delay)
            except Exception:
                # A database error (server restart, lock timeout): log and retry, never die,
                # or nothing would be published until the API restarts.
                failures += 1
                _log.exception("publisher.error")
                delay = compute_backoff(
                    failures - 1, base_s=BROKER_RECONNECT_START_S, max_s=self._reconnect_max_s
                )
                self._stop.wait(delay)
            finally:
                self._declared.clear()
                if connection is not None and connection.is_open:
                    with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                        connection.close()

    def _connect(self) -> Any:
        params = pika.URLParameters(self._url)
        params.heartbeat = int(self._heartbeat_s)
        params.blocked_connection_timeout = 30
        params.socket_timeout = 5
        params.stack_timeout = 10
        params.connection_attempts = 1
        params.client_properties = {"connection_name": "buildworker outbox publisher"}
        connection = pika.BlockingConnection(params)
        self.connections += 1
        _log.info("publisher.connected", connections=self.connections)
        return connection

    # --- publishing -----------------------------------------------------------------------

    def _declare_route(self, channel: Any, image: str, arch: str) -> None:
        # Once per route and connection: a job's queue must exist before its message is
        # published (or ``mandatory`` would return it), whether or not a worker serving
        # it has connected yet.
        key = routing_key(image, arch)
        if key in self._declared:
            return
        declare_topology(channel, [(image, arch)])
        self._declared.add(key)

    def publish_pending(self, channel: Any) -> int:
        """Publish one batch of unpublished rows on a confirm-mode channel; return how many
        rows were handled (sent or skipped). Broker errors propagate after the rows confirmed
        so far are stamped."""
        with self._sessionmaker() as session:
            rows = session.execute(
                select(Outbox, Job)
                .join(Job, Job.id == Outbox.job_id)
                .where(Outbox.published_at.is_(None))
                .order_by(Outbox.id)
                .limit(BATCH_SIZE)
                .with_for_update(skip_locked=True, of=Outbox)
            ).all()
            if not rows:
                session.rollback()
                return 0
            done: list[Outbox] = []
            try:
                for row, job in rows:
                    if job.attempt != row.attempt or job.status != JobStatus.QUEUED:
                        _log.info(
                            "publisher.skipped",
                            job_id=job.id,
                            attempt=row.attempt,
                            status=job.status,
                            current_attempt=job.attempt,
                        )
                        done.append(row)
                        continue
                    # Routed by the release an alias resolved to at submit: workers
                    # consume their releases' queues (aliases' too, for older jobs).
                    image = job.queue_image
                    message = JobMessage(job.id, row.attempt, image, job.arch)
                    self._declare_route(channel, image, job.arch)
                    channel.basic_publish(
                        exchange=JOBS_EXCHANGE,
                        routing_key=routing_key(image, job.arch),
                        body=message.body(),
                        properties=pika.BasicProperties(
                            content_type="application/json",
                            delivery_mode=pika.DeliveryMode.Persistent,
                            message_id=message.message_id,
                        ),
                        mandatory=True,
                    )
                    # basic_publish returned: the broker confirmed it (confirm mode).
                    self.published += 1
                    done.append(row)
                    _log.info("publisher.published", job_id=job.id, attempt=row.attempt)
            finally:
                now = utcnow()
                for row in done:
                    row.published_at = now
                session.commit()
            return len(rows)
