"""The one thread that owns the pika connection (dramatiq's ConsumerThread, STYLE.md §1.2).

It declares the durable queue of every image@arch this host serves, consumes only while a
build slot is free (prefetch = free slots; with no free slot it cancels its consumers, since
a prefetch of 0 would mean "unlimited"), hands each delivery to the daemon through a
callback, and performs acks, dead-letters and requeues that other threads ask for with
``add_callback_threadsafe``. ``process_data_events`` runs continuously, so broker heartbeats
keep flowing through hour-long builds. On broker loss it reconnects with backoff; a tag from
a dead connection is never acked (its message is redelivered and its claim refused).

Dead-lettering: a ``nack(requeue=False)`` cannot carry a reason (``x-death`` only says
"rejected"), so a refused delivery is republished to ``buildworker.dead`` with the reason in
the ``x-buildworker-reason`` header and then acked.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
import structlog

from buildworker.backoff import BROKER_RECONNECT_START_S, compute_backoff
from buildworker.queue import (
    DEAD_EXCHANGE,
    DEAD_QUEUE,
    REASON_HEADER,
    JobMessage,
    declare_topology,
    queue_name,
)

__all__ = ["Consumer", "Delivery"]

#: How long one ``process_data_events`` call may block, in seconds (bounds stop latency).
POLL_S = 0.2


@dataclass(frozen=True)
class Delivery:
    """One delivery of a message: ``generation`` names the connection it came on."""

    message: JobMessage | None
    error: str | None
    tag: int
    generation: int
    redelivered: bool
    body: bytes
    properties: Any


class Consumer:
    """Consumes job messages for ``routes`` and hands them to ``on_delivery``.

    Parameters:
        url: the AMQP URL.
        routes: (image, arch) pairs this host serves.
        on_delivery: called on the consumer thread for each delivery; must not block.
        capacity: free build slots at start.
        heartbeat_s: AMQP heartbeat, in seconds.
        reconnect_max_s: longest wait between reconnect attempts, in seconds.
    """

    def __init__(
        self,
        url: str,
        routes: Sequence[tuple[str, str]],
        on_delivery: Callable[[Delivery], None],
        *,
        capacity: int = 1,
        heartbeat_s: float = 30.0,
        reconnect_max_s: float = 30.0,
    ) -> None:
        self._url = url
        self._routes = list(dict.fromkeys(routes))
        self._on_delivery = on_delivery
        self._capacity = capacity
        self._heartbeat_s = heartbeat_s
        self._reconnect_max_s = reconnect_max_s
        self._stop = threading.Event()
        self._paused = False
        self._connection: Any = None
        self._channel: Any = None
        self._generation = 0
        self._consumer_tags: list[str] = []
        self._consuming_prefetch = 0
        self._lock = threading.Lock()
        self._unsettled: dict[int, Delivery] = {}  # tag → delivery, current generation
        self.connected = threading.Event()
        self.reconnects = 0
        self._thread = threading.Thread(target=self._run, name="amqp-consumer", daemon=True)
        self._log = structlog.get_logger().bind(component="consumer")

    # -- called from other threads ---------------------------------------------------------

    def start(self) -> Consumer:
        self._thread.start()
        return self

    def set_capacity(self, free_slots: int) -> None:
        """Free build slots changed: consume with that prefetch, or stop consuming at 0."""
        with self._lock:
            self._capacity = max(0, free_slots)
        self._threadsafe(self._apply_capacity)

    def pause(self) -> None:
        """Stop taking new deliveries (drain). Deliveries already handed out are unaffected."""
        with self._lock:
            self._paused = True
        self._threadsafe(self._apply_capacity)

    def ack(self, delivery: Delivery) -> None:
        self._threadsafe(lambda: self._settle(delivery, "ack"))

    def requeue(self, delivery: Delivery) -> None:
        self._threadsafe(lambda: self._settle(delivery, "requeue"))

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._threadsafe(lambda: self._settle(delivery, "dead", reason))

    def stop(self, timeout_s: float = 10.0) -> None:
        """Requeue what was delivered but not settled, close, join the thread."""
        self._stop.set()
        self._thread.join(timeout_s)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _threadsafe(self, fn: Callable[[], None]) -> None:
        connection = self._connection
        if connection is None:
            return  # nothing to settle on: the message comes back on the next connection
        try:
            connection.add_callback_threadsafe(fn)
        except (pika.exceptions.AMQPError, AttributeError, OSError) as exc:
            self._log.warning("amqp_callback_dropped", error=str(exc))

    # -- the consumer thread ---------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._connect()
                failures = 0
                while not self._stop.is_set():
                    self._connection.process_data_events(time_limit=POLL_S)
                self._shutdown()
                return
            except (pika.exceptions.AMQPError, OSError) as exc:
                self.connected.clear()
                self._drop_connection()
                delay = compute_backoff(
                    failures, base_s=BROKER_RECONNECT_START_S, max_s=self._reconnect_max_s
                )
                failures += 1
                self.reconnects += 1
                self._log.warning("amqp_connection_lost", error=repr(exc), retry_in_s=delay)
                self._stop.wait(delay)

    def _connect(self) -> None:
        params = pika.URLParameters(self._url)
        params.heartbeat = max(1, int(self._heartbeat_s))
        params.blocked_connection_timeout = 60
        params.socket_timeout = 10
        connection = pika.BlockingConnection(params)
        channel = connection.channel()
        declare_topology(channel, self._routes)
        with self._lock:
            self._generation += 1
            self._unsettled.clear()
        self._connection, self._channel = connection, channel
        self._consumer_tags = []
        self._consuming_prefetch = 0
        self._apply_capacity()
        self.connected.set()
        self._log.info("amqp_connected", queues=[queue_name(i, a) for i, a in self._routes])

    def _apply_capacity(self) -> None:
        if self._channel is None or not self._channel.is_open:
            return
        with self._lock:
            want = 0 if self._paused else self._capacity
        if want == self._consuming_prefetch:
            return
        for tag in self._consumer_tags:
            self._channel.basic_cancel(tag)
        self._consumer_tags = []
        self._consuming_prefetch = 0
        if want > 0:
            # Per-consumer prefetch applies to consumers created after it is set.
            self._channel.basic_qos(prefetch_count=want)
            for image, arch in self._routes:
                tag = self._channel.basic_consume(queue_name(image, arch), self._deliver)
                self._consumer_tags.append(tag)
            self._consuming_prefetch = want

    def _deliver(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        try:
            message: JobMessage | None = JobMessage.decode(body)
            error = None
        except ValueError as exc:
            message, error = None, str(exc)
        delivery = Delivery(
            message=message,
            error=error,
            tag=method.delivery_tag,
            generation=self._generation,
            redelivered=bool(method.redelivered),
            body=body,
            properties=properties,
        )
        with self._lock:
            self._unsettled[delivery.tag] = delivery
            self._capacity = max(0, self._capacity - 1)
        self._apply_capacity()
        if message is None:
            self._settle(delivery, "dead", f"malformed message: {error}")
            with self._lock:
                self._capacity += 1
            self._apply_capacity()
            return
        self._on_delivery(delivery)

    def _settle(self, delivery: Delivery, how: str, reason: str | None = None) -> None:
        with self._lock:
            known = (
                delivery.generation == self._generation
                and self._unsettled.pop(delivery.tag, None) is not None
            )
        if not known or self._channel is None or not self._channel.is_open:
            # A tag of a dead connection: the broker already requeued the message.
            self._log.info("amqp_stale_tag", tag=delivery.tag, how=how)
            return
        if how == "ack":
            self._channel.basic_ack(delivery.tag)
        elif how == "requeue":
            self._channel.basic_nack(delivery.tag, requeue=True)
        else:
            headers = dict(getattr(delivery.properties, "headers", None) or {})
            headers[REASON_HEADER] = reason or "refused"
            self._channel.basic_publish(
                DEAD_EXCHANGE,
                routing_key=DEAD_QUEUE,
                body=delivery.body,
                properties=pika.BasicProperties(
                    content_type="application/json",
                    delivery_mode=2,
                    headers=headers,
                    message_id=getattr(delivery.properties, "message_id", None),
                ),
            )
            self._channel.basic_ack(delivery.tag)
            self._log.warning("amqp_dead_lettered", tag=delivery.tag, reason=reason)

    def _shutdown(self) -> None:
        """Orderly stop: cancel consumers, requeue unsettled deliveries, close."""
        try:
            for tag in self._consumer_tags:
                self._channel.basic_cancel(tag)
            with self._lock:
                pending = list(self._unsettled.values())
            for delivery in pending:
                self._settle(delivery, "requeue")
            self._connection.close()
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._log.warning("amqp_close_failed", error=str(exc))
        self._drop_connection()

    def _drop_connection(self) -> None:
        connection = self._connection
        self._connection = self._channel = None
        self.connected.clear()
        if connection is not None and connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close()
