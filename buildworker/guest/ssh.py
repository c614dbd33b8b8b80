"""The SSH layer: one paramiko connection per guest, host key pinned to the image's.

A login costs ~1 s under TCG (the key exchange is emulated, MACHINE-NOTES.md), so a guest
gets one transport for its whole life and every command is a channel on it. Settling probes
the forwarded port cheaply (50 ms doubling to 1 s) and starts the key exchange on the very
connection that first shows an SSH banner. No paramiko or socket exception leaves this
module: they become ``GuestError`` subclasses (see ``errors.py``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import secrets
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

import paramiko
import structlog

from buildworker.guest.errors import (
    CommandCancelled,
    CommandTimeout,
    FileTooLarge,
    GuestError,
    GuestFileError,
    HostKeyMismatch,
    SettleTimeout,
)
from buildworker.guest.primed import (
    PREAMBLE_READY,
    eligible_exec,
    eligible_pty,
    exec_header,
    launchers,
    parse_preamble_status,
)
from buildworker.guest.settle import BANNER_PREFIX, probe_delays

__all__ = [
    "GuestConnection",
    "connect_guest",
    "fingerprint_sha256",
    "guest_path_expr",
    "load_private_key",
    "map_paramiko_errors",
    "wait_for_banner",
]

#: How long a connected probe waits for the banner before reconnecting, until the guest has
#: once answered with a reset. While the guest's network is not up, QEMU holds our
#: connection open and retransmits its SYN only every few seconds, so a fresh connection is
#: the quicker check.
BANNER_WAIT_S = 2.0
#: Once the guest has reset a probe, its network is up: a connection it does not reset was
#: accepted by sshd, which may need several seconds for its banner on a busy host.
ACCEPTED_BANNER_WAIT_S = 20.0
#: Poll interval of command loops (cancel and deadline checks); output is not delayed by it.
POLL_S = 0.1
CHUNK = 32768

log = structlog.get_logger()


class StopSignal(Protocol):
    """What the guest layer's waits observe to stop early: a `threading.Event`, or
    `AnyStop` over several."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class AnyStop:
    """Set when any of ``events`` is (a VM destroyed, or the build cancelled): one thing
    for a wait to watch, without a thread per wait."""

    #: how often `wait` looks at the events; a stop is seen within this
    POLL_S = 0.05

    def __init__(self, *events: StopSignal) -> None:
        self._events = events

    def is_set(self) -> bool:
        return any(event.is_set() for event in self._events)

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = self.POLL_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return False
            self._events[0].wait(min(self.POLL_S, left))
        return True


@contextlib.contextmanager
def map_paramiko_errors(what: str) -> Iterator[None]:
    """Translate paramiko/socket failures into GuestError, naming what was being done."""
    try:
        yield
    except (GuestError, FileTooLarge):
        raise
    except paramiko.AuthenticationException as exc:
        raise GuestError(f"{what}: SSH authentication failed: {exc}") from exc
    except paramiko.SSHException as exc:
        raise GuestError(f"{what}: SSH error: {exc}") from exc
    except (OSError, EOFError) as exc:
        raise GuestError(f"{what}: connection failed: {exc}") from exc


def fingerprint_sha256(key: paramiko.PKey) -> str:
    """``SHA256:<base64, unpadded>``, the format of ``ssh-keygen -l -E sha256``."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def load_private_key(path: Path) -> paramiko.PKey:
    """The worker's private key (``[vm] ssh-key``); raises GuestError naming the file."""
    try:
        return paramiko.PKey.from_path(str(path))
    except (OSError, paramiko.SSHException, ValueError) as exc:
        raise GuestError(f"vm.ssh-key: cannot load {path}: {exc}") from exc


