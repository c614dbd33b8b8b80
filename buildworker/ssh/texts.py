"""What people read when they SSH into builds, worded as builds.sr.ht words it (spec §2.4).

Pure functions and constants: the forced command, the control server and (next) the standby
hook all take their texts from here, so a test of one text covers every place it appears.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import humanize

__all__ = [
    "BUILD_CANCELLED",
    "DEADLINE_ELAPSED",
    "NOT_PERMITTED",
    "NO_SUCH_JOB",
    "banner",
    "connect_command",
    "ended_notice",
    "not_on_this_host",
    "standby_notice",
    "until",
    "usage",
]

NO_SUCH_JOB = "No such job found."
NOT_PERMITTED = "You are not permitted to connect to this job."
BUILD_CANCELLED = "Build cancelled. Terminating build environment."
DEADLINE_ELAPSED = "Deadline elapsed. Terminating build environment."


def until(deadline: float, now: float | None = None) -> str:
    """A unix time as builds.sr.ht's ``humanize.naturaltime``: "9 minutes from now"."""
    current = time.time() if now is None else now
    return str(
        humanize.naturaltime(
            datetime.fromtimestamp(deadline, UTC), when=datetime.fromtimestamp(current, UTC)
        )
    )


def banner(job_id: int, status: str, url: str, deadline: float, now: float | None = None) -> str:
    """The two lines printed when a session into a build starts."""
    return (
        f"Connected to build job #{job_id} ({status}): {url}\n"
        f"Your VM will be terminated {until(deadline, now)}, or when you log out.\n"
    )


def connect_command(user: str, host: str, port: int, job_id: int) -> str:
    """``ssh -t builds@HOST connect N``, with ``-p PORT`` when the port is not 22."""
    port_option = "" if port == 22 else f"-p {port} "
    return f"ssh -t {port_option}{user}@{host} connect {job_id}"


def standby_notice(window_s: float, command: str) -> str:
    """The end of a failed build's setup log while its VM waits for a login."""
    minutes = max(1, round(window_s / 60))
    unit = "minute" if minutes == 1 else "minutes"
    return (
        "Build failed.\n"
        f"The build environment will be kept alive for {minutes} {unit}.\n"
        "To log in with SSH and examine it, use the following command:\n"
        "\n"
        f"\t{command}\n"
        "\n"
        "After logging in, the deadline is increased to your remaining build time.\n"
    )


def not_on_this_host(job_id: int, status: str, runner: str | None, here: str) -> str:
    """A job the user may connect to, but whose VM is not on this build host (any more)."""
    if status in ("success", "failed", "timeout", "cancelled") or not runner:
        return f"Build job #{job_id} is {status}; its build environment is gone."
    if runner != here:
        return f"Build job #{job_id} runs on {runner}, not on this host ({here})."
    return f"Build job #{job_id} ({status}) has no build environment on this host."


def ended_notice(job_id: int, status: str) -> str:
    """Printed when ``tail`` stops because the build ended."""
    return f"Build job #{job_id} ended: {status}."


def usage(user: str) -> str:
    """For a login with no command, or an unknown one: what this entry point does."""
    return (
        f"Hi ~{user}! You've successfully authenticated, but I do not provide an "
        "interactive shell.\n"
        "Commands:\n"
        "  connect JOB [COMMAND...]   a shell (or COMMAND) in the build environment of JOB\n"
        "  tail JOB                   follow JOB's setup and task logs until it ends\n"
    )
