"""The exit statuses are an interface (scripts, CI, systemd, ssh read them): pinned here."""

from __future__ import annotations

from buildworker import exitcodes


def test_every_exit_status_keeps_its_number() -> None:
    assert {name: getattr(exitcodes, name) for name in exitcodes.__all__} == {
        "EXIT_OK": 0,
        "EXIT_FAILURE": 1,
        "EXIT_USAGE": 2,
        "EXIT_INTERRUPTED": 130,
        "EXIT_VALID": 0,
        "EXIT_INVALID": 1,
        "EXIT_UNREADABLE": 2,
        "EXIT_SUCCESS": 0,
        "EXIT_BUILD_FAILED": 1,
        "EXIT_SETUP_ERROR": 2,
        "EXIT_REFUSED": 1,
        "EXIT_UNAUTHORIZED": 3,
        "EXIT_KILLED": 4,
        "EXIT_SHELL_REFUSED": 1,
        "EXIT_SHELL_UNAVAILABLE": 1,
        "EXIT_SHELL_LOST": 255,
    }
