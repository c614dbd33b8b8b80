"""Install the manifest's packages through the image's package manager."""

from __future__ import annotations

from buildworker.worker.context import BuildContext
from buildworker.worker.errors import BuildFailed


def run(ctx: BuildContext) -> None:
    packages = ctx.manifest.packages
    if not packages:
        return
    ctx.say("Installing packages")
    status = ctx.run("exec 2>&1; " + ctx.image.install_command(packages))
    if status != 0:
        raise BuildFailed(f"Installing packages failed (exit {status})")
