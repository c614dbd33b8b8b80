"""Clone the manifest's sources: git (``#ref``, submodules) and hg, as builds.sr.ht does."""

from __future__ import annotations

import shlex

from buildworker.manifest import Source
from buildworker.worker.context import BuildContext
from buildworker.worker.errors import BuildFailed

#: Cloning inside the guest trusts any host key, as builds.sr.ht does (the guest is disposable
#: and has no known_hosts); the worker's own SSH to the guest is pinned.
SSH_OPTS = "ssh -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no"
PRIVATE_REPO_HINT = (
    "Failed to clone git repository. If this a private repository, make sure you've added a "
    "suitable SSH key.\nhttps://man.sr.ht/builds.sr.ht/private-repos.md"
)


def clone_commands(source: Source) -> list[tuple[str, str]]:
    """(command, what failed) pairs for one source, run in order in the home directory.

    Raises:
        BuildFailed: the scm is unknown.
    """
    url, directory = shlex.quote(source.url), shlex.quote(source.directory)
    if source.scm == "git":
        env = f"GIT_SSH_COMMAND={shlex.quote(SSH_OPTS)}"
        commands = [(f"{env} git clone {url} {directory}", PRIVATE_REPO_HINT)]
        if source.ref:
            commands.append(
                (
                    f"cd {directory} && git checkout -q {shlex.quote(source.ref)}",
                    f"Failed to check out {source.ref}",
                )
            )
        commands.append(
            (
                f"cd {directory} && {env} git submodule update --init --recursive",
                "Failed to update submodules",
            )
        )
        return commands
    if source.scm == "hg":
        commands = [
            (
                f"hg clone -e {shlex.quote(SSH_OPTS)} {url} {directory}",
                "Failed to clone hg repository",
            )
        ]
        if source.ref:
            commands.append(
                (
                    f"cd {directory} && hg update -y {shlex.quote(source.ref)}",
                    f"Failed to update to {source.ref}",
                )
            )
        return commands
    raise BuildFailed(f"Unknown scm: {source.scm}")


def run(ctx: BuildContext) -> None:
    sources = ctx.manifest.parsed_sources()
    if not sources:
        return
    ctx.say("Cloning repositories")
    for source in sources:
        for command, failure in clone_commands(source):
            status = ctx.run(f"exec 2>&1; cd {shlex.quote(ctx.home)} && {command}")
            if status != 0:
                ctx.say(failure)
                raise BuildFailed(f"{failure} ({source.url}, exit {status})")
