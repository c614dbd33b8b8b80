"""The build as an ordered list of small steps, in builds.sr.ht's order (spec §2.2).

builds.sr.ht's first three (tasks, environment, secrets) are one step here, "setup": one
guest command instead of one or more per file.

Boot and settle happen before (runner); hut config (``oauth:``) is not sent because the
internal API does not mint OAuth tokens yet; triggers run on the API side after ``finish``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from buildworker.worker.context import BuildContext, JobSpec
from buildworker.worker.steps import (
    artifacts,
    packages,
    repositories,
    run_tasks,
    setup,
    sources,
)

__all__ = ["STEPS", "Step", "plan", "run_steps"]


@dataclass(frozen=True)
class Step:
    """One step: ``run`` does it; ``applies`` says whether this job needs it at all."""

    name: str
    run: Callable[[BuildContext], None]
    applies: Callable[[JobSpec], bool]


def _always(spec: JobSpec) -> bool:
    return True


STEPS: tuple[Step, ...] = (
    # task files, ~/.buildenv and file secrets: one guest command (steps/setup.py)
    Step("setup", setup.run, _always),
    Step("repositories", repositories.run, lambda spec: bool(spec.manifest.repositories)),
    Step("packages", packages.run, lambda spec: bool(spec.manifest.packages)),
    Step("sources", sources.run, lambda spec: bool(spec.manifest.sources)),
    Step("run-tasks", run_tasks.run, lambda spec: bool(spec.manifest.tasks)),
    Step("artifacts", artifacts.run, lambda spec: bool(spec.manifest.artifacts)),
)


def plan(spec: JobSpec) -> list[Step]:
    """The steps this job runs, in order."""
    return [step for step in STEPS if step.applies(spec)]


def run_steps(ctx: BuildContext) -> None:
    """Run the planned steps; the first error ends the build (raised to the runner)."""
    for step in plan(ctx.spec):
        ctx.cancel.raise_if_set()
        log = ctx.log.bind(step=step.name)
        log.info("step_start")
        step.run(ctx)
        log.info("step_end")
