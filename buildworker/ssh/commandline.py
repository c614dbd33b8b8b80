"""``SSH_ORIGINAL_COMMAND`` → what the user asked for (pure).

``connect JOB [COMMAND...]`` and ``tail JOB``, as builds.sr.ht's runner-shell. The command
after the job id is kept verbatim (the OpenSSH client joins its arguments with spaces, and
the guest's shell parses them, exactly as ``ssh build@guest COMMAND`` would).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Connect", "Request", "Tail", "Usage", "parse_command"]

_CONNECT = re.compile(r"^\s*connect\s+(\S+)(?:\s+(.*\S))?\s*$", re.DOTALL)
_TAIL = re.compile(r"^\s*tail\s+(\S+)\s*$")
#: Job ids as users type them: "42" or "#42".
_JOB_ID = re.compile(r"^#?([1-9][0-9]{0,9})$")


@dataclass(frozen=True)
class Connect:
    job_id: int
    command: str | None = None


@dataclass(frozen=True)
class Tail:
    job_id: int


@dataclass(frozen=True)
class Usage:
    """Nothing we run: print the usage. ``error`` says what was wrong (None: no command)."""

    error: str | None = None


Request = Connect | Tail | Usage


def _job_id(word: str) -> int | None:
    match = _JOB_ID.fullmatch(word)
    if match is None:
        return None
    value = int(match.group(1))
    return value if value <= 2**31 - 1 else None


def parse_command(original: str | None) -> Request:
    """Parse ``SSH_ORIGINAL_COMMAND`` (None or blank: the user asked for a plain login)."""
    if original is None or not original.strip():
        return Usage()
    match = _CONNECT.fullmatch(original)
    if match is not None:
        job = _job_id(match.group(1))
        if job is None:
            return Usage(f"not a job id: {match.group(1)!r}")
        return Connect(job, match.group(2))
    match = _TAIL.fullmatch(original)
    if match is not None:
        job = _job_id(match.group(1))
        if job is None:
            return Usage(f"not a job id: {match.group(1)!r}")
        return Tail(job)
    word = original.split()[0]
    if word in ("connect", "tail"):
        return Usage(f"usage: {word} JOB" + (" [COMMAND...]" if word == "connect" else ""))
    return Usage(f"unknown command {word[:64]!r}")
