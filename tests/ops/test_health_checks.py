"""The check registry: report shape, 200/503, failures named, hung checks bounded."""

from __future__ import annotations

import threading

import pytest

from buildworker.health import CheckResult, HealthChecks, fail, ok


def test_all_passing_is_200_with_every_check_named() -> None:
    checks = HealthChecks([("database", lambda: ok("answered in 2 ms")), ("store", ok)])
    report = checks.run()
    assert report.http_status == 200
    assert report.body() == {
        "status": "ok",
        "checks": {
            "database": {"ok": True, "detail": "answered in 2 ms"},
            "store": {"ok": True, "detail": "ok"},
        },
    }
    assert report.summary() == "ready"


def test_one_failing_check_is_503_and_named_in_the_summary() -> None:
    checks = HealthChecks([("database", ok), ("broker", lambda: fail("connection refused"))])
    report = checks.run()
    assert report.http_status == 503
    assert report.body()["status"] == "failing"
    assert report.body()["checks"]["broker"] == {"ok": False, "detail": "connection refused"}
    assert report.failing() == ["broker"]
    assert report.summary() == "not ready: broker (connection refused)"


def test_a_check_that_raises_is_a_failed_check_naming_the_exception() -> None:
    def boom() -> CheckResult:
        raise ConnectionError("libvirt socket gone")

    report = HealthChecks([("libvirt", boom)]).run()
    assert report.body()["checks"]["libvirt"] == {
        "ok": False,
        "detail": "ConnectionError: libvirt socket gone",
    }


def test_a_check_returning_something_else_fails() -> None:
    report = HealthChecks([("odd", lambda: True)]).run()  # type: ignore[list-item,return-value]
    assert not report.ok
    assert "not a CheckResult" in report.body()["checks"]["odd"]["detail"]


def test_a_hung_check_times_out_and_is_not_started_again_while_hung() -> None:
    release = threading.Event()
    calls = []

    def hangs() -> CheckResult:
        calls.append(1)
        release.wait(30)
        return ok()

    checks = HealthChecks([("database", hangs), ("store", ok)], timeout_s=0.2)
    try:
        for _ in range(3):
            report = checks.run()
            assert report.body()["checks"]["database"] == {
                "ok": False,
                "detail": "timed out after 0.2 s",
            }
            assert report.body()["checks"]["store"]["ok"] is True
        assert len(calls) == 1
    finally:
        release.set()
    # once it answers, the next run starts it afresh
    threading.Event().wait(0.1)
    assert checks.run().ok
    assert len(calls) == 2


def test_a_name_registered_twice_is_refused() -> None:
    checks = HealthChecks([("broker", ok)])
    with pytest.raises(ValueError, match="'broker' is registered twice"):
        checks.add("broker", ok)
