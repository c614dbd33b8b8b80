"""Add the manifest's package repositories through the image's package manager."""

from __future__ import annotations

from buildworker.worker.context import BuildContext
from buildworker.worker.errors import BuildFailed


def run(ctx: BuildContext) -> None:
    for name, source in ctx.manifest.repositories.items():
        ctx.say(f"Adding repository {name}")
        status = ctx.run("exec 2>&1; " + ctx.image.add_repository_command(name, source))
        if status != 0:
            raise BuildFailed(f"Adding repository {name} failed (exit {status})")
