"""The worker daemon's control socket: users' SSH sessions into the builds this host runs.

``buildworker ssh shell`` (sshd's forced command, running as the SSH user ``builds``) connects
to a Unix socket (``[worker] control-socket``; mode 0660, group of the SSH user, peer uid
checked with SO_PEERCRED; never a TCP port) and asks to ``connect`` to a job or ``tail`` it
(framing: ``buildworker.ssh.protocol``; one thread per connection runs a
:class:`~buildworker.worker.control_session.Session`). The server asks the API whether that user may
(:mod:`buildworker.worker.control_access`), finds the job in its registry, and relays:

- ``connect``: while the job's setup steps still run it shows the setup log; then prints
  builds.sr.ht's banner, opens a session channel on the worker's own paramiko connection to
  the guest (so the guest stays reachable only through the worker), with a PTY of the user's
  size when they have one (window changes follow), and relays a shell or the given command
  as ``build`` until it exits, the user hangs up, or the job ends (the user sees why).
- ``tail``: the job's live output (setup log as is, task lines prefixed ``[task] ``) until
  the build ends (from :class:`~buildworker.worker.livefeed.LiveFeed`).

The registry: what the daemon wiring does, per job (a few lines)::

    handle = control.register(job_id, deadline=lambda: wall_clock_deadline,
                              on_session_start=hold.session_started,   # standby: extend
                              on_session_end=hold.session_ended)       # last logout: end
    reporter = handle.tee(reporter)      # before the LogStreamer is made: feeds `tail`
    ...boot, settle...
    handle.attach_guest(conn)            # the GuestConnection the steps use
    handle.finish_setup()                # when the first task starts (connect stops tailing)
    ...tasks, hold (standby / shell: true; ``handle.sessions`` counts live sessions)...
    handle.end(status, message)          # before teardown: sessions see ``message`` and close,
                                         # tails print the end; the job leaves the registry

``deadline`` returns the unix time the VM will be destroyed at the latest; it is read after
``on_session_start`` so a connect that extends standby shows the new deadline. The hooks run
in the session's thread and must not block.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import paramiko
import structlog

from buildworker.worker.control_access import Authorizer
from buildworker.worker.control_session import Session
from buildworker.worker.livefeed import DEFAULT_KEEP_BYTES, FeedingReporter, LiveFeed

__all__ = ["ChannelOpener", "ControlServer", "JobHandle", "SessionLike"]

_log = structlog.get_logger(__name__)

#: How often the accept loop looks at the stop flag, in seconds.
POLL_S = 0.2


class ChannelOpener(Protocol):
    """The worker's connection to a guest (``buildworker.guest.ssh.GuestConnection``)."""

    def open_channel(self) -> paramiko.Channel: ...


class SessionLike(Protocol):
    """What a handle needs of a live session: a way to make it look at the job again."""

    def wake(self) -> None: ...


def _noop(_user: str) -> None:
    return None


class JobHandle:
    """One job in the registry. Made by :meth:`ControlServer.register`."""

    def __init__(
        self,
        server: ControlServer,
        job_id: int,
        *,
        deadline: Callable[[], float],
        on_session_start: Callable[[str], None],
        on_session_end: Callable[[str], None],
        keep_bytes: int,
    ) -> None:
        self._server = server
        self.job_id = job_id
        self.deadline = deadline
        self.on_session_start = on_session_start
        self.on_session_end = on_session_end
        self.feed = LiveFeed(keep_bytes)
        self._guest: ChannelOpener | None = None
        self._lock = threading.Lock()
        self._sessions: set[SessionLike] = set()
        self._ended = threading.Event()
        self.end_message: str | None = None

    def tee(self, reporter: Any) -> FeedingReporter:
        """``reporter`` with its log chunks also fed to ``tail`` and ``connect``."""
        return FeedingReporter(reporter, self.feed)

    def attach_guest(self, guest: ChannelOpener) -> None:
        with self._lock:
            self._guest = guest

    @property
    def guest(self) -> ChannelOpener | None:
        with self._lock:
            return self._guest

    def finish_setup(self) -> None:
        self.feed.finish_setup()

    @property
    def sessions(self) -> int:
        """Interactive sessions (``connect``) open right now."""
        with self._lock:
            return len(self._sessions)

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def add_session(self, session: SessionLike) -> bool:
        """Count a session in (False: the job has ended, it may not start)."""
        with self._lock:
            if self._ended.is_set():
                return False
            self._sessions.add(session)
            return True

    def remove_session(self, session: SessionLike) -> None:
        with self._lock:
            self._sessions.discard(session)

    def end(self, status: str, message: str | None = None, *, wait_s: float = 0.0) -> None:
        """The build is over: close every session (showing ``message``), end the tails, and
        leave the registry. Idempotent; call it before the VM is destroyed, with ``wait_s``
        to give open sessions that long to show the message and leave first."""
        with self._lock:
            if self._ended.is_set():
                return
            self.end_message = message
            self._ended.set()
            sessions = list(self._sessions)
        self.feed.end(status)
        for session in sessions:
            session.wake()
        self._server._forget(self)
        give_up = time.monotonic() + wait_s
        while sessions and self.sessions and time.monotonic() < give_up:
            time.sleep(0.05)


