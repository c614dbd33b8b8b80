"""Republish queued jobs whose message the broker lost (its data wiped, a node replaced, a queue
purged by hand), without piling up copies while workers are merely busy.

A queued job whose current attempt has been published has its message in its queue: ready,
or for a moment unacked at a worker that is claiming it (a claim turns the job ``running``
before the ack). So per queue, the number of *ready* messages (a passive ``queue.declare``
answers it) can only be lower than the number of such jobs for the length of a claim, unless
messages were lost. Every half ``[broker] republish-interval`` the monitor compares the two:

- depth >= queued jobs: nothing is missing (busy workers leave every message ready, so this is
  what a long wait looks like: nothing is republished, the queue keeps one message per job);
- depth < queued jobs: the deficit is the *oldest*-published jobs of that queue (queues are
  FIFO and consumed from the head, so what survives a loss is what was published after it).
  They are suspects; a suspect still missing at the next check — its outbox row still stamped
  with the same ``published_at`` — is republished: the row's ``published_at`` is cleared and
  the outbox publisher sends the **same attempt** again. A claim in flight at the first check
  has made its job ``running`` by the second, so claims are never mistaken for losses.

The reset is conditional on the ``published_at`` seen and on the job still being queued at
that attempt, so two API processes never reset a row twice for one loss, and a copy that does
slip through (a miscount) is harmless: the claim of an attempt succeeds once.

Known blind spot: messages of jobs that are no longer queued (cancelled while queued) still
count as depth until a worker takes and refuses them, so they can hide as many losses in the
same queue for as long as no worker is free; the losses are republished once they are taken.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pika
import pika.exceptions
import structlog
from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from buildworker.backoff import BROKER_RECONNECT_START_S, compute_backoff
from buildworker.db.models import Job, Outbox
from buildworker.jobstate import JobStatus
from buildworker.queue import queue_name
from buildworker.service import ServiceThread

__all__ = ["Published", "RepublishMonitor", "plan_republish"]

_log = structlog.get_logger(__name__)


@dataclass(frozen=True, order=True)
class Published:
    """A queued job's published outbox row, as one check saw it."""

    published_at: datetime
    outbox_id: int
    job_id: int
    attempt: int


Route = tuple[str, str]


def plan_republish(
    queued: dict[Route, list[Published]],
    depths: dict[Route, int],
    suspects: set[Published],
) -> tuple[set[Published], set[Published]]:
    """(rows to republish now, suspects for the next check) from one check's observations.

    ``queued``: per (image, arch), the queued jobs whose current attempt was published;
    ``depths``: the ready messages of each of those queues; ``suspects``: the previous
    check's suspects. Pure: no broker, no database.
    """
    missing: set[Published] = set()
    for route, rows in queued.items():
        deficit = len(rows) - depths.get(route, 0)
        if deficit > 0:
            missing.update(sorted(rows)[:deficit])
    return missing & suspects, missing


