"""The worker daemon's control socket: users' SSH sessions into the builds this host runs.

``buildworker ssh shell`` (sshd's forced command, running as the SSH user ``builds``) connects
to a Unix socket (``[worker] control-socket``; mode 0660, group of the SSH user, peer uid
checked with SO_PEERCRED; never a TCP port) and asks to ``connect`` to a job or ``tail`` it
(framing: ``buildworker.ssh.protocol``). The server asks the API whether that user may
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
import selectors
import socket
import struct
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import paramiko
import structlog

from buildworker.ssh import protocol as proto
from buildworker.ssh.texts import banner, ended_notice, not_on_this_host
from buildworker.worker.control_access import AccessRefused, Authorizer, JobAccess
from buildworker.worker.livefeed import DEFAULT_KEEP_BYTES, FeedingReporter, LiveFeed, TailRenderer

__all__ = ["ChannelOpener", "ControlServer", "JobHandle"]

_log = structlog.get_logger(__name__)

#: How often waiting loops look at the client socket and the job, in seconds.
POLL_S = 0.2
#: Exit status sent when the session is ended by the job (cancel, deadline) or an error.
ENDED_STATUS = 255
REFUSED_STATUS = 1
CHUNK = 32768


class ChannelOpener(Protocol):
    """The worker's connection to a guest (``buildworker.guest.ssh.GuestConnection``)."""

    def open_channel(self) -> paramiko.Channel: ...


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
        self._sessions: set[_Session] = set()
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

    def _add(self, session: _Session) -> bool:
        with self._lock:
            if self._ended.is_set():
                return False
            self._sessions.add(session)
            return True

    def _remove(self, session: _Session) -> None:
        with self._lock:
            self._sessions.discard(session)

    def end(self, status: str, message: str | None = None) -> None:
        """The build is over: close every session (showing ``message``), end the tails, and
        leave the registry. Idempotent; call it before the VM is destroyed."""
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
            _Session(self, conn).run()
        except Exception:
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


class _ClientGone(Exception):
    """The forced command hung up (the user's ssh ended)."""


