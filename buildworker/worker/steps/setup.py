"""Setup in one round trip: task files, ``~/.buildenv`` and file secrets in one command.

The archive and the script come from :mod:`setup_bundle` (pure); the archive goes on the
command's stdin, so no secret is in a command line or on the host's disk. The setup log
says what the separate steps said ("Sending tasks", "Sending build environment", "Sending
secrets", "Installing secret <uuid>" as each starts), with the guest's output (gpg's) in
between, masked as every setup-log line is.
"""

from __future__ import annotations

from buildworker.render import DEFAULT_PREAMBLE
from buildworker.worker.context import BuildContext
from buildworker.worker.steps.setup_bundle import MarkedOutput, build_bundle


def run(ctx: BuildContext) -> None:
    bundle = build_bundle(ctx.spec, ctx.home, ctx.image.preamble or DEFAULT_PREAMBLE)
    ctx.say("Sending tasks")
    ctx.say("Sending build environment")
    if ctx.spec.secrets:
        ctx.say("Sending secrets")
    started: list[int] = []

    def on_mark(index: int) -> None:
        if 0 <= index < len(bundle.items):
            started.append(index)
            ctx.say(bundle.items[index].say)

    setup = ctx.setup
    output = MarkedOutput(setup.write, on_mark)
    try:
        status = ctx.run(bundle.command, on_output=output.feed, stdin=bundle.archive)
    finally:
        output.close()
    if status != 0:
        raise bundle.failure(started[-1] if started else None, status)
