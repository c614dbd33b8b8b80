"""One connection to the worker's control socket: its request, then a tail or a guest session.

Driven by :class:`buildworker.worker.control.ControlServer`, one thread per connection; see
that module for the protocol's purpose and the registry. The conversation:

1. the request (``buildworker.ssh.protocol``), then the API's answer on access
   (``control_access``): a refusal is shown as the API words it;
2. ``tail``: the job's feed, rendered, until the build ends;
3. ``connect``: the setup log while setup runs, then the banner, ``RAW``, and a session
   channel on the worker's own connection to the guest, relayed both ways (input, end of
   input, window changes in; output out) until the command exits, the user hangs up, or the
   job ends (the user sees the job's message).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import struct
from typing import TYPE_CHECKING, Any

import paramiko
import structlog

from buildworker.guest.errors import GuestLayerError
from buildworker.ssh import protocol as proto
from buildworker.ssh.texts import banner, ended_notice, not_on_this_host
from buildworker.worker.control_access import AccessRefused, JobAccess
from buildworker.worker.livefeed import TailRenderer

if TYPE_CHECKING:
    from buildworker.worker.control import ChannelOpener, ControlServer, JobHandle

__all__ = ["ENDED_STATUS", "REFUSED_STATUS", "Session"]

_log = structlog.get_logger(__name__)

#: How often waiting loops look at the client socket and the job, in seconds.
POLL_S = 0.2
#: Exit status sent when the session is ended by the job (cancel, deadline) or an error.
ENDED_STATUS = 255
#: Exit status of a refusal (not permitted, no such job, not on this host).
REFUSED_STATUS = 1
CHUNK = 32768


class _ClientGone(Exception):
    """The forced command hung up (the user's ssh ended)."""


class Session:
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
        if guest is None or not handle.add_session(self):
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
                handle.remove_session(self)
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
        except GuestLayerError as exc:  # the guest layer wraps paramiko's errors in its own
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
                        if handle.ended:  # the VM went because the job ended: say why
                            self._say(handle.end_message or ended_notice(handle.job_id, "ended"))
                            return ENDED_STATUS
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
