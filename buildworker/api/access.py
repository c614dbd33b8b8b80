"""Who may read or write a job: the owner always, then the job's access lists.

``access_read`` holds usernames and ``*`` (anyone, including anonymous readers of logs
and artifacts); ``access_write`` holds usernames allowed to start and cancel. Writers may
read. A job one may not read is answered 404, as if it did not exist.
"""

from __future__ import annotations

from buildworker.db.models import Job, User

__all__ = ["PUBLIC", "can_read", "can_write", "is_public"]

PUBLIC = "*"


def is_public(job: Job) -> bool:
    return PUBLIC in (job.access_read or [])


def can_read(job: Job, user: User | None) -> bool:
    if is_public(job):
        return True
    if user is None:
        return False
    if user.id == job.owner_id:
        return True
    return user.username in (job.access_read or []) or user.username in (job.access_write or [])


def can_write(job: Job, user: User | None) -> bool:
    if user is None:
        return False
    return user.id == job.owner_id or user.username in (job.access_write or [])
