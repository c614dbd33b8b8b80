"""SessionHolder: how long a build's VM is kept for SSH sessions after its tasks."""

from __future__ import annotations

import threading
import time

from buildworker.worker.context import CancelToken
from buildworker.worker.hold import HoldEnd, SessionHolder


def hold_in_thread(holder: SessionHolder, window_s: float) -> tuple[threading.Thread, list]:
    box: list = []
    thread = threading.Thread(target=lambda: box.append(holder.hold(window_s)), daemon=True)
    thread.start()
    return thread, box


def wait_holding(holder: SessionHolder) -> None:
    deadline = time.monotonic() + 5
    while not holder.holding:
        assert time.monotonic() < deadline, "the hold never started"
        time.sleep(0.01)


def test_nobody_logging_in_ends_the_hold_after_the_window() -> None:
    holder = SessionHolder(time.time() + 600, CancelToken())
    started = time.monotonic()
    assert holder.hold(0.4) is HoldEnd.WINDOW
    took = time.monotonic() - started
    assert 0.35 <= took < 2.0, took
    assert not holder.holding


def test_a_login_extends_to_the_job_deadline_and_the_last_logout_ends_it() -> None:
    job_deadline = time.time() + 600
    holder = SessionHolder(job_deadline, CancelToken())
    thread, box = hold_in_thread(holder, 0.5)
    wait_holding(holder)
    assert holder.deadline() < job_deadline - 500  # the window, not the job's deadline
    holder.session_started("alice")
    assert holder.deadline() == job_deadline
    time.sleep(0.8)  # past the window: a logged-in user keeps the VM
    assert thread.is_alive()
    holder.session_started("carol")
    holder.session_ended("alice")
    time.sleep(0.3)
    assert thread.is_alive()  # carol is still in
    holder.session_ended("carol")
    thread.join(2)
    assert box == [HoldEnd.LOGOUT]


def test_a_session_open_when_the_hold_begins_counts_and_its_logout_ends_it() -> None:
    holder = SessionHolder(time.time() + 600, CancelToken())
    holder.session_started("alice")  # connected while the tasks ran
    thread, box = hold_in_thread(holder, 0.2)
    time.sleep(0.5)
    assert thread.is_alive()
    holder.session_ended("alice")
    thread.join(2)
    assert box == [HoldEnd.LOGOUT]


def test_sessions_over_before_the_hold_do_not_end_it() -> None:
    holder = SessionHolder(time.time() + 600, CancelToken())
    holder.session_started("alice")
    holder.session_ended("alice")  # a peek during the tasks
    assert holder.hold(0.3) is HoldEnd.WINDOW


def test_a_cancel_ends_the_hold_at_once() -> None:
    cancel = CancelToken()
    holder = SessionHolder(time.time() + 600, cancel)
    holder.session_started("alice")
    thread, box = hold_in_thread(holder, 60)
    wait_holding(holder)
    cancelled_at = time.monotonic()
    cancel.cancel("cancelled")
    thread.join(2)
    assert box == [HoldEnd.CANCELLED]
    assert time.monotonic() - cancelled_at < 1.0
    assert holder.cancel_reason == "cancelled"


def test_the_window_is_capped_by_the_job_deadline_and_a_session_ends_at_it() -> None:
    holder = SessionHolder(time.time() + 0.4, CancelToken())
    thread, box = hold_in_thread(holder, 600)
    wait_holding(holder)
    holder.session_started("alice")
    thread.join(3)
    assert box == [HoldEnd.DEADLINE]