class RepublishMonitor(ServiceThread):
    """Checks queue depths against queued jobs every ``interval_s / 2`` (`start`/`stop`), or
    once from a test (`check`).

    Parameters:
        sessionmaker: sessions on the API's database.
        url: the broker's AMQP URL.
        interval_s: ``[broker] republish-interval``: how long a lost message goes unnoticed
            at most (two checks half of it apart).
        reconnect_max_s: the longest wait after a failed check.
    """

    thread_name = "republish-monitor"

    def __init__(
        self,
        sessionmaker: sessionmaker[Session],
        url: str,
        *,
        interval_s: float = 60.0,
        reconnect_max_s: float = 30.0,
    ) -> None:
        super().__init__()
        self._sessionmaker = sessionmaker
        self._url = url
        self._interval_s = interval_s
        self._reconnect_max_s = reconnect_max_s
        self._suspects: set[Published] = set()
        #: rows reset for republishing since start (for tests and logs)
        self.republished = 0

    def run(self) -> None:
        failures = 0
        while not self._stop.wait(self._interval_s / 2 if failures == 0 else 0):
            try:
                self.check()
                failures = 0
            except (pika.exceptions.AMQPError, OSError) as exc:
                failures += 1
                delay = compute_backoff(
                    failures - 1, base_s=BROKER_RECONNECT_START_S, max_s=self._reconnect_max_s
                )
                _log.warning("republish.broker_unavailable", error=str(exc), retry_in_s=delay)
                self._stop.wait(delay)
            except Exception:  # a database error: log and keep watching
                failures += 1
                _log.exception("republish.error")
                delay = compute_backoff(
                    failures - 1, base_s=BROKER_RECONNECT_START_S, max_s=self._reconnect_max_s
                )
                self._stop.wait(delay)

    def check(self) -> int:
        """One comparison; returns how many rows it reset for republishing."""
        queued = self._queued_published()
        depths = self._depths(queued) if queued else {}
        now, self._suspects = plan_republish(queued, depths, self._suspects)
        reset = self._reset(now)
        for route, rows in queued.items():
            if depths.get(route, 0) < len(rows):
                _log.info(
                    "republish.deficit",
                    queue=queue_name(*route),
                    ready=depths.get(route, 0),
                    queued=len(rows),
                )
        return reset

    def _queued_published(self) -> dict[Route, list[Published]]:
        with self._sessionmaker() as session:
            rows = session.execute(
                select(
                    Job.id,
                    Job.attempt,
                    # the queue the publisher sent it to (Job.queue_image, in SQL)
                    func.coalesce(Job.image_release, Job.image),
                    Job.arch,
                    Outbox.id,
                    Outbox.published_at,
                )
                .join(Outbox, and_(Outbox.job_id == Job.id, Outbox.attempt == Job.attempt))
                .where(Job.status == JobStatus.QUEUED, Outbox.published_at.is_not(None))
            ).all()
        queued: dict[Route, list[Published]] = {}
        for job_id, attempt, image, arch, outbox_id, published_at in rows:
            assert published_at is not None  # the query asked for published rows
            queued.setdefault((image, arch), []).append(
                Published(published_at, outbox_id, job_id, attempt)
            )
        return queued

    def _depths(self, routes: Iterable[Route]) -> dict[Route, int]:
        params = pika.URLParameters(self._url)
        params.socket_timeout = 5
        params.stack_timeout = 10
        params.connection_attempts = 1
        params.client_properties = {"connection_name": "buildworker republish monitor"}
        connection = pika.BlockingConnection(params)
        try:
            depths: dict[Route, int] = {}
            channel: Any = connection.channel()
            for route in routes:
                try:
                    declared = channel.queue_declare(queue_name(*route), passive=True)
                    depths[route] = int(declared.method.message_count)
                except pika.exceptions.ChannelClosedByBroker as exc:
                    if exc.reply_code != 404:
                        raise
                    depths[route] = 0  # the queue itself is gone (a wiped broker)
                    channel = connection.channel()
            return depths
        finally:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close()

    def _reset(self, rows: set[Published]) -> int:
        if not rows:
            return 0
        reset = 0
        with self._sessionmaker() as session:
            for row in sorted(rows):
                still_queued = exists().where(
                    Job.id == Outbox.job_id,
                    Job.attempt == Outbox.attempt,
                    Job.status == JobStatus.QUEUED,
                )
                result = session.execute(
                    update(Outbox)
                    .where(
                        Outbox.id == row.outbox_id,
                        Outbox.published_at == row.published_at,
                        still_queued,
                    )
                    .values(published_at=None)
                )
                if getattr(result, "rowcount", 0):
                    reset += 1
                    _log.warning(
                        "republish.message_lost",
                        job_id=row.job_id,
                        attempt=row.attempt,
                        published_at=row.published_at.isoformat(),
                    )
            session.commit()
        self.republished += reset
        return reset
