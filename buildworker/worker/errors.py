"""The worker's error tree: whose fault, and whether a retry on a fresh VM may help.

WorkerError
├── BuildFailed      the user's build failed (a task exited non-zero, a clone failed,
│                    a package does not exist); never retried
├── SetupError       the job cannot run as submitted (bad manifest, unknown image)
├── Cancelled        stopped on purpose: reason is "cancelled" or "timeout"
└── InfraError       something of ours broke; ``retryable`` says whether a fresh VM may help
    └── BootError    the VM did not boot or settle (retryable)
"""

from __future__ import annotations

__all__ = ["BootError", "BuildFailed", "Cancelled", "InfraError", "SetupError", "WorkerError"]


class WorkerError(Exception):
    """Base of every error the pipeline raises on purpose; ``str()`` is for the job log."""


class BuildFailed(WorkerError):
    """The build failed because of what it ran (task, package, clone). Parameters: the
    message for the setup log; ``task`` when a task failed."""

    def __init__(self, message: str, *, task: str | None = None) -> None:
        super().__init__(message)
        self.task = task


class SetupError(WorkerError):
    """The job cannot run as submitted: bad manifest, unknown image or arch."""


class Cancelled(WorkerError):
    """The build was stopped on purpose. ``reason`` is the final status: cancelled|timeout."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"build {reason}" if reason != "timeout" else "build timed out")
        self.reason = reason


class InfraError(WorkerError):
    """Our side broke (libvirt, SSH transport, the API); the user's build is not at fault."""

    retryable = False


class BootError(InfraError):
    """The guest did not boot or did not answer SSH in time: worth one more try.

    ``stage`` says which (``boot``: the domain did not start; ``settle``: SSH never
    answered), for ``buildworker_infra_failures_total{reason}``."""

    retryable = True

    def __init__(self, message: str, stage: str = "boot") -> None:
        super().__init__(message)
        self.stage = stage