class ControlServer:
    """Serves the control socket. ``start`` binds it; ``close`` ends everything.

    Parameters:
        path: the socket file (``[worker] control-socket``); its directory is made if missing.
        authorizer: asks the API who may connect (``ApiAuthorizer``).
        worker_name: this host's ``[worker] name`` (to tell users where their job runs).
        allowed_uids: peers admitted (SO_PEERCRED); the SSH user's uid, and root's.
        group: gid the socket file is given (the SSH user's group); None keeps ours.
        mode: the socket file's permissions.
    """

    def __init__(
        self,
        path: Path,
        authorizer: Authorizer,
        *,
        worker_name: str,
        allowed_uids: frozenset[int],
        group: int | None = None,
        mode: int = 0o660,
        keep_bytes: int = DEFAULT_KEEP_BYTES,
    ) -> None:
        self.path = Path(path)
        self.authorizer = authorizer
        self.worker_name = worker_name
        self.allowed_uids = allowed_uids
        self._group = group
        self._mode = mode
        self._keep = keep_bytes
        self._jobs: dict[int, JobHandle] = {}
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._workers: set[threading.Thread] = set()

    # --- the registry --------------------------------------------------------------------

    def register(
        self,
        job_id: int,
        *,
        deadline: Callable[[], float],
        on_session_start: Callable[[str], None] = _noop,
        on_session_end: Callable[[str], None] = _noop,
    ) -> JobHandle:
        """Put a job this worker runs in the registry. Raises ValueError if it is there."""
        handle = JobHandle(
            self,
            job_id,
            deadline=deadline,
            on_session_start=on_session_start,
            on_session_end=on_session_end,
            keep_bytes=self._keep,
        )
        with self._lock:
            if job_id in self._jobs:
                raise ValueError(f"job {job_id} is registered already")
            self._jobs[job_id] = handle
        return handle

    def get(self, job_id: int) -> JobHandle | None:
        with self._lock:
            return self._jobs.get(job_id)

    def _forget(self, handle: JobHandle) -> None:
        with self._lock:
            if self._jobs.get(handle.job_id) is handle:
                del self._jobs[handle.job_id]

    # --- the socket ----------------------------------------------------------------------

    def start(self) -> ControlServer:
        """Bind the socket with its final permissions, then serve it in a thread.

        The socket is bound in a private directory, given its mode and group there, and
        renamed into place, so it is never reachable with looser permissions."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        if self.path.is_socket():
            self.path.unlink()
        elif self.path.exists():
            raise OSError(f"{self.path}: exists and is not a socket")
        private = Path(tempfile.mkdtemp(prefix=".control-", dir=self.path.parent))
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            staging = private / "sock"
            listener.bind(str(staging))
            os.chmod(staging, self._mode)
            if self._group is not None:
                os.chown(staging, -1, self._group)
            os.rename(staging, self.path)
        except BaseException:
            listener.close()
            raise
        finally:
            with contextlib.suppress(OSError):
                private.rmdir()
        listener.listen(16)
        listener.settimeout(POLL_S)
        self._listener = listener
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()
        _log.info("control.listening", path=str(self.path))
        return self

    def _serve(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                raise
            thread = threading.Thread(
                target=self._handle, args=(conn,), name="control-session", daemon=True
            )
            with self._lock:
                self._workers.add(thread)
            thread.start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            uid = _peer_uid(conn)
            if uid not in self.allowed_uids:
                _log.warning("control.peer_refused", uid=uid)
                return
            Session(self, conn).run()
        except Exception:  # the session thread's edge: one user's session never takes the server
            _log.exception("control.session_crashed")
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            with self._lock:
                self._workers.discard(threading.current_thread())

    def close(self, message: str = "The build worker is shutting down.") -> None:
        """End every registered job's sessions, stop serving, remove the socket file."""
        with self._lock:
            handles = list(self._jobs.values())
        for handle in handles:
            handle.end("stopped", message)
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with self._lock:
            workers = list(self._workers)
        for thread in workers:
            thread.join(timeout=5)


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)