class _Session:
    """One client connection: its request, then a tail or a relayed guest session."""

    def __init__(self, server: ControlServer, conn: socket.socket) -> None:
        self._server = server
        self._conn = conn
        self._decoder = proto.FrameDecoder()
        self._frames: list[proto.Frame] = []
        self._wake_r, self._wake_w = os.pipe()
        self._log = _log
        #: the latest terminal size the client reported before the guest session began
        self._window: tuple[int, int] | None = None

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    # --- the client socket -----------------------------------------------------------------

    def _send(self, kind: bytes, payload: bytes = b"") -> None:
        try:
            self._conn.sendall(proto.encode(kind, payload))
        except OSError as exc:
            raise _ClientGone() from exc

    def _say(self, text: str) -> None:
        self._send(proto.MESSAGE, text.encode())

    def _exit(self, status: int) -> None:
        self._send(proto.EXIT, struct.pack(">i", status))

    def _receive(self, timeout: float | None) -> list[proto.Frame]:
        """Frames that arrive within ``timeout``; raises _ClientGone at EOF."""
        if self._frames:
            frames, self._frames = self._frames, []
            return frames
        self._conn.settimeout(timeout)
        try:
            data = self._conn.recv(65536)
        except (TimeoutError, BlockingIOError):
            return []
        except OSError as exc:
            raise _ClientGone() from exc
        if not data:
            raise _ClientGone()
        return self._decoder.feed(data)

    def _request(self) -> dict[str, Any]:
        frames: list[proto.Frame] = []
        while not frames:
            frames = self._receive(30.0)
        self._frames = frames[1:]
        return proto.decode_request(frames[0])

    # --- the conversation ------------------------------------------------------------------

    def run(self) -> None:
        try:
            try:
                request = self._request()
            except (proto.ProtocolError, _ClientGone):
                return
            try:
                self._dispatch(request)
            except _ClientGone:
                self._log.info("control.client_gone")
        finally:
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _dispatch(self, request: dict[str, Any]) -> None:
        op, job_id, user = request.get("op"), request.get("job"), request.get("user")
        if op not in ("connect", "tail") or not isinstance(job_id, int) or not user:
            self._say("bad request")
            self._exit(REFUSED_STATUS)
            return
        self._log = _log.bind(job_id=job_id, user=str(user), op=op)
        try:
            access = self._server.authorizer.authorize(job_id, str(user))
        except AccessRefused as exc:
            self._say(str(exc))
            self._exit(REFUSED_STATUS)
            return
        handle = self._server.get(job_id)
        if handle is None or handle.ended:
            self._say(
                not_on_this_host(job_id, access.status, access.runner, self._server.worker_name)
            )
            self._exit(REFUSED_STATUS)
            return
        if op == "tail":
            self._tail(handle, until_setup=False)
            return
        self._connect(handle, access, str(user), request)

    def _tail(self, handle: JobHandle, *, until_setup: bool) -> bool:
        """Stream the feed; return True when it stopped because setup finished (connect)."""
        feed = handle.feed
        renderer = TailRenderer()
        cursor = feed.start_cursor()
        while True:
            read = feed.read(cursor, POLL_S)
            cursor = read.cursor
            out = b"".join(renderer.render(log, data) for log, data in read.events)
            if out:
                self._send(proto.OUTPUT, out)
            if read.ended or (until_setup and read.setup_finished):
                tail = renderer.finish()
                if tail:
                    self._send(proto.OUTPUT, tail)
                if read.ended:
                    self._say(handle.end_message or ended_notice(handle.job_id, read.status or ""))
                    self._exit(0 if not until_setup else ENDED_STATUS)
                    return False
                return True
            # Input is not for anyone yet; a hang-up ends the tail, a resize is kept.
            for frame in self._receive(0):
                if frame.kind == proto.WINDOW:
                    self._window = proto.decode_window(frame)

    def _connect(
        self, handle: JobHandle, access: JobAccess, user: str, request: dict[str, Any]
    ) -> None:
        if not handle.feed.setup_finished and not self._tail(handle, until_setup=True):
            return
        guest = handle.guest
        if guest is None or not handle._add(self):
            self._say(handle.end_message or ended_notice(handle.job_id, access.status))
            self._exit(ENDED_STATUS)
            return
        try:
            handle.on_session_start(user)
            self._log.info("control.session_started")
            try:
                self._send(
                    proto.OUTPUT,
                    banner(handle.job_id, access.status, access.url, handle.deadline()).encode(),
                )
                status = self._guest_session(handle, guest, request)
            finally:
                handle._remove(self)
                handle.on_session_end(user)
                self._log.info("control.session_ended")
        except _ClientGone:
            return
        self._exit(status)

    def _guest_session(
        self, handle: JobHandle, guest: ChannelOpener, request: dict[str, Any]
    ) -> int:
        pty = request.get("pty") if isinstance(request.get("pty"), dict) else None
        command = request.get("command")
        try:
            chan = guest.open_channel()
        except Exception as exc:
            self._log.warning("control.channel_failed", error=str(exc))
            self._say("The build environment cannot be reached (its VM may be shutting down).")
            return ENDED_STATUS
        try:
            if pty is not None:
                cols, rows = self._window or (
                    int(pty.get("cols") or 80),
                    int(pty.get("rows") or 24),
                )
                chan.get_pty(term=str(pty.get("term") or "xterm"), width=cols, height=rows)
            else:
                chan.set_combine_stderr(True)
            if isinstance(command, str) and command:
                chan.exec_command(command)
            else:
                chan.invoke_shell()
            chan.settimeout(POLL_S)
            self._send(proto.RAW)
            return self._relay(handle, chan, pty is not None)
        except paramiko.SSHException as exc:
            self._log.warning("control.guest_session_failed", error=str(exc))
            self._say(f"The build environment refused the session: {exc}")
            return ENDED_STATUS
        finally:
            chan.close()

    def _relay(self, handle: JobHandle, chan: paramiko.Channel, pty: bool) -> int:
        selector = selectors.DefaultSelector()
        selector.register(self._conn, selectors.EVENT_READ, "client")
        selector.register(chan, selectors.EVENT_READ, "guest")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            for frame in self._frames:
                self._from_client(chan, frame, pty)
            self._frames = []
            while True:
                if handle.ended:
                    self._say(handle.end_message or ended_notice(handle.job_id, "ended"))
                    return ENDED_STATUS
                for key, _ in selector.select(timeout=1.0):
                    if key.data == "client":
                        for frame in self._receive(0):
                            self._from_client(chan, frame, pty)
                    elif key.data == "guest" and not self._from_guest(chan):
                        chan.status_event.wait(5.0)
                        return chan.exit_status if chan.exit_status_ready() else ENDED_STATUS
                    elif key.data == "wake":
                        os.read(self._wake_r, 64)
        finally:
            selector.close()

    def _from_client(self, chan: paramiko.Channel, frame: proto.Frame, pty: bool) -> None:
        if frame.kind == proto.INPUT:
            chan.sendall(frame.payload)
        elif frame.kind == proto.EOF:
            chan.shutdown_write()
        elif frame.kind == proto.WINDOW and pty:
            cols, rows = proto.decode_window(frame)
            chan.resize_pty(width=cols, height=rows)

    def _from_guest(self, chan: paramiko.Channel) -> bool:
        """Forward what the guest sent; False once its output has ended."""
        if chan.closed:
            return False
        try:
            data = chan.recv(CHUNK)
        except TimeoutError:  # woken without data: nothing to do yet
            return True
        if not data:
            return False
        self._send(proto.OUTPUT, data)
        return True
