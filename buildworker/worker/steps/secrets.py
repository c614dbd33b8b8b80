"""Install the job's secrets by type (spec §5.2), only when the job's secrets flag is on.

The claim leaves ``secrets`` empty when the flag is off, so an empty list is the off switch.
Every value was added to the job's redactor before this step runs (see runner).
"""

from __future__ import annotations

import shlex

from buildworker.worker.context import BuildContext, SecretMaterial, home_path
from buildworker.worker.errors import BuildFailed

#: Where secrets wait in the guest before they are moved into place (never world-readable).
STAGING = "/tmp/.buildworker-secret-"


def _label(ctx: BuildContext, secret: SecretMaterial) -> str:
    """The file name under ~/.ssh: the manifest's reference (uuid or name), made safe."""
    for candidate in (secret.uuid, secret.name):
        if candidate and candidate in ctx.manifest.secrets:
            label = candidate
            break
    else:
        label = secret.uuid
    if not label or "/" in label or label.startswith("."):
        label = secret.uuid or "secret"
    return label


def run(ctx: BuildContext) -> None:
    if not ctx.spec.secrets:
        return
    ctx.say("Sending secrets")
    home = ctx.home.rstrip("/")
    first_ssh_key = True
    for secret in ctx.spec.secrets:
        ctx.say(f"Installing secret {secret.uuid}")
        if secret.type == "ssh_key":
            label = _label(ctx, secret)
            if ctx.run(f"mkdir -p {home}/.ssh && chmod 700 {home}/.ssh") != 0:
                raise BuildFailed("could not create ~/.ssh in the guest")
            data = secret.data if secret.data.endswith(b"\n") else secret.data + b"\n"
            ctx.upload(f"{home}/.ssh/{label}", data, 0o600)
            if first_ssh_key:
                first_ssh_key = False
                if label != "id_rsa":
                    ctx.run(f"ln -sf {shlex.quote(label)} {home}/.ssh/id_rsa")
        elif secret.type == "pgp_key":
            staged = STAGING + secret.uuid
            ctx.upload(staged, secret.data, 0o600)
            status = ctx.run(
                f"exec 2>&1; gpg --batch --import {staged}; s=$?; rm -f {staged}; exit $s"
            )
            if status != 0:
                raise BuildFailed(f"gpg --import of secret {secret.uuid} failed (exit {status})")
        elif secret.type == "plaintext_file":
            if not secret.path:
                raise BuildFailed(f"secret {secret.uuid} has no file path")
            staged = STAGING + secret.uuid
            target = home_path(ctx.home, secret.path)
            mode = f"{secret.mode if secret.mode is not None else 0o600:o}"
            ctx.upload(staged, secret.data, 0o600)
            status = ctx.run(
                f'exec 2>&1; mkdir -p "$(dirname {target})" && mv -f {staged} {target}'
                f" && chmod {mode} {target}"
            )
            if status != 0:
                raise BuildFailed(f"could not write secret {secret.uuid} to {secret.path}")
        else:  # from_claim already refuses other types
            raise BuildFailed(f"secret {secret.uuid}: unknown type {secret.type}")
