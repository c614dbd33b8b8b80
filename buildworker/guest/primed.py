"""Primed channels: a command's guest-side start-up paid before the command is known (pure:
the launchers' shell text and who may use them; ssh.GuestConnection drives the channels).

Under TCG every guest command costs its sshd session (a fork, the channel's set-up) and a
login shell's start (an exec of bash) before it runs: ~0.15 s of a restored guest's CPU,
twice on a job's critical path (setup, then the first task). A primed connection opens two
launchers ahead of time, each a shell of the login user that waits, idle, for its command:

- **exec** (no PTY): reads a length line and that many bytes of script from stdin, then
  ``eval``-s the script with the rest of stdin as its stdin (setup's archive follows it).
- **pty** (a PTY, as tasks run): waits on a FIFO, then ``exec``-s the command it reads
  there. Its own stdin is the terminal, which would echo anything written to it, so a third
  channel, **trigger**, takes the command line on its stdin and writes it into the FIFO.

Each launcher serves one command, then is gone; a command that does not fit (``eligible``)
or finds its launcher dead takes a fresh channel as before. A launcher's shell is the one
sshd would have started for that command, in the same environment, so the command sees no
difference: ``exec`` keeps ``bash -c CMD``'s semantics for the pty's simple commands (the
process is the command, a signal is reported as a signal), ``eval`` is what ``bash -c``
does with a script.
"""

from __future__ import annotations

import re
import shlex

__all__ = [
    "PREAMBLE_READY",
    "eligible_exec",
    "eligible_pty",
    "exec_header",
    "launchers",
    "parse_preamble_status",
]

#: A pty launcher runs only simple commands (``./.tasks/build``): one word, no newline, so
#: ``exec`` of it is what ``bash -c`` would do, and the FIFO protocol stays one line.
_SIMPLE = re.compile(r"^[A-Za-z0-9_./'~+-]{1,512}$")
#: The exec launcher counts characters (ASCII: bytes in any locale), and bash reads them one
#: byte per system call from a pipe: long scripts take a fresh channel.
_MAX_SCRIPT = 16 << 10
_PREAMBLE_STATUS = re.compile(rb"^bw-pre (\d{1,3})\n$")
#: The exec launcher's line once its shell runs, before it reads the preamble's line.
PREAMBLE_READY = b"bw-ready\n"


def launchers(fifo: str, preamble: str = "") -> tuple[str, str, str]:
    """The commands (exec launcher, pty launcher, trigger) for ``fifo``.

    The pty launcher and the trigger each make the FIFO (whichever comes first; the other's
    ``mkfifo`` finds it there), so priming needs no channel of its own for it.

    ``preamble``: shell text the exec launcher runs first (a restored copy's own-machine
    step, ``copyprep.own_machine_preamble``, which then rides a channel that is opened
    anyway). The launcher says ``bw-ready`` (:data:`PREAMBLE_READY`) once its shell runs,
    reads one line into ``bw_t`` (sent only then: a time sent earlier would be as old as the
    shell's start, seconds on a loaded host), runs the preamble, reports its status as one
    line ``bw-pre N`` (:func:`parse_preamble_status`), then reads its script as without one."""
    quoted = shlex.quote(fifo)
    make = f"mkfifo -m 600 {quoted} 2>/dev/null; [ -p {quoted} ] || exit 126"
    exec_launcher = (
        'IFS= read -r bw_n && IFS= read -r -N "$bw_n" bw_c && unset bw_n && eval "$bw_c"'
    )
    if preamble:
        exec_launcher = (
            f"echo bw-ready; IFS= read -r bw_t && {{ {preamble}\n}}; "
            "printf 'bw-pre %s\\n' \"$?\"; unset bw_t; " + exec_launcher
        )
    pty_launcher = (
        f"{make}; IFS= read -r -d '' bw_c < {quoted}; "
        '[ -n "$bw_c" ] || exit 126; eval "exec $bw_c"'
    )
    trigger = (
        f"{make}; IFS= read -r bw_c && printf '%s\\0' \"$bw_c\" > {quoted} && exec rm -f {quoted}"
    )
    return exec_launcher, pty_launcher, trigger


def parse_preamble_status(line: bytes) -> int | None:
    """The status in the exec launcher's ``bw-pre N`` line; None if it is not one."""
    match = _PREAMBLE_STATUS.match(line)
    return int(match.group(1)) if match else None


def eligible_exec(command: str) -> bool:
    """Whether the exec launcher can run ``command`` (ASCII: its length is its bytes)."""
    return command.isascii() and 0 < len(command) <= _MAX_SCRIPT


def eligible_pty(command: str) -> bool:
    """Whether the pty launcher can run ``command`` (one simple word)."""
    return bool(_SIMPLE.match(command))


def exec_header(command: str) -> bytes:
    """What the exec launcher reads before its stdin: the script's length, then the script."""
    data = command.encode("ascii")
    return str(len(data)).encode() + b"\n" + data
