"""The notify protocol against a real AF_UNIX datagram socket, and the gated watchdog."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from ops_helpers import NotifyListener, wait_for

from buildworker.sdnotify import Notifier, NotifyError, WatchdogPinger


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    env: dict[str, str] = {}
    notifier = Notifier.from_environ(env)
    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.watchdog() is False
    assert notifier.watchdog_s is None


def test_ready_status_stopping_and_watchdog_arrive_as_datagrams(listener: NotifyListener) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": listener.address})
    assert notifier.ready("2/4 slots busy, broker connected")
    notifier.status("draining")
    notifier.watchdog()
    notifier.stopping()
    wait_for(lambda: len(listener.raw) == 4, 5, "four datagrams")
    assert listener.raw[0] == b"READY=1\nSTATUS=2/4 slots busy, broker connected"
    assert listener.messages[1:] == [{"STATUS": "draining"}, {"WATCHDOG": "1"}, {"STOPPING": "1"}]


def test_abstract_namespace_socket() -> None:
    listener = NotifyListener(abstract=True)
    try:
        assert listener.address.startswith("@")
        Notifier(listener.address).ready()
        wait_for(lambda: listener.messages == [{"READY": "1"}], 5, "READY=1")
    finally:
        listener.close()


def test_a_newline_in_a_status_cannot_start_another_field(listener: NotifyListener) -> None:
    Notifier(listener.address).status("broker down\nREADY=1")
    wait_for(lambda: listener.raw, 5, "a datagram")
    assert listener.messages == [{"STATUS": "broker down READY=1"}]


def test_variables_are_read_then_removed_from_the_environment(listener: NotifyListener) -> None:
    env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "30000000", "OTHER": "x"}
    notifier = Notifier.from_environ(env)
    assert notifier.watchdog_s == 30.0
    assert env == {"OTHER": "x"}


def test_watchdog_meant_for_another_pid_is_ignored(listener: NotifyListener) -> None:
    def env(pid: int) -> dict[str, str]:
        return {
            "NOTIFY_SOCKET": listener.address,
            "WATCHDOG_USEC": "1000000",
            "WATCHDOG_PID": str(pid),
        }

    assert Notifier.from_environ(env(os.getpid() + 1)).watchdog_s is None
    assert Notifier.from_environ(env(os.getpid())).watchdog_s == 1.0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WATCHDOG_USEC": "1000000"}, "WATCHDOG_USEC is set but NOTIFY_SOCKET is not"),
        ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "soon"}, "WATCHDOG_USEC: expected"),
        ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "0"}, "WATCHDOG_USEC: expected"),
        ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "me"}, "WATCHDOG_PID"),
        ({"NOTIFY_SOCKET": "relative/path"}, "NOTIFY_SOCKET: expected an absolute path"),
    ],
)
def test_a_bad_environment_is_an_error_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(NotifyError, match=message):
        Notifier.from_environ(dict(env))


def test_a_socket_nobody_listens_on_is_an_error(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "gone.sock"))
    with pytest.raises(NotifyError, match="NOTIFY_SOCKET: cannot send"):
        notifier.ready()


def test_pinger_pings_at_half_the_interval_only_while_healthy(listener: NotifyListener) -> None:
    # Given a 0.2 s watchdog and a main loop we can wedge
    notifier = Notifier(listener.address, watchdog_s=0.2)
    healthy = threading.Event()
    healthy.set()
    pinger = WatchdogPinger(notifier, healthy.is_set).start()
    assert pinger.interval_s == pytest.approx(0.1)
    try:
        wait_for(lambda: listener.count("WATCHDOG") >= 5, 10, "five pings")
        # When the loop is wedged, pings stop
        healthy.clear()
        threading.Event().wait(0.15)  # a ping already past the health check may still land
        before = listener.count("WATCHDOG")
        threading.Event().wait(1.0)
        assert listener.count("WATCHDOG") - before <= 1
        # And they resume when it is healthy again
        healthy.set()
        wait_for(lambda: listener.count("WATCHDOG") >= before + 3, 10, "pings again")
    finally:
        pinger.stop()


def test_a_health_predicate_that_raises_withholds_pings(listener: NotifyListener) -> None:
    def broken() -> bool:
        raise RuntimeError("main loop state unreadable")

    pinger = WatchdogPinger(Notifier(listener.address, watchdog_s=0.1), broken).start()
    try:
        threading.Event().wait(0.6)
        assert listener.count("WATCHDOG") == 0
    finally:
        pinger.stop()


def test_pinger_is_inert_without_a_watchdog(listener: NotifyListener) -> None:
    pinger = WatchdogPinger(Notifier(listener.address), lambda: True).start()
    threading.Event().wait(0.3)
    pinger.stop()
    assert pinger.interval_s is None and listener.raw == []
