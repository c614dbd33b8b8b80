"""The job and task state machine (buildworker.jobstate): the tables, read as a spec."""

from __future__ import annotations

from itertools import product
from typing import get_args

import pytest

from buildworker.db.models import JOB_STATUSES, TASK_STATUSES, TERMINAL_JOB_STATUSES
from buildworker.jobstate import (
    JOB_TRANSITIONS,
    TASK_TRANSITIONS,
    FinishedStatus,
    IllegalTransition,
    JobStatus,
    TaskStatus,
    check_transition,
    is_terminal,
)

J, T = JobStatus, TaskStatus

#: Every job transition the API makes, and what makes it.
ALLOWED_JOB = {
    (J.PENDING, J.QUEUED),  # start
    (J.PENDING, J.CANCELLED),  # cancel
    (J.QUEUED, J.RUNNING),  # claim
    (J.QUEUED, J.FAILED),  # claim finds a secret missing
    (J.QUEUED, J.CANCELLED),  # cancel
    (J.RUNNING, J.QUEUED),  # release, lapsed lease, infrastructure failure: a new attempt
    (J.RUNNING, J.SUCCESS),  # finish
    (J.RUNNING, J.FAILED),  # finish, or the last attempt's lease lapsed
    (J.RUNNING, J.TIMEOUT),  # finish
    (J.RUNNING, J.CANCELLED),  # finish or release after a cancel request
}

ALLOWED_TASK = {
    (T.PENDING, T.RUNNING),
    (T.PENDING, T.SUCCESS),  # a worker may report the result alone
    (T.PENDING, T.FAILED),
    (T.PENDING, T.SKIPPED),  # an earlier task failed, or the job ended first
    (T.RUNNING, T.SUCCESS),
    (T.RUNNING, T.FAILED),
    # a new attempt of the job runs every task again
    (T.RUNNING, T.PENDING),
    (T.SUCCESS, T.PENDING),
    (T.FAILED, T.PENDING),
    (T.SKIPPED, T.PENDING),
}


def test_the_status_values_are_the_stored_strings() -> None:
    assert [s.value for s in JobStatus] == [
        "pending",
        "queued",
        "running",
        "success",
        "failed",
        "timeout",
        "cancelled",
    ]
    assert [s.value for s in TaskStatus] == ["pending", "running", "success", "failed", "skipped"]
    # models keeps plain strings, as before the enums existed
    assert list(JOB_STATUSES) == [s.value for s in JobStatus]
    assert list(TASK_STATUSES) == [s.value for s in TaskStatus]
    assert {type(s) for s in (*JOB_STATUSES, *TASK_STATUSES, *TERMINAL_JOB_STATUSES)} == {str}
    assert f"{JobStatus.RUNNING}" == "running" and JobStatus("running") is JobStatus.RUNNING


def test_every_status_has_a_row_in_its_table() -> None:
    assert set(JOB_TRANSITIONS) == set(JobStatus)
    assert set(TASK_TRANSITIONS) == set(TaskStatus)


@pytest.mark.parametrize(("old", "new"), sorted(ALLOWED_JOB))
def test_each_allowed_job_transition_is_accepted(old: JobStatus, new: JobStatus) -> None:
    check_transition(old, new)


@pytest.mark.parametrize(("old", "new"), sorted(ALLOWED_TASK))
def test_each_allowed_task_transition_is_accepted(old: TaskStatus, new: TaskStatus) -> None:
    check_transition(old, new)


def test_the_tables_allow_nothing_else() -> None:
    job = {(old, new) for old, targets in JOB_TRANSITIONS.items() for new in targets}
    task = {(old, new) for old, targets in TASK_TRANSITIONS.items() for new in targets}
    assert job == ALLOWED_JOB
    assert task == ALLOWED_TASK


@pytest.mark.parametrize(
    ("old", "new"),
    sorted(set(product(JobStatus, JobStatus)) - ALLOWED_JOB),
)
def test_every_other_job_transition_is_refused_naming_both_states(
    old: JobStatus, new: JobStatus
) -> None:
    with pytest.raises(IllegalTransition, match=f"^job cannot go from {old} to {new}$") as info:
        check_transition(old, new)
    assert (info.value.old, info.value.new) == (old, new)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (T.SUCCESS, T.RUNNING),
        (T.FAILED, T.SUCCESS),
        (T.SKIPPED, T.RUNNING),
        (T.RUNNING, T.SKIPPED),
        (T.RUNNING, T.RUNNING),
        (T.PENDING, T.PENDING),
    ],
)
def test_illegal_task_transitions_are_refused_naming_both_states(
    old: TaskStatus, new: TaskStatus
) -> None:
    with pytest.raises(IllegalTransition, match=f"^task cannot go from {old} to {new}$"):
        check_transition(old, new)


def test_the_message_reads_as_the_states_are_stored() -> None:
    with pytest.raises(IllegalTransition) as info:
        check_transition(J.SUCCESS, J.RUNNING)
    assert str(info.value) == "job cannot go from success to running"


def test_a_job_status_cannot_be_checked_against_a_task_status() -> None:
    # Same value, different machines: mixing them is a programming error, not a refusal.
    with pytest.raises(TypeError):
        check_transition(J.RUNNING, T.SUCCESS)  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        check_transition("running", "success")  # type: ignore[call-overload]


def test_terminal_job_states_have_no_way_out() -> None:
    terminal = {s for s in JobStatus if is_terminal(s)}
    assert terminal == {J.SUCCESS, J.FAILED, J.TIMEOUT, J.CANCELLED}
    assert terminal == TERMINAL_JOB_STATUSES
    for old, new in product(terminal, JobStatus):
        with pytest.raises(IllegalTransition):
            check_transition(old, new)
    # Every non-terminal state can still reach an end
    for status in set(JobStatus) - terminal:
        assert JOB_TRANSITIONS[status] & terminal


def test_terminal_task_states_leave_only_for_a_new_attempt() -> None:
    terminal = {s for s in TaskStatus if is_terminal(s)}
    assert terminal == {T.SUCCESS, T.FAILED, T.SKIPPED}
    for status in terminal:
        assert TASK_TRANSITIONS[status] == {T.PENDING}


def test_a_worker_may_finish_with_exactly_the_terminal_statuses() -> None:
    assert set(get_args(FinishedStatus)) == TERMINAL_JOB_STATUSES
