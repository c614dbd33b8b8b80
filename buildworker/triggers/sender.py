"""The background sender: drains ``trigger_deliveries`` with retries and backoff.

Every ``[triggers] poll`` it takes the pending deliveries that are due and, one by one:

1. claims the row with a conditional UPDATE (attempts + 1, ``next_attempt_at`` pushed past
   `CLAIM_S`), committed before anything is sent — several API processes may run senders
   on one database and only one wins a row;
2. renders the message from the job (or group) as it is now in the database, and sends it;
3. records the outcome: ``sent``; or ``pending`` again after `render.retry_delay`; or
   ``failed`` once ``[triggers] max-attempts`` is reached or the failure is permanent.

If the process dies between 1 and 3, the claim lapses after `CLAIM_S` and another pass
retries: delivery is at least once. Emails keep one Message-ID across attempts (derived
from the delivery's id), so a receiver can drop a duplicate.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from buildworker.api.metrics import metrics_of
from buildworker.config import Config
from buildworker.db.models import Job, JobGroup, TriggerDelivery, utcnow
from buildworker.service import ServiceThread
from buildworker.triggers import email as mail
from buildworker.triggers.render import (
    GroupView,
    JobView,
    TaskView,
    encode_payload,
    group_email_body,
    group_email_subject,
    group_payload,
    job_email_body,
    job_email_subject,
    job_payload,
    retry_delay,
)
from buildworker.triggers.webhook import DeliveryOutcome, WebhookSigner, load_signer, post_webhook

__all__ = ["CLAIM_S", "TriggerSender", "start"]

_log = structlog.get_logger(__name__)

#: How long a claimed delivery is reserved for the sender that claimed it, in seconds.
#: Longer than any one attempt (SMTP and webhook timeouts are far below it).
CLAIM_S = 600.0
#: Deliveries taken per pass.
BATCH = 100
#: Longest ``last_error`` kept, in characters.
MAX_ERROR = 4000
#: Seconds between two prunes of old sent/failed deliveries.
PRUNE_EVERY_S = 3600.0


def job_view(job: Job) -> JobView:
    return JobView(
        id=job.id,
        status=job.status,
        tags=tuple(job.tags or ()),
        note=job.note,
        runner=job.runner,
        owner_name=job.owner.username,
        image=job.image,
        arch=job.arch,
        created=job.created,
        updated=job.updated,
        tasks=tuple(TaskView(task.name, task.status) for task in job.tasks),
    )


def group_view(group: JobGroup) -> GroupView:
    return GroupView(
        id=group.id,
        note=group.note,
        owner_name=group.owner.username,
        created=group.created,
        jobs=tuple(job_view(job) for job in sorted(group.jobs, key=lambda j: j.id)),
    )


@dataclass(frozen=True)
class _Rendered:
    subject: str
    body: str
    payload: dict[str, Any]


class TriggerSender(ServiceThread):
    """Delivers pending triggers; `run_once` is one pass, `start`/`stop` run it in a thread.

    Parameters:
        sessionmaker: sessions on the API's database.
        config: the whole config (``[api] origin``, ``[mail]``, ``[triggers]``).
        clock: returns the current UTC time (tests move it forward).

    Raises:
        ConfigError: the webhook signing key is unusable (at construction, so at start-up).
    """

    def __init__(
        self,
        sessionmaker: sessionmaker[Session],
        config: Config,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._config = config
        self._clock = clock
        self._signer: WebhookSigner | None = load_signer(config.triggers)
        self._hostname = socket.getfqdn() or "localhost"
        super().__init__()
        self._wake = threading.Event()
        self._pruned_at: datetime | None = None
        if self._signer is None:
            _log.warning(
                "triggers.webhooks_unsigned",
                hint="set [triggers] webhook-key so receivers can verify webhooks",
            )

    # --- thread ---------------------------------------------------------------------------

    thread_name = "trigger-sender"

    def stop(self, timeout_s: float = 30.0) -> None:
        # An SMTP or webhook delivery in progress may take its own timeout to give up.
        super().stop(timeout_s)

    def _interrupt(self) -> None:
        self._wake.set()

    def wake(self) -> None:
        """Look for due deliveries now instead of at the next poll."""
        self._wake.set()

    def run(self) -> None:
        while not self._stop.is_set():
            # Cleared before the pass, so a wake() during the pass starts another at once.
            self._wake.clear()
            try:
                self.run_once()
            except Exception:
                # The database went away for a moment: log, and try again next pass.
                _log.exception("triggers.sender_error")
            self._wake.wait(self._config.triggers.poll)

    # --- one pass -------------------------------------------------------------------------

    def prune(self) -> int:
        """Delete sent and failed deliveries older than ``[triggers] keep``; how many."""
        cutoff = self._clock() - timedelta(seconds=self._config.triggers.keep)
        with self._sessionmaker() as session:
            result = session.execute(
                delete(TriggerDelivery)
                .where(TriggerDelivery.status.in_(("sent", "failed")))
                .where(TriggerDelivery.created < cutoff)
                .execution_options(synchronize_session=False)
            )
            session.commit()
        removed = int(getattr(result, "rowcount", 0) or 0)
        if removed:
            _log.info("triggers.pruned", count=removed)
        return removed

    def run_once(self) -> int:
        """Attempt every delivery due now (pruning old ones hourly); how many were attempted."""
        now = self._clock()
        if self._pruned_at is None or (now - self._pruned_at).total_seconds() >= PRUNE_EVERY_S:
            self._pruned_at = now
            self.prune()
        with self._sessionmaker() as session:
            due = session.execute(
                select(TriggerDelivery.id, TriggerDelivery.attempts)
                .where(TriggerDelivery.status == "pending", TriggerDelivery.next_attempt_at <= now)
                .order_by(TriggerDelivery.next_attempt_at, TriggerDelivery.id)
                .limit(BATCH)
            ).all()
        attempted = 0
        for delivery_id, attempts in due:
            if self._stop.is_set():
                break
            if self._attempt(delivery_id, attempts):
                attempted += 1
        return attempted

    def _claim(self, session: Session, delivery_id: int, attempts: int) -> bool:
        now = self._clock()
        result = session.execute(
            update(TriggerDelivery)
            .where(
                TriggerDelivery.id == delivery_id,
                TriggerDelivery.status == "pending",
                TriggerDelivery.attempts == attempts,
            )
            .values(attempts=attempts + 1, next_attempt_at=now + timedelta(seconds=CLAIM_S))
            .execution_options(synchronize_session=False)
        )
        session.commit()
        return getattr(result, "rowcount", 0) == 1

    def _attempt(self, delivery_id: int, attempts: int) -> bool:
        with self._sessionmaker() as session:
            if not self._claim(session, delivery_id, attempts):
                return False  # another sender took it
            row = session.get(TriggerDelivery, delivery_id, populate_existing=True)
            if row is None:
                return False
            log = _log.bind(
                delivery_id=row.id,
                job_id=row.job_id,
                group_id=row.group_id,
                action=row.action,
                attempt=row.attempts,
            )
            try:
                outcome = self._deliver(session, row)
            except Exception as exc:
                # A bug or a database hiccup while rendering: count it as a failed attempt.
                log.exception("triggers.delivery_error")
                outcome = DeliveryOutcome(False, f"internal error: {type(exc).__name__}: {exc}")
            self._record(session, row, outcome)
            session.commit()
            metrics_of(session).trigger_attempt(row.action, outcome.ok, row.status)
            event = "triggers.sent" if outcome.ok else "triggers.attempt_failed"
            log.info(event, status=row.status, detail=outcome.detail)
            return True

    def _record(self, session: Session, row: TriggerDelivery, outcome: DeliveryOutcome) -> None:
        now = self._clock()
        if outcome.ok:
            row.status, row.sent_at, row.last_error = "sent", now, None
            return
        row.last_error = outcome.detail[:MAX_ERROR]
        cfg = self._config.triggers
        if outcome.permanent or row.attempts >= cfg.max_attempts:
            row.status = "failed"
            return
        delay = retry_delay(row.attempts, base_s=cfg.retry_backoff, max_s=cfg.retry_backoff_max)
        row.next_attempt_at = now + timedelta(seconds=delay)

    # --- rendering and sending ------------------------------------------------------------

    def _render(self, session: Session, row: TriggerDelivery) -> _Rendered | None:
        origin = self._config.api.origin
        if row.job_id is not None:
            job = session.get(Job, row.job_id)
            if job is None:
                return None
            view = job_view(job)
            return _Rendered(
                job_email_subject(view), job_email_body(view, origin), job_payload(view, origin)
            )
        if row.group_id is not None:
            group = session.get(JobGroup, row.group_id)
            if group is None:
                return None
            gview = group_view(group)
            status = row.fired_status
            return _Rendered(
                group_email_subject(gview, status),
                group_email_body(gview, status, origin),
                group_payload(gview, status, origin),
            )
        return None

    def message_id(self, row: TriggerDelivery) -> str:
        """Stable across attempts, unique per delivery."""
        stamp = int(row.created.timestamp())
        return f"<buildworker.{row.id}.{stamp}@{self._hostname}>"

    def _deliver(self, session: Session, row: TriggerDelivery) -> DeliveryOutcome:
        rendered = self._render(session, row)
        if rendered is None:
            return DeliveryOutcome(False, "the job or group no longer exists", permanent=True)
        details = row.details or {}
        if row.action == "webhook":
            return post_webhook(
                str(details.get("url", "")),
                encode_payload(rendered.payload),
                self._signer,
                timeout_s=self._config.triggers.webhook_timeout,
                allow_private=self._config.triggers.webhook_allow_private,
            )
        if row.action == "email":
            try:
                to = mail.parse_addresses("to", details.get("to"))
                cc = mail.parse_addresses("cc", details.get("cc"))
            except mail.AddressError as exc:
                return DeliveryOutcome(False, str(exc), permanent=True)
            try:
                message = mail.compose(
                    sender=self._config.mail.from_address,
                    to=to,
                    cc=cc,
                    subject=rendered.subject,
                    body=rendered.body,
                    message_id=self.message_id(row),
                    in_reply_to=details.get("in_reply_to"),
                )
            except ValueError as exc:  # a header the email package refuses (newlines, ...)
                return DeliveryOutcome(False, f"cannot compose the email: {exc}", permanent=True)
            return mail.send(self._config.mail, message)
        return DeliveryOutcome(False, f"unknown trigger action {row.action!r}", permanent=True)


def start(state: Any) -> Callable[[], None]:
    """Start the sender for the app whose ``state`` holds ``config`` and ``sessionmaker``
    (it is also left on ``state.trigger_sender``); the returned callable stops it and waits.

    Raises:
        ConfigError: the webhook signing key is unusable.
    """
    sender = TriggerSender(state.sessionmaker, state.config)
    sender.start()
    state.trigger_sender = sender
    _log.info("triggers.sender_started")
    return sender.stop
