"""The one mapping from guest-layer errors to build outcomes (`context.guest_outcome`)."""

from __future__ import annotations

import pytest

from buildworker.guest.errors import (
    CommandCancelled,
    CommandTimeout,
    FileTooLarge,
    GuestError,
    GuestFileError,
    GuestLayerError,
    HostKeyMismatch,
    SettleTimeout,
    UnknownImage,
    VMError,
)
from buildworker.worker.context import CancelToken, guest_outcome
from buildworker.worker.errors import BuildFailed, Cancelled, InfraError, SetupError


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (GuestError("connection lost while running 'make'"), InfraError),
        (VMError("domain vanished"), InfraError),
        (HostKeyMismatch("host key changed"), InfraError),
        (SettleTimeout("no banner"), InfraError),
        (GuestFileError("out/x: no such file"), BuildFailed),
        (FileTooLarge("out/x: larger than the limit"), BuildFailed),
        (UnknownImage("debian/nope"), SetupError),
        (CommandTimeout("timed out: 'sleep 600'"), Cancelled),
        (CommandCancelled("cancelled: 'sleep 600'"), Cancelled),
    ],
)
def test_each_guest_error_has_one_outcome(error: GuestLayerError, outcome: type) -> None:
    result = guest_outcome(error, "running a command", CancelToken(), remaining_s=600)
    assert type(result) is outcome
    if outcome is InfraError:
        assert str(result).startswith("lost the guest while running a command: ")


def test_a_command_timeout_is_the_jobs_timeout() -> None:
    result = guest_outcome(CommandTimeout("x"), "running a command", CancelToken(), 600)
    assert isinstance(result, Cancelled) and result.reason == "timeout"


@pytest.mark.parametrize("reason", ["cancelled", "timeout", "drain"])
@pytest.mark.parametrize(
    "error", [GuestError("channel closed"), GuestFileError("gone"), VMError("destroyed")]
)
def test_any_guest_error_during_our_own_stop_is_that_stop(
    error: GuestLayerError, reason: str
) -> None:
    # e.g. an upload that fails because the cancel destroyed the VM under it
    cancel = CancelToken()
    cancel.cancel(reason)
    result = guest_outcome(error, "writing ~/.buildenv", cancel, remaining_s=600)
    assert isinstance(result, Cancelled) and result.reason == reason


def test_an_error_at_the_deadline_is_a_timeout_even_before_the_timer_fires() -> None:
    cancel = CancelToken()
    result = guest_outcome(GuestError("channel closed"), "running a command", cancel, 0.2)
    assert isinstance(result, Cancelled) and result.reason == "timeout"
    assert cancel.reason == "timeout"
