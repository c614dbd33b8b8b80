"""Write ``~/.buildenv``: the manifest's environment plus CI_NAME, JOB_ID, JOB_URL."""

from __future__ import annotations

from buildworker.render import render_buildenv
from buildworker.worker.context import BuildContext


def run(ctx: BuildContext) -> None:
    ctx.say("Sending build environment")
    extra = {
        "CI_NAME": "sourcehut",
        "JOB_ID": str(ctx.spec.job_id),
        "JOB_URL": ctx.spec.job_url,
        **ctx.spec.extra_env,
    }
    text = render_buildenv(ctx.manifest.environment, extra)
    ctx.upload(f"{ctx.home.rstrip('/')}/.buildenv", text.encode(), 0o755)
