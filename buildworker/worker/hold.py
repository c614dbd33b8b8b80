"""Keeping a build's VM for its owner after the tasks: failure standby and ``shell: true``.

builds.sr.ht keeps a failed build's VM for a login window, and a ``shell: true`` build's VM
until the job's timeout whether anyone logs in or not (spec §2.4, §2.7, §8 item 11). Here:

- **standby** (a failed build): the VM waits ``[worker] standby`` (capped by the job's
  deadline); a login extends it to the job's deadline; the last logout ends it.
- **shell** (``shell: true``): the VM waits for a login for ``[worker] shell-idle``; once
  someone has logged in, the last logout ends it (or the job's deadline).

In both, a cancel of the build (API cancel, timeout, drain, stop) ends it at once.

`SessionHolder` counts the sessions the control server reports (its hooks run in the
sessions' threads and never block) and `hold` blocks the build's thread until one of the
ends above; it returns which. No I/O here: the runner prints, reports and tears down.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import StrEnum

from buildworker.worker.context import CancelToken

__all__ = ["HoldEnd", "SessionHolder"]


class HoldEnd(StrEnum):
    """Why a hold ended."""

    LOGOUT = "logout"  # the last session logged out
    WINDOW = "window"  # nobody logged in within the window
    DEADLINE = "deadline"  # the job's deadline passed with someone logged in
    CANCELLED = "cancelled"  # the build was stopped (cancel, timeout, drain, stop)


class SessionHolder:
    """Sessions into one build, and the wait for them.

    Parameters:
        job_deadline: the unix time the job's timeout ends it.
        cancel: the build's cancel token (a set token ends a hold at once).
        clock: unix time (injectable for tests).
    """

    def __init__(
        self,
        job_deadline: float,
        cancel: CancelToken,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._job_deadline = job_deadline
        self._cancel = cancel
        self._clock = clock
        self._cond = threading.Condition()
        self._sessions = 0
        self._logins = 0
        self._until = job_deadline
        self._holding = False

    # -- the control server's hooks (session threads) --------------------------------------

    def session_started(self, user: str) -> None:
        with self._cond:
            self._sessions += 1
            self._logins += 1
            # A login during a hold extends it to the job's deadline (builds.sr.ht: "After
            # logging in, the deadline is increased to your remaining build time").
            self._until = self._job_deadline
            self._cond.notify_all()

    def session_ended(self, user: str) -> None:
        with self._cond:
            self._sessions = max(0, self._sessions - 1)
            self._cond.notify_all()

    def deadline(self) -> float:
        """When the VM will be destroyed at the latest (the banner shows it)."""
        with self._cond:
            return self._until

    @property
    def sessions(self) -> int:
        with self._cond:
            return self._sessions

    @property
    def cancel_reason(self) -> str | None:
        return self._cancel.reason

    @property
    def holding(self) -> bool:
        with self._cond:
            return self._holding

    # -- the build's thread ----------------------------------------------------------------

    def hold(self, window_s: float) -> HoldEnd:
        """Block until the hold ends; ``window_s`` is how long to wait for a first login.

        A session open when the hold starts counts as a login (the user connected while the
        tasks ran): then the hold lasts until they log out."""
        with self._cond:
            self._holding = True
            logins_before = self._logins - self._sessions  # those already over do not count
            if self._sessions > 0:
                self._until = self._job_deadline
            else:
                self._until = min(self._job_deadline, self._clock() + max(0.0, window_s))
            try:
                while True:
                    if self._cancel.is_set():
                        return HoldEnd.CANCELLED
                    logged_in = self._logins > logins_before
                    if logged_in and self._sessions == 0:
                        return HoldEnd.LOGOUT
                    remaining = self._until - self._clock()
                    if remaining <= 0:
                        return HoldEnd.DEADLINE if logged_in else HoldEnd.WINDOW
                    # The cancel token has no hook into this condition: poll it often.
                    self._cond.wait(min(remaining, 0.2))
            finally:
                self._holding = False
