"""What the job page and its live status show, built from a job the viewer may read.

Pure apart from reading the job's logs from the store: the routes in `pages_jobs` load
the job with the API's access check and hand it here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markupsafe import Markup

from buildworker.api.access import can_write
from buildworker.api.serialize import artifact_url
from buildworker.db.models import TERMINAL_JOB_STATUSES, Job, User
from buildworker.jobstate import JobStatus
from buildworker.store import Store
from buildworker.web.common import human_size
from buildworker.web.logview import WINDOW, LogView, anchor_prefix, read_log_view
from buildworker.web.notes import render_note

__all__ = ["LogSection", "job_context", "job_status", "ssh_connect_command"]


@dataclass(frozen=True)
class LogSection:
    #: "setup" or the task's name
    key: str
    title: str
    #: the task's status (None for the setup log)
    status: str | None
    #: the log's URL (relative to the origin, so the page's script stays same-origin)
    url: str
    anchor: str
    view: LogView


#: What a log that no worker has written yet shows.
EMPTY_LOG = LogView(Markup(""), skipped=0, offset=0, next_line=1, sgr="0", size=0)


def _log_url(job: Job, task: str | None) -> str:
    return f"/logs/{job.id}/log" if task is None else f"/logs/{job.id}/{task}/log"


def _started(job: Job) -> bool:
    return job.runner is not None or job.status == JobStatus.RUNNING


def ssh_connect_command(job: Job, user: User | None) -> str | None:
    """The command that connects to the job's VM while its SSH window is open.

    SSH ACCESS GOES HERE: the "ssh" branch (issue 12) builds the window and the keys; until
    it lands no job has an SSH window, so there is nothing to show.
    """
    return None


def _sections(job: Job, store: Store, final: bool) -> list[LogSection]:
    started = _started(job)
    sections: list[LogSection] = []
    for task in [None, *job.tasks]:
        name = None if task is None else task.name
        if started:
            view = read_log_view(store.log_path(job.id, name), name, final=final)
        else:
            view = EMPTY_LOG
        sections.append(
            LogSection(
                key="setup" if name is None else name,
                title="Setup" if name is None else name,
                status=None if task is None else task.status,
                url=_log_url(job, name),
                anchor=anchor_prefix(name),
                view=view,
            )
        )
    return sections


def _artifacts(job: Job) -> list[dict[str, Any]]:
    return [
        {
            "name": artifact.name,
            "path": artifact.path,
            "size": artifact.size,
            "size_text": human_size(artifact.size),
            "url": artifact_url("", artifact),
        }
        for artifact in job.artifacts
    ]


def job_context(job: Job, viewer: User | None, store_root: Path) -> dict[str, Any]:
    """The template context of the job page."""
    final = job.status in TERMINAL_JOB_STATUSES
    writable = can_write(job, viewer)
    return {
        "job": job,
        "note_html": render_note(job.note),
        "sections": _sections(job, Store(store_root), final),
        "artifacts": _artifacts(job),
        "final": final,
        "can_cancel": writable and not final,
        "can_resubmit": viewer is not None,
        "connect_command": ssh_connect_command(job, viewer),
        "window_kib": WINDOW // 1024,
        "status_url": f"/~{job.owner.username}/job/{job.id}/status",
    }


def job_status(job: Job, viewer: User | None, store_root: Path) -> dict[str, Any]:
    """What the page's script polls while the job runs: statuses, log sizes, artifacts."""
    store = Store(store_root)
    started = _started(job)
    logs = []
    for name in [None, *(task.name for task in job.tasks)]:
        logs.append(
            {
                "key": "setup" if name is None else name,
                "size": (store.log_size(job.id, name) or 0) if started else 0,
            }
        )
    final = job.status in TERMINAL_JOB_STATUSES
    return {
        "id": job.id,
        "status": job.status,
        "runner": job.runner,
        "final": final,
        "reason": job.reason,
        "tasks": [{"name": task.name, "status": task.status} for task in job.tasks],
        "logs": logs,
        "artifacts": _artifacts(job),
        "can_cancel": can_write(job, viewer) and not final,
        "cancel_requested": job.cancel_requested,
    }
