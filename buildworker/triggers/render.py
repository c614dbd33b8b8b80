"""Pure trigger logic: which triggers fire, and what they say (builds.sr.ht §4).

No I/O here: the sender turns database rows into the small frozen views below, and these
functions turn views into subjects, bodies and payloads. The texts are byte-for-byte
builds.sr.ht's (``worker/triggers.go``), with its bugs fixed where the spec marks them:

- the group ``success`` condition is tested against the *group's* status, not the status of
  whichever job happened to finish last;
- a job without tags gets the subject ``[builds.sr.ht] build <status>`` (sr.ht wrote
  ``[] build ...`` for jobs submitted without tags through GraphQL or the web);
- group job lines are padded to the widest status and tag/image of *all* jobs, and the
  common tag prefix is a real longest common prefix.

Durations are ``updated - created`` of the job (or the group's last job minus the group's
creation): the moment the status became final, so a retried delivery says the same thing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from buildworker.web.urls import job_page_url

__all__ = [
    "CONDITIONS",
    "FAILURE_STATUSES",
    "TERMINAL_STATUSES",
    "GroupView",
    "JobView",
    "TaskView",
    "common_tag_prefix",
    "condition_matches",
    "encode_payload",
    "go_duration",
    "group_email_body",
    "group_email_subject",
    "group_payload",
    "group_status",
    "job_email_body",
    "job_email_subject",
    "job_payload",
    "job_url",
    "retry_delay",
]

CONDITIONS = ("always", "success", "failure")
#: Statuses the ``failure`` condition fires on (sr.ht: failed, timeout, cancelled).
FAILURE_STATUSES = frozenset({"failed", "timeout", "cancelled"})
TERMINAL_STATUSES = FAILURE_STATUSES | {"success"}
#: Subject tag of a job (or group) without tags, as builds.sr.ht writes it.
DEFAULT_SUBJECT_TAG = "builds.sr.ht"


@dataclass(frozen=True)
class TaskView:
    name: str
    status: str


@dataclass(frozen=True)
class JobView:
    """What triggers need to know about a job."""

    id: int
    status: str
    tags: tuple[str, ...]
    note: str | None
    runner: str | None
    owner_name: str
    image: str
    arch: str
    created: datetime
    updated: datetime
    tasks: tuple[TaskView, ...]

    @property
    def tag_string(self) -> str:
        """Tags as builds.sr.ht stores them: joined with "/"."""
        return "/".join(self.tags)

    @property
    def started(self) -> bool:
        """A job that never reached a runner has no logs (its log URLs are null)."""
        return self.runner is not None


@dataclass(frozen=True)
class GroupView:
    id: int
    note: str | None
    owner_name: str
    created: datetime
    #: ordered by job id
    jobs: tuple[JobView, ...]


# --- conditions ------------------------------------------------------------------------


def condition_matches(condition: str, status: str) -> bool:
    """Whether a trigger with ``condition`` fires for a job (or group) that ended ``status``.

    Unknown conditions never fire (sr.ht: "Skipping trigger, condition unmet"); a status that
    is not terminal never fires anything.
    """
    if status not in TERMINAL_STATUSES:
        return False
    if condition == "always":
        return True
    if condition == "success":
        return status == "success"
    if condition == "failure":
        return status in FAILURE_STATUSES
    return False


def group_status(statuses: Iterable[str]) -> str | None:
    """The status of a group whose jobs (in id order) have ``statuses``; None if not done.

    ``success`` when every job succeeded, else the status of the last job that did not
    (sr.ht's rule). An empty group is not done: it has nothing to report.
    """
    seen = list(statuses)
    if not seen or any(status not in TERMINAL_STATUSES for status in seen):
        return None
    failures = [status for status in seen if status != "success"]
    return failures[-1] if failures else "success"


def retry_delay(attempts: int, *, base_s: float, max_s: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1 = the first one):
    ``base_s`` doubled per further attempt, capped at ``max_s``."""
    if attempts < 1:
        raise ValueError(f"attempts: must be >= 1, got {attempts}")
    return float(min(max_s, base_s * 2 ** min(attempts - 1, 32)))


# --- text helpers ------------------------------------------------------------------------


def go_duration(seconds: float) -> str:
    """Go's ``time.Duration.String()`` of a duration truncated to the second: 0s, 45s,
    2m13s, 1h0m5s."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def job_url(origin: str, owner: str, job_id: int) -> str:
    """The job's page, ``<origin>/~USER/job/N``, as in the guest's ``JOB_URL``."""
    return job_page_url(origin, owner, job_id)


def _status_mark(status: str) -> str:
    if status == "success":
        return "✓"
    if status == "failed":
        return "✗"
    return "-"


def common_tag_prefix(tag_lists: Iterable[Sequence[str]]) -> tuple[str, ...]:
    """Longest common prefix (by "/" component) of the tags of the jobs that have tags."""
    prefix: list[str] | None = None
    for tags in tag_lists:
        if not tags:
            continue
        if prefix is None:
            prefix = list(tags)
            continue
        length = 0
        while length < min(len(prefix), len(tags)) and prefix[length] == tags[length]:
            length += 1
        del prefix[length:]
    return tuple(prefix or ())


# --- job emails ----------------------------------------------------------------------------


def job_email_subject(job: JobView) -> str:
    return f"[{job.tag_string or DEFAULT_SUBJECT_TAG}] build {job.status}"


def job_email_body(job: JobView, origin: str) -> str:
    """builds.sr.ht's job email body; tasks whose name starts with "_" are left out of the
    summary line (its undocumented "hidden task" feature)."""
    duration = go_duration((job.updated - job.created).total_seconds())
    tasks = "".join(
        f"{_status_mark(task.status)} {task.name} "
        for task in job.tasks
        if not task.name.startswith("_")
    )
    note = f"{job.note}\n\n" if job.note else ""
    return (
        f"{job.tag_string or 'Job'} #{job.id}: {job.status.upper()} in {duration}\n\n"
        f"{note}{job_url(origin, job.owner_name, job.id)}\n\n{tasks}"
    )


# --- group emails --------------------------------------------------------------------------


def _group_ended(group: GroupView) -> datetime:
    return max((job.updated for job in group.jobs), default=group.created)


def group_email_subject(group: GroupView, status: str) -> str:
    tag = "/".join(common_tag_prefix(job.tags for job in group.jobs))
    return f"[{tag or DEFAULT_SUBJECT_TAG}] build {status}"


def group_email_body(group: GroupView, status: str, origin: str) -> str:
    """builds.sr.ht's group email: a heading, the group note, one line per job:
    ``✓|✗ #<id> <STATUS> <tags or image> <url>`` with the columns padded."""
    tag = "/".join(common_tag_prefix(job.tags for job in group.jobs))
    duration = go_duration((_group_ended(group) - group.created).total_seconds())
    width_status = max((len(job.status) for job in group.jobs), default=0)
    width_label = max((len(job.tag_string or job.image) for job in group.jobs), default=0)
    lines = "".join(
        f"{'✓' if job.status == 'success' else '✗'} #{job.id} "
        f"{job.status.upper():<{width_status}} "
        f"{job.tag_string or job.image:<{width_label}} {job_url(origin, job.owner_name, job.id)}\n"
        for job in group.jobs
    )
    return f"{tag or 'Job group'}: {status.upper()} in {duration}\n\n{group.note or ''}\n\n{lines}"


# --- webhook payloads ----------------------------------------------------------------------


def job_payload(job: JobView, origin: str) -> dict[str, Any]:
    """The webhook payload of builds.sr.ht §4.2, fields in its order; log URLs point at the
    API (never at a build host), null for a job that never started. ``tasks`` is null for a
    job without tasks. Trailing extras (tags, image, arch, url: the job's page) are
    additions."""
    base = f"{origin.rstrip('/')}/logs/{job.id}"
    tasks: list[dict[str, Any]] | None = [
        {
            "name": task.name,
            "status": task.status,
            "log": f"{base}/{task.name}/log" if job.started else None,
        }
        for task in job.tasks
    ] or None
    return {
        "id": job.id,
        "status": job.status,
        "setup_log": f"{base}/log" if job.started else None,
        "tasks": tasks,
        "note": job.note,
        "runner": job.runner,
        "owner": {"canonical_name": "~" + job.owner_name, "name": job.owner_name},
        "tags": job.tag_string,
        "image": job.image,
        "arch": job.arch,
        "url": job_url(origin, job.owner_name, job.id),
    }


def group_payload(group: GroupView, status: str, origin: str) -> dict[str, Any]:
    """A job group's webhook payload: builds.sr.ht's ``JobGroupStatus`` (id, note, owner,
    jobs) plus the group's ``status`` (sr.ht never sent group webhooks)."""
    return {
        "id": group.id,
        "status": status,
        "note": group.note,
        "owner": {"canonical_name": "~" + group.owner_name, "name": group.owner_name},
        "jobs": [job_payload(job, origin) for job in group.jobs],
    }


def encode_payload(payload: dict[str, Any]) -> bytes:
    """The exact bytes that are POSTed and signed: compact UTF-8 JSON, key order kept."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
