"""Primed launchers (guest/primed.py), run by a real bash on this host: the guest runs the
same text through its login shell."""

from __future__ import annotations

import os
import pty
import select
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from buildworker.guest.primed import (
    PREAMBLE_READY,
    eligible_exec,
    eligible_pty,
    exec_header,
    launchers,
    parse_preamble_status,
)


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
    exec_launcher, _, _ = launchers("/nonexistent")
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
    exec_launcher, _, _ = launchers("/nonexistent")
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


@pytest.mark.parametrize("first", ["launcher", "trigger"])
def test_the_pty_launcher_becomes_the_command_the_trigger_names(tmp_path: Path, first: str) -> None:
    # Whichever of the two starts first makes the FIFO; the other finds it.
    fifo = tmp_path / "run.fifo"
    _, pty_launcher, trigger = launchers(str(fifo))
    if first == "trigger":
        trig = subprocess.Popen(["bash", "-c", trigger], stdin=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not fifo.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fifo.is_fifo()
    script = tmp_path / "task"
    script.write_text('#!/bin/bash\necho "pid $$"\ntty\nexit 5\n')
    script.chmod(0o755)
    proc, master = _run_on_a_pty(["bash", "-c", pty_launcher])
    try:
        time.sleep(0.2)
        assert proc.poll() is None, "the launcher waits for its command"
        assert fifo.is_fifo() and oct(fifo.stat().st_mode & 0o777) == "0o600"
        if first == "trigger":
            trig.communicate(f"{script}\n".encode(), timeout=10)
            assert trig.returncode == 0
        else:
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
    _, pty_launcher, _ = launchers(str(fifo))
    proc, master = _run_on_a_pty(["bash", "-c", pty_launcher])
    try:
        deadline = time.monotonic() + 10
        while not fifo.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        with open(fifo, "wb") as fh:
            fh.write(b"")
        assert proc.wait(timeout=10) == 126
    finally:
        os.close(master)


@pytest.mark.parametrize("name", ["a b", "x;y"])
def test_launcher_fifo_names_are_quoted(tmp_path: Path, name: str) -> None:
    fifo = tmp_path / name
    _, pty_launcher, _ = launchers(str(fifo))
    proc = subprocess.Popen(["bash", "-c", pty_launcher], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not fifo.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fifo.is_fifo()
    finally:
        proc.kill()
        proc.wait()


def test_a_pty_launcher_whose_fifo_is_not_a_fifo_refuses_to_run(tmp_path: Path) -> None:
    fifo = tmp_path / "run.fifo"
    fifo.write_text("./evil\n")  # a regular file where the FIFO should be
    _, pty_launcher, trigger = launchers(str(fifo))
    assert subprocess.run(["bash", "-c", pty_launcher], timeout=10).returncode == 126
    done = subprocess.run(["bash", "-c", trigger], input=b"./x\n", timeout=10)
    assert done.returncode == 126 and fifo.read_text() == "./evil\n"


def test_the_exec_launcher_runs_its_preamble_first_and_says_how_it_ended() -> None:
    # The preamble sees the first line as bw_t; its status is one `bw-pre N` line; the
    # script and its stdin follow as without a preamble, with bw_t gone.
    preamble = '[ "$bw_t" = 1700000000.5 ] && echo "pre:$bw_t" >&2'
    exec_launcher, _, _ = launchers("/nonexistent", preamble)
    script = 'printf "[%s]" "$bw_t"; cat'
    for first, status in ((b"1700000000.5", 0), (b"other", 1)):
        done = subprocess.run(
            ["bash", "-c", exec_launcher],
            input=first + b"\n" + exec_header(script) + b"rest",
            capture_output=True,
            timeout=10,
        )
        assert done.returncode == 0
        ready, head, tail = done.stdout.split(b"\n", 2)
        assert ready + b"\n" == PREAMBLE_READY
        assert parse_preamble_status(head + b"\n") == status
        assert tail == b"[]rest"
    assert parse_preamble_status(b"bw-pre x\n") is None
    assert parse_preamble_status(b"hello\n") is None


def test_the_own_machine_preamble_talks_to_the_helper_and_closes_its_fifos(
    tmp_path: Path,
) -> None:
    # copyprep's preamble against a stand-in helper on FIFOs in a temp dir (the real one
    # sets the clock: it runs in the VM tests): ok → 0, anything else → 1, no FIFOs → 1 at
    # once; the script that follows has no fd 3 or 4.
    import buildworker.guest.copyprep as copyprep

    fifo_in, fifo_out = tmp_path / "in", tmp_path / "out"
    preamble = copyprep.own_machine_preamble().replace(copyprep._IN, str(fifo_in))
    preamble = preamble.replace(copyprep._OUT, str(fifo_out))
    exec_launcher, _, _ = launchers("/nonexistent", preamble)
    script = "ls /proc/$$/fd"

    def launch() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["bash", "-c", exec_launcher],
            input=b"1700000000.25\n" + exec_header(script),
            capture_output=True,
            timeout=10,
        )

    done = launch()
    assert done.stdout.startswith(PREAMBLE_READY + b"bw-pre 1\n"), done.stdout
    for answer, status in (("ok", 0), ("date failed", 1)):
        os.mkfifo(fifo_in)
        os.mkfifo(fifo_out)
        helper = subprocess.Popen(
            [
                "bash",
                "-c",
                f'IFS= read -r t < {fifo_in}; echo "$t" > {tmp_path}/got; '
                f"echo {shlex.quote(answer)} > {fifo_out}",
            ]
        )
        done = launch()
        helper.wait(timeout=10)
        expected = PREAMBLE_READY + f"bw-pre {status}\n".encode()
        assert done.stdout.startswith(expected), done.stdout
        assert (tmp_path / "got").read_text() == "1700000000.25\n"
        fds = done.stdout.split(b"\n", 2)[2].split()
        assert b"3" not in fds and b"4" not in fds, fds
        fifo_in.unlink()
        fifo_out.unlink()
