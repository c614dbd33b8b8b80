"""systemd's notify protocol, and a watchdog pinger gated on the main loop's health.

The protocol is one datagram of ``KEY=VALUE`` lines to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace); see sd_notify(3).
Written here rather than taken from a library: it is this small, and the small libraries on
PyPI for it are unmaintained.

A `Notifier` made from an environment without ``NOTIFY_SOCKET`` is inert: every call is a
no-op, so the daemons call it unconditionally. ``WATCHDOG_USEC`` (with ``WATCHDOG_PID``, when
it names this process) gives the watchdog interval; a watchdog asked for without a socket to
ping is a configuration error, said at start-up rather than discovered as a kill later.

`WatchdogPinger` sends ``WATCHDOG=1`` at half the interval, but only while a health predicate
says the main loop is healthy (Buildkite gates its pings on heartbeats the same way): a
wedged loop stops the pings, and systemd restarts the service after ``WatchdogSec=``.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Mapping, MutableMapping

import structlog

__all__ = ["Notifier", "NotifyError", "WatchdogPinger"]

_log = structlog.get_logger(__name__)

#: Variables systemd sets for the main process; removed after reading so that children
#: (uvicorn reloaders, qemu-img, ssh) do not notify in our name.
_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class NotifyError(RuntimeError):
    """The notify environment is unusable (names the variable), or a send failed."""


def _address(value: str) -> str:
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    raise NotifyError(f"NOTIFY_SOCKET: expected an absolute path or @name, got {value!r}")


class Notifier:
    """Sends notify messages to ``address`` (None: inert).

    Parameters:
        address: the socket as in ``$NOTIFY_SOCKET`` (``/run/...`` or ``@name``), or None.
        watchdog_s: the watchdog interval in seconds systemd expects pings within, or None.
    """

    def __init__(self, address: str | None, *, watchdog_s: float | None = None) -> None:
        self._address = _address(address) if address else None
        self.watchdog_s = watchdog_s
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        if watchdog_s is not None and self._address is None:
            raise NotifyError("WATCHDOG_USEC is set but NOTIFY_SOCKET is not: nowhere to ping")

    @classmethod
    def from_environ(
        cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = True
    ) -> Notifier:
        """The notifier systemd set up for this process (inert outside systemd).

        ``WATCHDOG_USEC`` counts only when ``WATCHDOG_PID`` is absent or is our pid.
        With ``unset``, the variables are removed from ``environ`` (default ``os.environ``).

        Raises:
            NotifyError: a malformed variable, or a watchdog without a socket.
        """
        env: MutableMapping[str, str] = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        watchdog_s = _watchdog_interval(env)
        if unset:
            for name in _VARIABLES:
                env.pop(name, None)
        return cls(address, watchdog_s=watchdog_s)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, **fields: str | int) -> bool:
        """Send one message of ``KEY=VALUE`` lines; False when inert.

        Raises:
            NotifyError: the socket refused the datagram (systemd gone, wrong path).
        """
        if self._address is None:
            return False
        lines = []
        for key, value in fields.items():
            text = str(value)
            if "\n" in text:  # one field per line: a newline would start a bogus field
                text = text.replace("\n", " ")
            lines.append(f"{key}={text}")
        data = "\n".join(lines).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.sendto(data, self._address)
            except OSError as exc:
                raise NotifyError(f"NOTIFY_SOCKET: cannot send: {exc.strerror or exc}") from exc
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send(READY=1, **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def stopping(self, status: str | None = None) -> bool:
        return self.send(STOPPING=1, **({"STATUS": status} if status else {}))

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        if not pid.isdigit():
            raise NotifyError(f"WATCHDOG_PID: expected a process id, got {pid!r}")
        if int(pid) != os.getpid():
            return None  # meant for another process (we were forked or exec'd by it)
    if not usec.isdigit() or int(usec) == 0:
        raise NotifyError(f"WATCHDOG_USEC: expected a positive number of µs, got {usec!r}")
    return int(usec) / 1_000_000


class WatchdogPinger:
    """Pings the watchdog every ``interval_s`` (default: half of the notifier's watchdog
    interval) while ``healthy()`` is true, in a daemon thread.

    When ``healthy()`` turns false (or raises), pings stop and that is logged once; they
    resume, logged, when it is true again. Inert when the notifier has no watchdog.
    """

    thread_name = "sd-watchdog"

    def __init__(
        self,
        notifier: Notifier,
        healthy: Callable[[], bool],
        *,
        interval_s: float | None = None,
    ) -> None:
        self._notifier = notifier
        self._healthy = healthy
        if interval_s is None and notifier.watchdog_s is not None:
            interval_s = notifier.watchdog_s / 2
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: pings sent since start (for tests and logs)
        self.pings = 0

    def start(self) -> WatchdogPinger:
        if self.interval_s is None or not self._notifier.enabled:
            return self
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _is_healthy(self) -> bool:
        try:
            return bool(self._healthy())
        except Exception:  # the pinger thread's edge: a broken predicate withholds pings
            _log.exception("watchdog.health_check_error")
            return False

    def _run(self) -> None:
        assert self.interval_s is not None
        was_healthy: bool | None = None  # not yet known: starting up is not "withheld"
        while not self._stop.is_set():
            healthy = self._is_healthy()
            if was_healthy is None:
                was_healthy = healthy
            elif healthy != was_healthy:
                event = "watchdog.resumed" if healthy else "watchdog.withheld"
                (_log.info if healthy else _log.warning)(event)
                was_healthy = healthy
            if healthy:
                try:
                    self._notifier.watchdog()
                    self.pings += 1
                except NotifyError as exc:
                    _log.warning("watchdog.ping_failed", error=str(exc))
            self._stop.wait(self.interval_s)
