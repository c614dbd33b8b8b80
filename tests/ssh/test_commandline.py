"""SSH_ORIGINAL_COMMAND as builds.sr.ht's runner-shell reads it."""

from __future__ import annotations

import pytest

from buildworker.ssh.commandline import Connect, Tail, Usage, parse_command


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        ("connect 42", Connect(42)),
        ("connect #42", Connect(42)),
        ("  connect   42  ", Connect(42)),
        ("connect 42 ls -la ~/src", Connect(42, "ls -la ~/src")),
        (
            "connect 42 cat ~/.buildenv | grep A='b c'",
            Connect(42, "cat ~/.buildenv | grep A='b c'"),
        ),
        ("tail 9", Tail(9)),
        ("tail #9", Tail(9)),
        (None, Usage()),
        ("", Usage()),
    ],
)
def test_commands(original: str | None, expected: object) -> None:
    assert parse_command(original) == expected


@pytest.mark.parametrize(
    ("original", "error"),
    [
        ("connect", "usage: connect JOB [COMMAND...]"),
        ("connect abc", "not a job id: 'abc'"),
        ("connect 0", "not a job id: '0'"),
        ("connect 99999999999", "not a job id: '99999999999'"),
        ("tail", "usage: tail JOB"),
        ("tail 3 extra", "usage: tail JOB"),
        ("bash", "unknown command 'bash'"),
        ("sftp", "unknown command 'sftp'"),
        ("scp -t /tmp", "unknown command 'scp'"),
    ],
)
def test_anything_else_is_usage_with_the_reason(original: str, error: str) -> None:
    assert parse_command(original) == Usage(error)