def guest_path_expr(path: str) -> str:
    """A shell word for a guest path: ``~/x`` → ``"$HOME"/'x'``, everything else quoted.

    Relative paths are relative to the login directory (the build user's home)."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def wait_for_banner(
    host: str,
    port: int,
    *,
    deadline: float,
    cancel: StopSignal | None = None,
) -> tuple[socket.socket, int]:
    """A connected socket whose peer has started sending an SSH banner (left unread).

    Returns (socket, number of probes). Raises SettleTimeout at ``deadline`` (monotonic),
    CommandCancelled if ``cancel`` is set.
    """
    probes = 0
    network_up = False
    for delay in probe_delays():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        probes += 1
        sock: socket.socket | None = None
        try:
            sock = socket.create_connection((host, port), timeout=min(1.0, remaining))
            wait_s = ACCEPTED_BANNER_WAIT_S if network_up else BANNER_WAIT_S
            sock.settimeout(min(wait_s, max(0.05, deadline - time.monotonic())))
            peeked = b""
            # Peek (not read): paramiko reads the banner itself on this same connection.
            while len(peeked) < len(BANNER_PREFIX):
                peeked = sock.recv(len(BANNER_PREFIX), socket.MSG_PEEK)
                if not peeked:
                    network_up = True  # the guest reset it: up, but nothing listens yet
                    break
                if not BANNER_PREFIX.startswith(peeked[: len(BANNER_PREFIX)]):
                    break
                if len(peeked) < len(BANNER_PREFIX):
                    time.sleep(0.01)
            if peeked.startswith(BANNER_PREFIX):
                sock.settimeout(None)
                log.debug("guest.probe", port=port, probe=probes, result="banner")
                return sock, probes
            log.debug(
                "guest.probe", port=port, probe=probes, result="reset" if not peeked else "junk"
            )
        except ConnectionResetError:
            network_up = True
            log.debug("guest.probe", port=port, probe=probes, result="reset")
        except OSError as exc:
            # refused or timed out: the guest is not there yet
            log.debug("guest.probe", port=port, probe=probes, result=type(exc).__name__)
        if sock is not None:
            sock.close()
        wait = min(delay, max(0.0, deadline - time.monotonic()))
        if cancel is not None:
            if cancel.wait(wait):
                raise CommandCancelled("cancelled while waiting for the guest's SSH")
        else:
            time.sleep(wait)
    raise SettleTimeout(f"guest SSH on {host}:{port} did not answer ({probes} probes)")


def _alive(chan: paramiko.Channel) -> bool:
    """A primed launcher still waiting: open, and its shell has not exited."""
    return not chan.closed and not chan.exit_status_ready()


def _feed(chan: paramiko.Channel, data: bytes, eof: bool = True) -> None:
    """Send ``data`` to a command's stdin, then end of file unless not ``eof`` (a thread of
    `run`). A channel that closes first (the command ended, the build stopped) ends it
    quietly: `run` says what happened."""
    view = memoryview(data)
    sent = 0
    try:
        while sent < len(view):
            if chan.closed:
                return
            try:
                sent += chan.send(view[sent : sent + CHUNK].tobytes())
            except TimeoutError:  # the channel's POLL_S timeout: its window is full
                continue
        if eof:
            chan.shutdown_write()
    except (OSError, EOFError, paramiko.SSHException):
        return


class GuestConnection:
    """One authenticated SSH transport to a guest; commands are channels on it.

    Thread-safe for concurrent ``run``/``upload``/``download`` calls (paramiko multiplexes
    channels); ``close`` ends them all.
    """

    def __init__(self, transport: paramiko.Transport, *, description: str = "guest"):
        self._transport = transport
        self._description = description
        self._primed_lock = threading.Lock()
        self._priming: threading.Thread | None = None
        self._exec_slot: paramiko.Channel | None = None
        #: set once the exec launcher is open (or priming gave up)
        self._exec_opened = threading.Event()
        #: the exec launcher was primed with a preamble not yet run
        self._preamble = False
        self._pty_slot: tuple[paramiko.Channel, paramiko.Channel] | None = None
        #: Commands that ran on a primed launcher (diagnostics and tests).
        self.primed_runs = 0

    @classmethod
    def open(
        cls,
        sock: socket.socket,
        *,
        user: str,
        key: paramiko.PKey,
        fingerprint: str | None,
        timeout: float = 30.0,
        description: str = "guest",
    ) -> GuestConnection:
        """Key exchange, host key check, public-key login on an already connected socket.

        Raises HostKeyMismatch when the guest's key is not ``fingerprint`` (or there is no
        fingerprint to check against), GuestError for any other failure.
        """
        transport = paramiko.Transport(sock)
        try:
            with map_paramiko_errors(f"{description}: SSH handshake"):
                transport.banner_timeout = timeout
                transport.handshake_timeout = timeout
                transport.start_client(timeout=timeout)
                presented = fingerprint_sha256(transport.get_remote_server_key())
                if fingerprint is None:
                    raise HostKeyMismatch(
                        f"{description}: the image records no host key fingerprint; "
                        "refusing an unverified guest (rebuild the image with genimg)"
                    )
                if presented != fingerprint:
                    raise HostKeyMismatch(
                        f"{description}: host key {presented} is not the image's {fingerprint}"
                    )
                transport.auth_publickey(user, key)
                transport.set_keepalive(15)
        except BaseException:
            transport.close()
            raise
        return cls(transport, description=description)

    @property
    def active(self) -> bool:
        return self._transport.is_active()

    def _session(self) -> paramiko.Channel:
        if not self._transport.is_active():
            raise GuestError(f"{self._description}: the SSH connection is closed")
        return self._transport.open_session(timeout=30.0)

    # --- primed channels (primed.py) ---------------------------------------------------

    def prime_soon(self, preamble: str = "") -> None:
        """Open the primed launchers in the background; the next ``run`` of each kind waits
        for them (a command started meanwhile would only compete with them for the guest).
        ``preamble``: what the exec launcher runs first (``run_preamble``)."""
        with self._primed_lock:
            if self._priming is not None:
                return
            self._preamble = bool(preamble)
            self._priming = threading.Thread(
                target=self._prime, args=(preamble,), name="guest-prime", daemon=True
            )
            self._priming.start()

    def _prime(self, preamble: str) -> None:
        fifo = f"/tmp/.buildworker-run-{secrets.token_hex(8)}"
        exec_launcher, pty_launcher, trigger = launchers(fifo, preamble)
        opened: list[paramiko.Channel] = []
        try:
            with map_paramiko_errors(f"{self._description}: priming"):
                # The exec launcher first, and published at once: a preamble waits for it.
                ex = self._session()
                try:
                    ex.set_combine_stderr(True)
                    ex.exec_command(exec_launcher)
                except BaseException:
                    ex.close()
                    raise
                with self._primed_lock:
                    self._exec_slot = ex
                self._exec_opened.set()
                trig = self._session()
                opened.append(trig)
                trig.set_combine_stderr(True)
                trig.exec_command(trigger)
                tty = self._session()
                opened.append(tty)
                tty.get_pty(term="xterm", width=160, height=48)
                tty.exec_command(pty_launcher)
        except (GuestError, CommandTimeout) as exc:
            # Commands then take fresh channels, as without priming: slower, not wrong.
            log.info("guest.prime_failed", guest=self._description, error=str(exc))
            for chan in opened:
                chan.close()
            return
        finally:
            self._exec_opened.set()
        with self._primed_lock:
            self._pty_slot = (tty, trig)

    def run_preamble(
        self, line: Callable[[], str], *, timeout: float, cancel: StopSignal | None = None
    ) -> int | None:
        """Send ``line()`` (made just before it is sent) to the primed exec launcher's
        preamble (``prime_soon(preamble)``) and return the preamble's exit status; the
        launcher then serves the next no-PTY command as usual. None: no such launcher (not
        primed with a preamble, priming failed, or the preamble already ran).

        Raises CommandTimeout after ``timeout`` seconds or CommandCancelled (either way the
        launcher is closed: the next command takes a fresh channel), GuestError."""
        deadline = time.monotonic() + timeout
        with self._primed_lock:
            if self._priming is None or not self._preamble:
                return None
            self._preamble = False  # once
        while not self._exec_opened.wait(POLL_S):
            self._check(cancel, deadline, "preamble")
        with self._primed_lock:
            chan = self._exec_slot
        if chan is None or not _alive(chan):
            return None

        def read_line() -> bytes:
            # Nothing else is written to the channel until the launcher has its script, so
            # reading up to the newline takes exactly the launcher's own line.
            got = b""
            while not got.endswith(b"\n") and len(got) < 64:
                self._check(cancel, deadline, "preamble")
                try:
                    data = chan.recv(64 - len(got))
                except TimeoutError:
                    continue
                if not data:
                    break
                got += data
            return got

        try:
            with map_paramiko_errors(f"{self._description}: preamble"):
                chan.settimeout(POLL_S)
                ready = read_line()
                if ready != PREAMBLE_READY:
                    raise GuestError(f"{self._description}: the launcher said {ready!r}")
                chan.sendall((line() + "\n").encode())
                answer = read_line()
        except BaseException:
            self._drop_exec_slot(chan)
            raise
        status = parse_preamble_status(answer)
        if status is None:
            self._drop_exec_slot(chan)
            raise GuestError(f"{self._description}: the launcher's preamble said {answer!r}")
        return status

    def _drop_exec_slot(self, chan: paramiko.Channel) -> None:
        with self._primed_lock:
            if self._exec_slot is chan:
                self._exec_slot = None
        chan.close()

    def _take_slot(
        self, command: str, pty: bool
    ) -> tuple[paramiko.Channel, paramiko.Channel | None] | None:
        """The primed launcher for this command, if one is ready and it fits; else None."""
        priming = self._priming
        if priming is None:
            return None
        if priming is not threading.current_thread():
            priming.join(timeout=30.0)
        with self._primed_lock:
            if pty and self._pty_slot is not None and eligible_pty(command):
                tty, trig = self._pty_slot
                self._pty_slot = None
                if _alive(tty) and _alive(trig):
                    self.primed_runs += 1
                    return tty, trig
                tty.close()
                trig.close()
            elif (
                not pty
                and self._exec_slot is not None
                and not self._preamble  # a launcher still waiting for its preamble's line
                and eligible_exec(command)
            ):
                ex = self._exec_slot
                self._exec_slot = None
                if _alive(ex):
                    self.primed_runs += 1
                    return ex, None
                ex.close()
        return None

    def run(
        self,
        command: str,
        *,
        pty: bool = True,
        on_output: Callable[[bytes], None] | None = None,
        timeout: float | None = None,
        cancel: StopSignal | None = None,
        stdin: bytes | None = None,
        primed: bool = True,
    ) -> int:
        """Run ``command`` in the login shell; stream output chunks to ``on_output`` as they
        arrive (stdout and stderr together); return the exit status (-1: killed by a signal).

        ``stdin`` (only without a PTY, which would echo it) is fed to the command, then end
        of file, while its output is read (a command that writes before it has read all of
        its input does not stall); it is never part of any message.

        Raises CommandTimeout after ``timeout`` seconds, CommandCancelled when ``cancel`` is
        set (either way the channel is closed, which hangs up the command in the guest),
        GuestError when the connection fails. ``primed=False``: never a primed launcher
        (a command that must not wait for them).
        """
        if stdin is not None and pty:
            raise ValueError("stdin needs pty=False (a terminal would echo it)")
        deadline = None if timeout is None else time.monotonic() + timeout
        with map_paramiko_errors(f"{self._description}: run"):
            slot = self._take_slot(command, pty) if primed else None
            trigger: paramiko.Channel | None = None
            feeder: threading.Thread | None = None
            if slot is None:
                chan = self._session()
            else:
                chan, trigger = slot
            try:
                if slot is None:
                    if pty:
                        chan.get_pty(term="xterm", width=160, height=48)
                    else:
                        chan.set_combine_stderr(True)
                    chan.exec_command(command)
                chan.settimeout(POLL_S)
                if trigger is not None:
                    trigger.sendall(command.encode() + b"\n")
                    trigger.shutdown_write()
                if slot is not None and not pty:
                    # The launcher reads the script first; stdin, if any, follows it.
                    data = exec_header(command) + (stdin or b"")
                    feeder = threading.Thread(
                        target=_feed,
                        args=(chan, data, stdin is not None),
                        name="guest-stdin",
                        daemon=True,
                    )
                    feeder.start()
                elif stdin is not None:
                    feeder = threading.Thread(
                        target=_feed, args=(chan, stdin), name="guest-stdin", daemon=True
                    )
                    feeder.start()
                while True:
                    self._check(cancel, deadline, command)
                    try:
                        data = chan.recv(CHUNK)
                    except TimeoutError:
                        continue
                    if not data:
                        break
                    if on_output is not None:
                        on_output(data)
                while not chan.status_event.wait(POLL_S):
                    self._check(cancel, deadline, command)
                    if chan.closed or not self._transport.is_active():
                        break
                if chan.exit_status == -1 and self._connection_lost():
                    # paramiko sets the status event when a channel closes, with -1 for
                    # "no status": without a live transport that is a lost guest (the VM
                    # destroyed, the network gone), not a command killed by a signal.
                    raise GuestError(
                        f"{self._description}: connection lost while running {command!r}"
                    )
                if not chan.exit_status_ready():
                    raise GuestError(
                        f"{self._description}: connection lost while running {command!r}"
                    )
                return int(chan.recv_exit_status())
            finally:
                chan.close()
                if trigger is not None:
                    trigger.close()
                if feeder is not None:
                    feeder.join(timeout=5.0)

    def _connection_lost(self, grace_s: float = 2.0) -> bool:
        """Whether the transport died. A channel can see its end a moment before the
        transport notices its socket is gone, so give it ``grace_s`` to say so."""
        give_up = time.monotonic() + grace_s
        while self._transport.is_active():
            if time.monotonic() >= give_up:
                return False
            time.sleep(0.05)
        return True

    def open_channel(self) -> paramiko.Channel:
        """A new session channel on this connection, for a caller that drives it itself (the
        worker's control socket relays users' SSH sessions through it). Raises GuestError."""
        with map_paramiko_errors(f"{self._description}: open a session"):
            return self._session()

    def _check(self, cancel: StopSignal | None, deadline: float | None, command: str) -> None:
        if cancel is not None and cancel.is_set():
            raise CommandCancelled(f"{self._description}: cancelled: {command!r}")
        if deadline is not None and time.monotonic() > deadline:
            raise CommandTimeout(f"{self._description}: timed out: {command!r}")

    def _exec_collect(
        self,
        command: str,
        data: bytes | None = None,
        sink: BinaryIO | None = None,
        max_size: int = 0,
    ) -> tuple[int, bytes, int]:
        """Run without a PTY; feed ``data`` to stdin; stream stdout to ``sink`` (capped).

        Returns (exit status, stderr, stdout bytes)."""
        chan = self._session()
        try:
            chan.settimeout(300.0)
            chan.exec_command(command)
            if data is not None:
                for start in range(0, len(data), CHUNK):
                    chan.sendall(data[start : start + CHUNK])
            chan.shutdown_write()
            written = 0
            while True:
                chunk = chan.recv(CHUNK)
                if not chunk:
                    break
                written += len(chunk)
                if sink is not None:
                    if written > max_size:
                        raise FileTooLarge(f"larger than the limit of {max_size} bytes")
                    sink.write(chunk)
            errors = b""
            while True:
                part = chan.recv_stderr(CHUNK)
                if not part:
                    break
                errors += part[: 4096 - len(errors)]
            return int(chan.recv_exit_status()), errors, written
        finally:
            chan.close()

    def upload(self, path: str, data: bytes, mode: int = 0o644, *, sudo: bool = False) -> None:
        """Write ``data`` to ``path`` in the guest (parents created) with ``mode``.

        Relative and ``~/`` paths are in the login user's home; ``sudo`` writes as root.
        Raises GuestFileError naming the path."""
        target = guest_path_expr(path)
        script = (
            f'umask 077 && mkdir -p -- "$(dirname -- {target})" && '
            f"cat > {target} && chmod {mode & 0o7777:o} {target}"
        )
        command = f"sudo sh -c {shlex.quote(script)}" if sudo else script
        with map_paramiko_errors(f"{self._description}: upload {path}"):
            status, errors, _ = self._exec_collect(command, data=data)
        if status != 0:
            raise GuestFileError(
                f"{path}: upload failed (exit {status}): {errors.decode(errors='replace').strip()}"
            )

    def download(self, path: str, sink: BinaryIO, max_size: int) -> int:
        """Copy ``path`` from the guest into ``sink``; return the bytes written.

        Raises FileTooLarge past ``max_size`` bytes (``sink`` then holds a partial copy),
        GuestFileError naming the path when it cannot be read."""
        command = f"cat -- {guest_path_expr(path)}"
        try:
            with map_paramiko_errors(f"{self._description}: download {path}"):
                status, errors, written = self._exec_collect(command, sink=sink, max_size=max_size)
        except FileTooLarge as exc:
            raise FileTooLarge(f"{path}: {exc}") from None
        if status != 0:
            raise GuestFileError(
                f"{path}: cannot read (exit {status}): {errors.decode(errors='replace').strip()}"
            )
        return written

    def close(self) -> None:
        self._transport.close()


def connect_guest(
    port: int,
    *,
    user: str,
    key: paramiko.PKey,
    fingerprint: str | None,
    timeout: float,
    host: str = "127.0.0.1",
    cancel: StopSignal | None = None,
    description: str = "guest",
    probe: bool = True,
) -> GuestConnection:
    """Settle: wait until the guest's SSH answers a command, and return that connection.

    ``probe=False`` returns once logged in, without running ``true``: for a restored copy,
    whose sshd was up before the snapshot, and whose first command (vm.Guest's own-machine
    step) answers the same question.

    Raises SettleTimeout after ``timeout`` seconds, HostKeyMismatch, CommandCancelled.
    """
    start = time.monotonic()
    deadline = start + timeout
    bound = log.bind(guest=description, port=port)
    while True:
        sock, probes = wait_for_banner(host, port, deadline=deadline, cancel=cancel)
        try:
            conn = GuestConnection.open(
                sock,
                user=user,
                key=key,
                fingerprint=fingerprint,
                timeout=max(1.0, deadline - time.monotonic()),
                description=description,
            )
        except HostKeyMismatch:
            raise
        except GuestError as exc:
            # sshd may drop the very first connections while the guest finishes booting.
            bound.debug("guest.ssh_retry", error=str(exc))
            if time.monotonic() >= deadline:
                raise SettleTimeout(f"{description}: SSH did not settle: {exc}") from exc
            time.sleep(0.1)
            continue
        if not probe:
            bound.info("guest.ssh_ready", seconds=round(time.monotonic() - start, 3), probes=probes)
            return conn
        try:
            status = conn.run("true", pty=False, timeout=max(1.0, deadline - time.monotonic()))
        except (GuestError, CommandTimeout) as exc:
            conn.close()
            if time.monotonic() >= deadline:
                raise SettleTimeout(f"{description}: SSH did not settle: {exc}") from exc
            continue
        if status != 0:
            conn.close()
            raise GuestError(f"{description}: `true` exited {status} in the guest")
        bound.info("guest.ssh_ready", seconds=round(time.monotonic() - start, 3), probes=probes)
        return conn
