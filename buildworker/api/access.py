"""Who may read or write a job: the owner always, then the job's access lists.

``access_read`` holds usernames and ``*`` (anyone, including anonymous readers of logs
and artifacts); ``access_write`` holds usernames allowed to start and cancel. Writers may
read. A job one may not read is answered 404, as if it did not exist. Usernames are
lowercase, so entries match them case-insensitively (``Alice`` in a list means alice).
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, Text, cast, func, or_

from buildworker.db.models import Job, User

__all__ = ["PUBLIC", "can_read", "can_write", "is_public", "readable_by"]

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
    return _in(user, job.access_read) or _in(user, job.access_write)


def can_write(job: Job, user: User | None) -> bool:
    if user is None:
        return False
    return user.id == job.owner_id or _in(user, job.access_write)


def _in(user: User, names: list[str] | None) -> bool:
    name = user.username.lower()
    return any(entry.lower() == name for entry in names or [])


def _listed(column: object, name: str) -> ColumnElement[bool]:
    # The lists are JSON arrays of usernames and "*"; neither contains a quote or a
    # backslash (submit validates them), so `"name"` appears in the JSON text exactly when
    # name is an element, on SQLite and PostgreSQL alike.
    return func.lower(cast(column, Text)).contains(f'"{name.lower()}"', autoescape=True)


def readable_by(user: User | None) -> ColumnElement[bool]:
    """`can_read` as a SQL condition on jobs, for lists (tests check the two agree)."""
    public = _listed(Job.access_read, PUBLIC)
    if user is None:
        return public
    return or_(
        public,
        Job.owner_id == user.id,
        _listed(Job.access_read, user.username),
        _listed(Job.access_write, user.username),
    )
