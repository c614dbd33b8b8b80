"""Copy artifacts out of the guest after success, size-capped, and hand them to the reporter."""

from __future__ import annotations

import tempfile
from typing import BinaryIO, cast

from buildworker.worker.context import BuildContext
from buildworker.worker.errors import BuildFailed, Cancelled


def guest_path(home: str, path: str) -> str:
    """Artifact paths are literal; relative ones are relative to the home directory."""
    return path if path.startswith("/") else f"{home.rstrip('/')}/{path}"


def run(ctx: BuildContext) -> None:
    artifacts = ctx.manifest.artifacts
    if not artifacts:
        return
    ctx.say("Uploading artifacts")
    for path in artifacts:
        ctx.cancel.raise_if_set()
        full = guest_path(ctx.home, path)
        with tempfile.SpooledTemporaryFile(max_size=8 * 1024**2) as spool:
            try:
                size = ctx.download(full, cast(BinaryIO, spool), ctx.max_artifact_bytes)
            except BuildFailed as exc:  # missing or too large; the rest is not the build's
                ctx.say(f"Error: could not copy artifact {path}: {exc}")
                if "~" in path:
                    ctx.say("You probably need to remove ~/ from the artifact path.")
                raise BuildFailed(f"artifact {path}: {exc}") from exc
            spool.seek(0)
            try:
                url = ctx.reporter.upload_artifact(path, spool, size)
            except Cancelled:
                raise
            except Exception as exc:  # whatever the reporter hit (API refusal or outage, a
                # local copy that failed), the artifact is lost and so is the build's result
                ctx.say(f"Error: could not store artifact {path}: {exc}")
                raise BuildFailed(f"artifact {path}: upload failed: {exc}") from exc
        ctx.say(f"Uploaded {path} ({size} bytes): {url}")
