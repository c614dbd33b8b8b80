"""Primed launchers (guest/primed.py), run by a real bash on this host: the guest runs the
same text through its login shell."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from pathlib import Path

import pytest

from buildworker.guest.primed import eligible_exec, eligible_pty, exec_header, launchers


def test_only_simple_commands_take_the_pty_launcher() -> None:
    assert eligible_pty("./.tasks/build") and eligible_pty("'./.tasks/a-b'")
    assert eligible_pty("/usr/bin/tty")
    for command in ("echo hi", "a\nb", "", "x; y", "$(id)", "a" * 513):
        assert not eligible_pty(command), command


def test_the_exec_launcher_takes_ascii_scripts_of_bounded_size() -> None:
    assert eligible_exec("tar -xmf - -C /home/build || exit $?\nexit 0\n")
    assert not eligible_exec("echo h\u00e9")
    assert not eligible_exec("")
    assert not eligible_exec("x" * ((16 << 10) + 1))


def test_the_exec_launcher_runs_the_script_verbatim_with_the_rest_of_stdin() -> None:
    _, exec_launcher, _, _ = launchers("/nonexistent")
    script = """exec 2>&1
printf '[%s]' "$bw_n"
q='it'"'"'s $HOME'
printf '%s|' "$q"
cat
echo oops >&2
exit 3
"""
    done = subprocess.run(
        ["bash", "-c", exec_launcher],
        input=exec_header(script) + b"payload\x00\xffbytes",
        capture_output=True,
        timeout=10,
    )
    assert done.returncode == 3
    # bw_n is unset before the script runs; quoting survives; stdin after the script is the
    # script's stdin, byte for byte (bash did not read past the script).
    assert done.stdout == b"[]it's $HOME|payload\x00\xffbytesoops\n"


def test_the_exec_launcher_without_stdin_leaves_it_open() -> None:
    _, exec_launcher, _, _ = launchers("/nonexistent")
    proc = subprocess.Popen(
        ["bash", "-c", exec_launcher], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(exec_header("echo started; read -r line; echo got $line"))
    proc.stdin.flush()
    assert proc.stdout.readline() == b"started\n"
    time.sleep(0.2)
    assert proc.poll() is None, "the script waits on its stdin, as with a fresh channel"
    proc.stdin.write(b"late\n")
    proc.stdin.close()
    assert proc.stdout.readline() == b"got late\n"
    assert proc.wait(timeout=10) == 0


def _run_on_a_pty(command: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        command, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
    )
    os.close(slave)
    return proc, master


def _read_all(master: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out


def test_the_pty_launcher_becomes_the_command_the_trigger_names(tmp_path: Path) -> None:
    fifo = tmp_path / "run.fifo"
    make, _, pty_launcher, trigger = launchers(str(fifo))
    assert subprocess.run(["bash", "-c", make]).returncode == 0
    script = tmp_path / "task"
    script.write_text('#!/bin/bash\necho "pid $$"\ntty\nexit 5\n')
    script.chmod(0o755)
    proc, master = _run_on_a_pty(["bash", "-c", pty_launcher])
    try:
        time.sleep(0.2)
        assert proc.poll() is None, "the launcher waits for its command"
        done = subprocess.run(["bash", "-c", trigger], input=f"{script}\n".encode(), timeout=10)
        assert done.returncode == 0
        out = _read_all(master, proc)
        assert proc.wait(timeout=10) == 5
    finally:
        os.close(master)
    # exec: the launcher's process is the command's (as `bash -c CMD` would be), on a tty,
    # and nothing was echoed: the command line never went through the terminal.
    assert f"pid {proc.pid}".encode() in out
    assert b"/dev/pts/" in out and str(script).encode() not in out
    assert not fifo.exists(), "the trigger removes the FIFO"


def test_the_pty_launcher_refuses_an_empty_command(tmp_path: Path) -> None:
    fifo = tmp_path / "run.fifo"
    make, _, pty_launcher, _ = launchers(str(fifo))
    assert subprocess.run(["bash", "-c", make]).returncode == 0
    proc, master = _run_on_a_pty(["bash", "-c", pty_launcher])
    try:
        with open(fifo, "wb") as fh:
            fh.write(b"")
        assert proc.wait(timeout=10) == 126
    finally:
        os.close(master)


@pytest.mark.parametrize("name", ["a b", "x;y"])
def test_launcher_fifo_names_are_quoted(tmp_path: Path, name: str) -> None:
    fifo = tmp_path / name
    make, _, _, _ = launchers(str(fifo))
    assert subprocess.run(["bash", "-c", make]).returncode == 0
    assert fifo.is_fifo()
