"""The forced command: what sshd runs for every login of the SSH user (``builds``).

``buildworker ssh shell --socket PATH USERNAME`` reads ``SSH_ORIGINAL_COMMAND`` (``connect JOB
[COMMAND...]`` or ``tail JOB``), hands the request to the worker daemon over its control
socket, and relays: the daemon's output to stdout, its messages to stderr, the user's keys,
end of input and terminal size changes back. It holds no token and talks to nothing else; the
daemon decides who may connect (asking the API) and owns the guest connection.

On a terminal it stays in cooked mode (so Ctrl-C works) until the daemon says the interactive
part begins (``RAW``), and always restores the terminal before it prints a message or exits.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import sys
import termios
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from buildworker.exitcodes import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SHELL_LOST,
    EXIT_SHELL_REFUSED,
    EXIT_SHELL_UNAVAILABLE,
)
from buildworker.ssh import protocol as proto
from buildworker.ssh.commandline import Connect, Tail, Usage, parse_command
from buildworker.ssh.texts import usage

__all__ = ["run_shell"]

NOT_RUNNING = "The build worker on this host is not running; try again later."


class _Terminal:
    """The user's terminal (sshd's PTY) if there is one: raw on request, always restored."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.is_tty = os.isatty(fd)
        self._saved: list[Any] | None = None

    def size(self) -> tuple[int, int]:
        try:
            size = os.get_terminal_size(self.fd)
            return size.columns, size.lines
        except OSError:
            return 80, 24

    def raw(self) -> None:
        if self.is_tty and self._saved is None:
            self._saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd)

    def restore(self) -> bool:
        """Back to the terminal's own mode; True if it was raw."""
        if self._saved is None:
            return False
        with contextlib.suppress(termios.error):
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
        self._saved = None
        return True


@contextlib.contextmanager
def _winch_pipe() -> Iterator[int]:
    """A pipe that becomes readable when the terminal is resized (SIGWINCH)."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)

    def on_winch(_signum: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            os.write(write_fd, b"w")

    previous = signal.signal(signal.SIGWINCH, on_winch)
    try:
        yield read_fd
    finally:
        signal.signal(signal.SIGWINCH, previous)
        os.close(read_fd)
        os.close(write_fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def run_shell(
    username: str,
    socket_path: Path,
    original_command: str | None,
    *,
    stdin_fd: int = 0,
    stdout_fd: int = 1,
    stderr: TextIO = sys.stderr,
) -> int:
    """Serve one SSH login of ``username``; returns the exit status for sshd."""
    request = parse_command(original_command)
    if isinstance(request, Usage):
        if request.error:
            stderr.write(f"{request.error}\n")
        stderr.write(usage(username))
        return EXIT_OK if request.error is None else EXIT_SHELL_REFUSED
    terminal = _Terminal(stdin_fd)
    message: dict[str, Any] = {"user": username, "job": request.job_id, "command": None}
    if isinstance(request, Connect):
        message.update(op="connect", command=request.command)
    else:
        assert isinstance(request, Tail)
        message["op"] = "tail"
    if terminal.is_tty:
        cols, rows = terminal.size()
        message["pty"] = {"term": os.environ.get("TERM", "xterm"), "cols": cols, "rows": rows}
    else:
        message["pty"] = None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(socket_path))
    except OSError:
        conn.close()
        stderr.write(NOT_RUNNING + "\n")
        return EXIT_SHELL_UNAVAILABLE
    try:
        conn.sendall(proto.request_frame(message))
        with _winch_pipe() as winch:
            return _relay(conn, terminal, winch, stdout_fd, stderr)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        terminal.restore()
        conn.close()


def _relay(
    conn: socket.socket, terminal: _Terminal, winch: int, stdout_fd: int, stderr: TextIO
) -> int:
    decoder = proto.FrameDecoder()
    selector = selectors.DefaultSelector()
    selector.register(conn, selectors.EVENT_READ, "daemon")
    selector.register(terminal.fd, selectors.EVENT_READ, "stdin")
    selector.register(winch, selectors.EVENT_READ, "winch")
    try:
        while True:
            for key, _ in selector.select():
                if key.data == "daemon":
                    data = conn.recv(65536)
                    if not data:
                        terminal.restore()
                        stderr.write("\nLost the connection to the build worker.\n")
                        return EXIT_SHELL_LOST
                    for frame in decoder.feed(data):
                        status = _on_frame(frame, terminal, stdout_fd, stderr)
                        if status is not None:
                            return status
                elif key.data == "stdin":
                    data = os.read(terminal.fd, 65536)
                    if data:
                        conn.sendall(proto.encode(proto.INPUT, data))
                    else:
                        selector.unregister(terminal.fd)
                        conn.sendall(proto.encode(proto.EOF))
                else:
                    os.read(winch, 64)
                    if terminal.is_tty:
                        conn.sendall(proto.window_frame(*terminal.size()))
    except (OSError, proto.ProtocolError):
        terminal.restore()
        stderr.write("\nLost the connection to the build worker.\n")
        return EXIT_SHELL_LOST
    finally:
        selector.close()


def _on_frame(
    frame: proto.Frame, terminal: _Terminal, stdout_fd: int, stderr: TextIO
) -> int | None:
    if frame.kind == proto.OUTPUT:
        _write_all(stdout_fd, frame.payload)
    elif frame.kind == proto.MESSAGE:
        was_raw = terminal.restore()
        text = ("\n" if was_raw else "") + frame.payload.decode("utf-8", "replace")
        stderr.write(text if text.endswith("\n") else text + "\n")
        stderr.flush()
    elif frame.kind == proto.RAW:
        terminal.raw()
    elif frame.kind == proto.EXIT:
        terminal.restore()
        return proto.decode_exit(frame)
    return None
