"""Run the tasks in order, each in its own SSH session with a PTY; the exit status decides.

Semantics (pure, in :func:`statuses_after`): a non-zero exit fails the task and the job, and
the remaining tasks become ``skipped`` (builds.sr.ht leaves them ``pending``); a task that
ran ``complete-build`` (``~/.complete-build`` contains ``1``) ends task execution with the
remaining tasks ``skipped`` and the job continuing to artifacts.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass

from buildworker.worker.context import BuildContext
from buildworker.worker.errors import BuildFailed

COMPLETE_BUILD_FILE = ".complete-build"


@dataclass(frozen=True)
class TaskOutcome:
    """How one task ended: its exit status, and whether it called complete-build."""

    exit_status: int
    complete_build: bool = False


def statuses_after(names: Sequence[str], outcomes: Sequence[TaskOutcome]) -> dict[str, str]:
    """Every task's final status given the outcomes of the tasks that ran, in order.

    ``outcomes`` may be shorter than ``names`` (the tasks after a failure or complete-build
    did not run). Tasks neither run nor skipped by those rules stay ``pending`` (e.g. the
    build was cancelled before them).
    """
    statuses = dict.fromkeys(names, "pending")
    stop = False
    for name, outcome in zip(names, outcomes, strict=False):
        if outcome.exit_status != 0:
            statuses[name] = "failed"
            stop = True
            break
        statuses[name] = "success"
        if outcome.complete_build:
            stop = True
            break
    if stop:
        for name in names[len(outcomes) :]:
            statuses[name] = "skipped"
    return statuses


def _complete_build_requested(ctx: BuildContext) -> bool:
    sink = bytearray()
    path = f"{ctx.home.rstrip('/')}/{COMPLETE_BUILD_FILE}"
    status = ctx.run(f"cat {shlex.quote(path)} 2>/dev/null || true", on_output=sink.extend)
    return status == 0 and bytes(sink).strip() == b"1"


def run(ctx: BuildContext) -> None:
    names = [task.name for task in ctx.manifest.tasks]
    outcomes: list[TaskOutcome] = []
    for name in names:
        ctx.set_task_status(name, "running")
        stream = ctx.logs.open(name)
        started = time.monotonic()
        try:
            status = ctx.run(f"./.tasks/{shlex.quote(name)}", output=stream, pty=True)
        finally:
            stream.close()
            if ctx.first_task_byte_at is None and stream.first_byte_at is not None:
                ctx.first_task_byte_at = stream.first_byte_at
        ctx.log.info(
            "task_finished",
            task=name,
            exit_status=status,
            duration_s=round(time.monotonic() - started, 3),
        )
        outcome = TaskOutcome(status, status == 0 and _complete_build_requested(ctx))
        outcomes.append(outcome)
        final = statuses_after(names, outcomes)
        ctx.set_task_status(name, final[name])
        if final[name] == "failed":
            _report_rest(ctx, names, final)
            raise BuildFailed(f"task {name} failed (exit {status})", task=name)
        if outcome.complete_build:
            ctx.say("Build completed early (complete-build)")
            _report_rest(ctx, names, final)
            return


def _report_rest(ctx: BuildContext, names: Sequence[str], final: dict[str, str]) -> None:
    for name in names:
        if final[name] == "skipped":
            ctx.set_task_status(name, "skipped")
