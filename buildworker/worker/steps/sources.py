"""Clone the manifest's sources: git (``#ref``, submodules) and hg, as builds.sr.ht does."""

from __future__ import annotations

import shlex

from buildworker.cache.git import guest_clone_command, needs_credentials
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


def clone_commands(source: Source, mirror_url: str = "") -> list[tuple[str, str]]:
    """(command, what failed) pairs for one source, run in order in the home directory.
    `mirror_url`: the host's git mirror of the source (buildworker.cache.git): the clone
    comes from it, ``origin`` set back to the source's URL, direct if that fails.

    Raises:
        BuildFailed: the scm is unknown.
    """
    url, directory = shlex.quote(source.url), shlex.quote(source.directory)
    if source.scm == "git":
        env = f"GIT_SSH_COMMAND={shlex.quote(SSH_OPTS)}"
        clone = f"{env} git clone {url} {directory}"
        if mirror_url:
            clone = guest_clone_command(mirror_url, source.url, source.directory, env)
        commands = [(clone, PRIVATE_REPO_HINT)]
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
    mirrors = ctx.image.git_cache
    if mirrors is not None and needs_credentials([s.path for s in ctx.spec.secrets]):
        mirrors = None  # a git credentials secret: its sources may need it, all go direct
    for source in sources:
        mirror_url = ""
        if mirrors is not None and source.scm == "git":
            mirror_url = mirrors.prepare(source.url, timeout=ctx.remaining()).guest_url
        for command, failure in clone_commands(source, mirror_url):
            status = ctx.run(f"exec 2>&1; cd {shlex.quote(ctx.home)} && {command}")
            if status != 0:
                ctx.say(failure)
                raise BuildFailed(f"{failure} ({source.url}, exit {status})")
