"""A background service: ``run()`` in a daemon thread until ``stop()``.

The API tier runs three (outbox publisher, lease reaper, trigger sender); each checks
``self._stop`` in its loop and sleeps with ``self._stop.wait(...)`` so a stop is prompt.
"""

from __future__ import annotations

import threading


class ServiceThread:
    #: The thread's name, as shown in tracebacks and py-spy.
    thread_name = "service"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=self.thread_name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Started and still running its loop (a liveness check for /healthz)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the loop to end and wait up to ``timeout_s`` for it."""
        self._stop.set()
        self._interrupt()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _interrupt(self) -> None:
        """Wake a loop that waits on something besides ``_stop`` (override if it does)."""

    def run(self) -> None:
        raise NotImplementedError
