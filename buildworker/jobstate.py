"""The job and task state machine: which statuses exist and which moves between them are allowed.

Pure (no I/O): `buildworker.db.transitions` applies these rules to rows with compare-and-set
UPDATEs, so a move the tables below do not list is refused before it reaches the database.

The status values are the strings stored in ``jobs.status`` / ``tasks.status`` and shown by
the REST API (builds.sr.ht's names, lowercase): renaming one is a migration, not a refactor.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal, overload

__all__ = [
    "JOB_TRANSITIONS",
    "TASK_TRANSITIONS",
    "FinishedStatus",
    "IllegalTransition",
    "JobStatus",
    "TaskStatus",
    "check_transition",
    "is_terminal",
]


class JobStatus(enum.StrEnum):
    PENDING = "pending"  # submitted with execute=false: waits for a start
    QUEUED = "queued"  # an attempt waits for a worker to claim it
    RUNNING = "running"  # a worker holds the lease of the current attempt
    SUCCESS = "success"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


class TaskStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"  # never ran: an earlier task failed, or the build ended early


#: The terminal job statuses a worker may report at the end of an attempt (``POST .../finish``):
#: a Literal so the request body validates them (tests/foundation checks it matches the enum).
FinishedStatus = Literal["success", "failed", "timeout", "cancelled"]

_J = JobStatus
#: Where a job may go from each status. A terminal status has no way out: running a finished
#: build again (resubmit) makes a new job. Entering ``queued`` always starts a new attempt.
JOB_TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = MappingProxyType(
    {
        _J.PENDING: frozenset({_J.QUEUED, _J.CANCELLED}),  # start; cancel
        # claim; a secret the manifest names is missing at claim; cancel
        _J.QUEUED: frozenset({_J.RUNNING, _J.FAILED, _J.CANCELLED}),
        # finish (success/failed/timeout/cancelled); requeue: released, lease lapsed, or an
        # infrastructure failure with attempts left
        _J.RUNNING: frozenset({_J.QUEUED, _J.SUCCESS, _J.FAILED, _J.TIMEOUT, _J.CANCELLED}),
        _J.SUCCESS: frozenset(),
        _J.FAILED: frozenset(),
        _J.TIMEOUT: frozenset(),
        _J.CANCELLED: frozenset(),
    }
)

_T = TaskStatus
#: Where a task may go from each status. Every status may go back to ``pending``: a new
#: attempt of the job runs all its tasks from scratch. A worker may report a task's result
#: without having reported it running first.
TASK_TRANSITIONS: Mapping[TaskStatus, frozenset[TaskStatus]] = MappingProxyType(
    {
        _T.PENDING: frozenset({_T.RUNNING, _T.SUCCESS, _T.FAILED, _T.SKIPPED}),
        _T.RUNNING: frozenset({_T.SUCCESS, _T.FAILED, _T.PENDING}),
        _T.SUCCESS: frozenset({_T.PENDING}),
        _T.FAILED: frozenset({_T.PENDING}),
        _T.SKIPPED: frozenset({_T.PENDING}),
    }
)


class IllegalTransition(ValueError):
    """A status change the state machine does not allow; the message names both states."""

    def __init__(self, kind: str, old: JobStatus | TaskStatus, new: JobStatus | TaskStatus) -> None:
        super().__init__(f"{kind} cannot go from {old} to {new}")
        self.kind = kind
        self.old = old
        self.new = new


def is_terminal(status: JobStatus | TaskStatus) -> bool:
    """Whether ``status`` is an end state: a job's has no way out, a task's only the reset
    to ``pending`` that a new attempt of its job makes."""
    if isinstance(status, TaskStatus):
        return TASK_TRANSITIONS[status] <= {TaskStatus.PENDING}
    return not JOB_TRANSITIONS[status]


@overload
def check_transition(old: JobStatus, new: JobStatus) -> None: ...
@overload
def check_transition(old: TaskStatus, new: TaskStatus) -> None: ...
def check_transition(old: JobStatus | TaskStatus, new: JobStatus | TaskStatus) -> None:
    """Raise `IllegalTransition` unless a job (or task) may go from ``old`` to ``new``.

    The enum type of ``old`` picks the table: job and task statuses share some values
    ("running", "success") but not their rules.
    """
    if isinstance(old, TaskStatus) and isinstance(new, TaskStatus):
        if new not in TASK_TRANSITIONS[old]:
            raise IllegalTransition("task", old, new)
    elif isinstance(old, JobStatus) and isinstance(new, JobStatus):
        if new not in JOB_TRANSITIONS[old]:
            raise IllegalTransition("job", old, new)
    else:
        raise TypeError(f"mixed or unknown status types: {old!r} → {new!r}")
