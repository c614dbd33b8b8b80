"""The queue between the API tier and the workers: names, routing, the message, and the one
declaration of the topology.

The API's outbox publisher and the worker's consumer both declare this topology (whichever
connects first creates it), so both call `declare_topology` and it is defined once: a
declaration that differs in any argument is refused by the broker (406) and would stop the
other side. One durable queue per image and arch (``buildworker.jobs.<image>@<arch>``) bound
to the direct exchange ``buildworker.jobs`` with routing key ``<image>@<arch>``: a job
reaches only the hosts that serve its image. Refused deliveries go to ``buildworker.dead``.
Everything but `declare_topology` is pure.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEAD_EXCHANGE",
    "DEAD_QUEUE",
    "JOBS_EXCHANGE",
    "REASON_HEADER",
    "JobMessage",
    "declare_topology",
    "queue_arguments",
    "queue_name",
    "routing_key",
]

JOBS_EXCHANGE = "buildworker.jobs"
DEAD_EXCHANGE = "buildworker.dead"
DEAD_QUEUE = "buildworker.dead"
#: Header a dead-lettered delivery carries, saying why it was refused.
REASON_HEADER = "x-buildworker-reason"


def routing_key(image: str, arch: str) -> str:
    return f"{image}@{arch}"


def queue_name(image: str, arch: str) -> str:
    return f"buildworker.jobs.{routing_key(image, arch)}"


def queue_arguments() -> dict[str, Any]:
    return {"x-dead-letter-exchange": DEAD_EXCHANGE}


def declare_topology(channel: Any, routes: Iterable[tuple[str, str]] = ()) -> None:
    """Declare, on a pika channel, the dead-letter exchange and queue, the jobs exchange, and
    the queue of each (image, arch) in ``routes`` bound to it.

    Idempotent (the broker accepts a declaration equal to what exists), so a caller may
    declare the exchanges alone at connect and again with a route when it first needs one.
    Broker errors (pika's) propagate.
    """
    channel.exchange_declare(DEAD_EXCHANGE, exchange_type="fanout", durable=True)
    channel.queue_declare(DEAD_QUEUE, durable=True)
    channel.queue_bind(DEAD_QUEUE, DEAD_EXCHANGE)
    channel.exchange_declare(JOBS_EXCHANGE, exchange_type="direct", durable=True)
    for image, arch in routes:
        queue = queue_name(image, arch)
        channel.queue_declare(queue, durable=True, arguments=queue_arguments())
        channel.queue_bind(queue, JOBS_EXCHANGE, routing_key=routing_key(image, arch))


@dataclass(frozen=True)
class JobMessage:
    """What goes on the queue: ids only, never the manifest or its secrets."""

    job_id: int
    attempt: int
    image: str
    arch: str

    @property
    def message_id(self) -> str:
        return f"{self.job_id}.{self.attempt}"

    def body(self) -> bytes:
        return json.dumps(
            {"job_id": self.job_id, "attempt": self.attempt, "image": self.image, "arch": self.arch}
        ).encode()

    @classmethod
    def decode(cls, body: bytes) -> JobMessage:
        """Raises ValueError naming the field that is missing or wrong."""
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ValueError("body: not JSON") from None
        if not isinstance(data, dict):
            raise ValueError("body: expected a JSON object")
        for key, kind in (("job_id", int), ("attempt", int), ("image", str), ("arch", str)):
            value = data.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"{key}: expected {kind.__name__}, got {value!r}")
        return cls(data["job_id"], data["attempt"], data["image"], data["arch"])
