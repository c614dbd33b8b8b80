"""Named health checks → one report: ``{"status": ..., "checks": {name: {"ok", "detail"}}}``.

Shared by the API (``/healthz``, ``/readyz``) and the worker (the same routes beside its
``/metrics``). A check is a callable taking no argument that returns a `CheckResult`; the
I/O it needs (an engine, a URL, an event) is bound when it is registered, so the checks
themselves live next to what they probe (`buildworker.api.health`,
`buildworker.worker.health`) and this module stays free of I/O libraries.

`HealthChecks.run` runs every check with a deadline: a check that hangs (a database that
accepts a connection and never answers) is reported failed, "timed out after 3.0 s",
instead of hanging the probe, and is not started again while it is still running, so a
hung dependency cannot pile up threads. A check that raises is a failed check naming the
exception, never an error of the endpoint.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Check",
    "CheckResult",
    "HealthChecks",
    "HealthReport",
    "fail",
    "ok",
]

#: Seconds a check may take before it is reported failed.
DEFAULT_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str = ""


def ok(detail: str = "ok") -> CheckResult:
    return CheckResult(True, detail)


def fail(detail: str) -> CheckResult:
    return CheckResult(False, detail)


Check = Callable[[], CheckResult]


@dataclass(frozen=True)
class HealthReport:
    """The results of one run, in registration order."""

    checks: tuple[tuple[str, CheckResult], ...]

    @property
    def ok(self) -> bool:
        return all(result.ok for _, result in self.checks)

    @property
    def http_status(self) -> int:
        return 200 if self.ok else 503

    def failing(self) -> list[str]:
        return [name for name, result in self.checks if not result.ok]

    def body(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "failing",
            "checks": {
                name: {"ok": result.ok, "detail": result.detail} for name, result in self.checks
            },
        }

    def summary(self) -> str:
        """One line for ``STATUS=`` and logs: ``ready`` or ``not ready: broker (refused)``."""
        if self.ok:
            return "ready"
        parts = [f"{name} ({dict(self.checks)[name].detail})" for name in self.failing()]
        return "not ready: " + ", ".join(parts)


def _run_one(check: Check) -> CheckResult:
    try:
        result = check()
    except Exception as exc:  # a check that raises is a failed check, named in the report
        return fail(f"{type(exc).__name__}: {exc}")
    if not isinstance(result, CheckResult):
        return fail(f"check returned {type(result).__name__}, not a CheckResult")
    return result


class HealthChecks:
    """An ordered registry of named checks.

    Parameters:
        timeout_s: how long one run waits for each check, in seconds.
    """

    def __init__(self, checks: Iterable[tuple[str, Check]] = (), *, timeout_s: float = 0) -> None:
        self._checks: dict[str, Check] = {}
        self._timeout_s = timeout_s or DEFAULT_TIMEOUT_S
        self._inflight: dict[str, Future[CheckResult]] = {}
        self._lock = threading.Lock()
        for name, check in checks:
            self.add(name, check)

    def add(self, name: str, check: Check) -> HealthChecks:
        if name in self._checks:
            raise ValueError(f"health check {name!r} is registered twice")
        self._checks[name] = check
        return self

    @property
    def names(self) -> list[str]:
        return list(self._checks)

    def _submit(self, name: str, check: Check) -> Future[CheckResult]:
        with self._lock:
            running = self._inflight.get(name)
            if running is not None and not running.done():
                return running  # still hung from an earlier run: wait on that one
            future: Future[CheckResult] = Future()
            self._inflight[name] = future

        def target() -> None:
            future.set_result(_run_one(check))

        # A daemon thread per check and run (a few a second at most): unlike a pool's
        # threads, one stuck in a hung check never holds up the process's exit.
        threading.Thread(target=target, name=f"health-{name}", daemon=True).start()
        return future

    def run(self) -> HealthReport:
        """Run every check at once and wait for each up to the timeout."""
        futures = [(name, self._submit(name, check)) for name, check in self._checks.items()]
        deadline = time.monotonic() + self._timeout_s
        results = []
        for name, future in futures:
            try:
                result = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                result = fail(f"timed out after {self._timeout_s:g} s")
            results.append((name, result))
        return HealthReport(tuple(results))
