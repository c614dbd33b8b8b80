"""Record the triggers a terminal job (or a finished job group) fires, transactionally.

The API tier calls `record_job_triggers(session, job)` in the same transaction that gives a
job its terminal status (internal ``finish``, the lease reaper, cancel of a pending or queued
job, an unclaimable job). Nothing is sent here: rows go into ``trigger_deliveries`` and
commit (or roll back) with the status, and `buildworker.triggers.sender` delivers them
afterwards. So a trigger is fired exactly when the status is really final, a crash between
commit and delivery loses nothing, and SMTP/webhook keys never leave the API tier.

Once only, by construction:
- a job becomes terminal through a conditional UPDATE that only one transaction wins;
- rows are unique on (job_id, index) / (group_id, index), and recording skips indexes that
  already exist, so calling this twice records nothing new;
- for groups, the group row is locked (``FOR NO KEY UPDATE`` on PostgreSQL; SQLite has one
  writer at a time anyway) before its jobs are read. Of two jobs ending at once, the second
  transaction waits for the first to commit, then sees both jobs terminal and records the
  group's triggers — once — while the first saw the other job still running and recorded
  none. This fixes sr.ht's double fire (and its no-fire under snapshot reads).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from buildworker.db.models import Job, JobGroup, TriggerDelivery, utcnow
from buildworker.manifest import ManifestError, parse_manifest
from buildworker.triggers.render import condition_matches, group_status

__all__ = ["record_group_triggers", "record_job_triggers"]

_log = structlog.get_logger(__name__)

#: The largest manifest ever accepted; re-parsing must not reject what submit accepted.
_PARSE_MAX_SIZE = 1 << 30


def _existing(
    session: Session, *, job_id: int | None = None, group_id: int | None = None
) -> set[int]:
    column = TriggerDelivery.job_id if job_id is not None else TriggerDelivery.group_id
    key = job_id if job_id is not None else group_id
    return set(session.scalars(select(TriggerDelivery.index).where(column == key)))


def _job_triggers(job: Job) -> list[tuple[str, str, dict[str, Any]]]:
    try:
        manifest = parse_manifest(job.manifest, max_size=_PARSE_MAX_SIZE, max_artifacts=1 << 20)
    except ManifestError as exc:
        # Validated at submit; only a parser change could get here. Fire nothing, loudly.
        _log.error("triggers.manifest_unparsable", job_id=job.id, error=str(exc))
        return []
    return [(t.action, t.condition, dict(t.options)) for t in manifest.triggers]


def _pending(
    session: Session,
    now: datetime,
    index: int,
    action: str,
    condition: str,
    details: dict[str, Any],
    fired_status: str,
    *,
    job_id: int | None = None,
    group_id: int | None = None,
) -> TriggerDelivery:
    """Add one delivery, due now, for trigger ``index`` of a job or of a group."""
    row = TriggerDelivery(
        job_id=job_id,
        group_id=group_id,
        index=index,
        action=action,
        condition=condition,
        details=details,
        fired_status=fired_status,
        status="pending",
        attempts=0,
        next_attempt_at=now,
        created=now,
    )
    session.add(row)
    return row


def record_job_triggers(session: Session, job: Job | int) -> list[TriggerDelivery]:
    """Add a pending delivery for each trigger of ``job`` whose condition matches its
    terminal status, then the group's triggers if this job was the group's last.

    Call it after the UPDATE that made the job terminal, before the commit; the caller
    commits. Returns the rows added (already flushed). A job that is not terminal records
    nothing (and is logged): the caller wired it in the wrong place.
    """
    session.flush()
    job_id = job if isinstance(job, int) else job.id
    # The terminal UPDATE ran with synchronize_session=False: reload what it changed.
    loaded = session.get(Job, job_id, populate_existing=True)
    if loaded is None:
        raise LookupError(f"job {job_id} does not exist")
    log = _log.bind(job_id=job_id, status=loaded.status)
    if not condition_matches("always", loaded.status):
        log.warning("triggers.job_not_terminal")
        return []
    done = _existing(session, job_id=job_id)
    added: list[TriggerDelivery] = []
    now = utcnow()
    for index, (action, condition, details) in enumerate(_job_triggers(loaded)):
        if index in done or not condition_matches(condition, loaded.status):
            continue
        added.append(
            _pending(session, now, index, action, condition, details, loaded.status, job_id=job_id)
        )
    session.flush()
    if added:
        log.info("triggers.recorded", count=len(added))
    if loaded.group_id is not None:
        added.extend(record_group_triggers(session, loaded.group_id))
    return added


def record_group_triggers(session: Session, group: JobGroup | int) -> list[TriggerDelivery]:
    """Add the group's deliveries if every job of the group is terminal (and they are not
    recorded yet). Conditions are tested against the *group's* status: ``success`` when all
    jobs succeeded, else the status of the last job (by id) that did not.

    The caller commits. Safe to call for any group at any time: an unfinished group records
    nothing.
    """
    session.flush()
    group_id = group if isinstance(group, int) else group.id
    # Serialise concurrent finishers of one group on its row (see the module docstring).
    triggers = session.execute(
        select(JobGroup.triggers).where(JobGroup.id == group_id).with_for_update(key_share=True)
    ).scalar_one_or_none()
    if triggers is None:
        return []
    statuses = list(
        session.scalars(select(Job.status).where(Job.group_id == group_id).order_by(Job.id))
    )
    status = group_status(statuses)
    if status is None:
        return []
    done = _existing(session, group_id=group_id)
    added: list[TriggerDelivery] = []
    now = utcnow()
    for index, trigger in enumerate(triggers):
        if not isinstance(trigger, dict) or index in done:
            continue
        action, condition = trigger.get("action"), trigger.get("condition")
        if action not in ("email", "webhook") or not isinstance(condition, str):
            continue
        if not condition_matches(condition, status):
            continue
        details = {
            key: value
            for key, value in trigger.items()
            if key not in ("action", "condition") and value is not None
        }
        added.append(
            _pending(session, now, index, action, condition, details, status, group_id=group_id)
        )
    session.flush()
    if added:
        _log.info("triggers.group_recorded", group_id=group_id, status=status, count=len(added))
    return added
