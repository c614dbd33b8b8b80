"""The JSON shapes of jobs and artifacts, as builds.sr.ht's REST API returns them (spec §3.1)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from buildworker.db.models import Artifact, Job
from buildworker.jobstate import JobStatus

__all__ = ["artifact_dict", "artifact_url", "format_time", "job_dict"]


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _started(job: Job) -> bool:
    return job.runner is not None or job.status == JobStatus.RUNNING


def job_dict(job: Job, origin: str, *, at_submit: bool = False) -> dict[str, Any]:
    """The job resource, as builds.sr.ht's Job.to_dict plus created/updated/image/arch."""
    started = _started(job)
    base = f"{origin}/logs/{job.id}"
    out: dict[str, Any] = {"id": job.id, "status": job.status}
    if not at_submit:
        out["setup_log"] = f"{base}/log" if started else None
    out["tasks"] = [
        {
            "name": task.name,
            "status": task.status,
            "log": f"{base}/{task.name}/log" if started else None,
        }
        for task in job.tasks
    ]
    out.update(
        {
            "note": job.note,
            "runner": job.runner,
            "tags": "/".join(job.tags or []),
            "owner": {"canonical_name": job.owner.canonical_name, "name": job.owner.username},
            "created": format_time(job.created),
            "updated": format_time(job.updated),
            "image": job.image,
            "arch": job.arch,
            # ours, beside builds.sr.ht's fields: which image the job ran on (the release
            # an alias meant at submit, then the worker's report) and its content digest
            "image_release": job.image_release,
            "image_digest": job.image_digest,
        }
    )
    return out


def artifact_url(origin: str, artifact: Artifact) -> str:
    """Where the files router serves an artifact: the store key under the origin."""
    return f"{origin}/{quote(artifact.storage_key.lstrip('/'), safe='/')}"


def artifact_dict(artifact: Artifact, origin: str) -> dict[str, Any]:
    return {
        "id": artifact.id,
        "created": format_time(artifact.created),
        "path": artifact.path,
        "name": artifact.name,
        "url": artifact_url(origin, artifact),
        "size": artifact.size,
    }
