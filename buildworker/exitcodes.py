"""Every exit status buildworker's commands return, in one place.

Callers act on these numbers (a script running ``buildworker lint`` in CI, ``submit
--follow`` in a pipeline, systemd restarting the worker or the API, sshd handing the shell's
status to the user's ssh), so a number is never reused for another meaning within one
command, and changing one is a change of interface. Several commands share 0/1/2 with the
meanings their own ``--help`` documents; each constant says what it means to the caller of
the command it belongs to.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "EXIT_BUILD_FAILED",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID",
    "EXIT_KILLED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_SETUP_ERROR",
    "EXIT_SHELL_LOST",
    "EXIT_SHELL_REFUSED",
    "EXIT_SHELL_UNAVAILABLE",
    "EXIT_SUCCESS",
    "EXIT_UNAUTHORIZED",
    "EXIT_UNREADABLE",
    "EXIT_USAGE",
    "EXIT_VALID",
]

# --- every command (buildworker.cli and the subcommands) -----------------------------------

#: Done; nothing went wrong (for ``buildworker worker``: drained, every build finished or
#: requeued; for ``submit --follow``: the job succeeded).
EXIT_OK: Final = 0
#: The command ran and failed; stderr says why (``submit --follow``: the job did not
#: succeed; ``api``: the database could not be reached, so systemd restarts it; ``image``:
#: a build of an image failed). Retrying may help once the cause is gone.
EXIT_FAILURE: Final = 1
#: The command line, the config or an input file is wrong (argparse's own 2); retrying
#: unchanged will fail again.
EXIT_USAGE: Final = 2
#: Stopped by SIGINT (Ctrl-C), reported as shells do: 128 + 2.
EXIT_INTERRUPTED: Final = 130

# --- buildworker lint (documented in its --help) --------------------------------------------

#: Every file is a valid manifest (warnings allowed).
EXIT_VALID: Final = 0
#: At least one file is not a valid manifest.
EXIT_INVALID: Final = 1
#: A file cannot be read (or is not UTF-8 text).
EXIT_UNREADABLE: Final = 2

# --- buildworker run (documented in its help) -----------------------------------------------

#: The build succeeded.
EXIT_SUCCESS: Final = 0
#: The build ran and did not succeed (a task failed, it timed out, or Ctrl-C cancelled it).
EXIT_BUILD_FAILED: Final = 1
#: The manifest or an option is wrong, the image is unknown, or the VM failed to boot:
#: not the tasks' fault.
EXIT_SETUP_ERROR: Final = 2

# --- buildworker admin ----------------------------------------------------------------------

#: The account change was refused (an unknown user, a name taken, ...); stderr says why.
#: (``admin`` has no 2 of its own: a bad command line is argparse's `EXIT_USAGE`.)
EXIT_REFUSED: Final = 1

# --- buildworker worker (the daemon; read by systemd, Restart=on-failure) ------------------

#: The API refused the worker token ([worker] token / [api] worker-token): running builds
#: were stopped and requeued. A restart alone will not fix it; the token must.
EXIT_UNAUTHORIZED: Final = 3
#: Stopped at once (a second SIGTERM, or SIGINT) instead of drained: running builds were
#: cancelled and their jobs requeued.
EXIT_KILLED: Final = 4

# --- the SSH shell (buildworker ssh shell: the status the user's ssh exits with) -----------

#: The ssh command line was not one the shell understands (usage printed).
EXIT_SHELL_REFUSED: Final = 1
#: The build worker on this host is not running (or refuses us): nothing to connect to.
EXIT_SHELL_UNAVAILABLE: Final = 1
#: The connection to the build worker broke mid-session (as ssh's own 255).
EXIT_SHELL_LOST: Final = 255
