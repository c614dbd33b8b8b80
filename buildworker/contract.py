"""The internal worker API's contract: every request and answer body, as pydantic models.

The API (`buildworker.api.internal`) validates requests with these and answers with them;
the worker's client (`buildworker.worker.apiclient`) sends them and validates the answers,
so the two sides cannot drift apart silently: a field renamed on one side fails the
other's validation with the field's name. docs/api.md describes the same bodies in prose.

Requests ignore unknown fields (an older API meets a newer worker during an upgrade);
answers too, for the same reason the other way round.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from buildworker.jobstate import FinishedStatus, TaskStatus

__all__ = [
    "SETUP_LOG_SEGMENT",
    "ArtifactAnswer",
    "AttemptBody",
    "ClaimAnswer",
    "ClaimBody",
    "ClaimedSecret",
    "FinishBody",
    "HeartbeatAnswer",
    "ImageBody",
    "LogAnswer",
    "RegisterBody",
    "ReleaseBody",
    "ServedImage",
    "TaskBody",
]

#: The path segment of the setup log in ``PUT /jobs/{id}/logs/{log}`` (task logs have their
#: own path, so a task may be called "setup" too). Not the worker's stream key for it
#: (`buildworker.worker.logs.SETUP_LOG`, ``#setup``, which no task name can be).
SETUP_LOG_SEGMENT = "setup"

_INT32 = 2**31 - 1


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --- requests ---------------------------------------------------------------------------


class ServedImage(_Body):
    image: str = Field(min_length=1, max_length=128)
    arches: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(max_length=64)
    default_arch: str | None = Field(default=None, max_length=64)
    #: the real release an alias (a symlink) points to; the API resolves aliases with it
    release: str | None = Field(default=None, max_length=128)


class RegisterBody(_Body):
    name: str = Field(min_length=1, max_length=256)
    images: list[ServedImage] = Field(max_length=1024)


class ClaimBody(_Body):
    worker: str = Field(min_length=1, max_length=256)
    attempt: int = Field(ge=1, le=_INT32)


class AttemptBody(_Body):
    attempt: int = Field(ge=1, le=_INT32)


class TaskBody(AttemptBody):
    status: TaskStatus


class FinishBody(AttemptBody):
    status: FinishedStatus
    reason: str | None = Field(default=None, max_length=4096)
    infrastructure: bool = False


class ImageBody(AttemptBody):
    """Which image the worker booted for the job (reported once it resolved it)."""

    #: the image's canonical name (the release directory, e.g. debian/bookworm)
    release: str = Field(min_length=1, max_length=128)
    arch: str = Field(min_length=1, max_length=64)
    #: the content digest recorded in its config.yml; None: the image has none recorded
    digest: str | None = Field(default=None, pattern=r"^sha256:[0-9a-f]{64}$")


class ReleaseBody(AttemptBody):
    reason: str | None = Field(default=None, max_length=4096)


# --- answers ----------------------------------------------------------------------------


class ClaimedSecret(_Body):
    """One secret the job's manifest references, decrypted (``data_b64``)."""

    uuid: str
    name: str | None = None
    type: str
    data_b64: str = Field(repr=False)
    path: str | None = None
    mode: int | str | None = None
    #: the reference as the manifest wrote it (UUID or name)
    ref: str | None = None


class ClaimAnswer(_Body):
    """What a won claim hands the worker: the job to run."""

    job_id: int
    attempt: int
    manifest: str
    secrets: list[ClaimedSecret] = Field(default_factory=list)
    job_url: str = ""
    owner: str = ""
    owner_canonical_name: str = ""
    owner_email: str | None = None
    image: str
    #: the release the image name resolved to at submit (what to boot); None from an API
    #: older than the resolution, whose worker resolves ``image`` itself
    image_release: str | None = None
    arch: str | None = None
    note: str | None = None
    tags: list[str] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list)
    secrets_enabled: bool = True
    lease_seconds: float
    timeout_seconds: float | None = None
    #: when this attempt was queued (ISO 8601, UTC): the start of its queue wait
    queued_at: str | None = None


class HeartbeatAnswer(_Body):
    #: the job was cancelled: stop the build
    cancelled: bool = False


class LogAnswer(_Body):
    #: the log's size after the append
    size: int


class ArtifactAnswer(_Body):
    name: str
    url: str
    size: int
