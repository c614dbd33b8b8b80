"""SQLAlchemy 2 declarative models: every table of the API tier.

The column names are a contract between the public API (engineer A) and the internal
API / publisher / reaper (engineer B): add columns, never rename or remove them.
Timestamps are timezone-aware UTC on every backend (see `UTCDateTime`).
"""

from __future__ import annotations

import secrets as _secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates

from buildworker.jobstate import JobStatus, TaskStatus, is_terminal

__all__ = [
    "JOB_STATUSES",
    "TASK_STATUSES",
    "TERMINAL_JOB_STATUSES",
    "Artifact",
    "Base",
    "Job",
    "JobGroup",
    "Outbox",
    "Secret",
    "SshKey",
    "Task",
    "Token",
    "TriggerDelivery",
    "UTCDateTime",
    "User",
    "Worker",
    "new_artifact_segment",
    "utcnow",
]

#: Job statuses, as DESIGN.md and builds.sr.ht name them (lowercase in REST); the state
#: machine that moves between them is buildworker.jobstate.
JOB_STATUSES = tuple(status.value for status in JobStatus)
TERMINAL_JOB_STATUSES = frozenset(status.value for status in JobStatus if is_terminal(status))
#: Task statuses.
TASK_STATUSES = tuple(status.value for status in TaskStatus)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_artifact_segment() -> str:
    """16 random hex characters: the unguessable part of artifact paths and URLs."""
    return _secrets.token_hex(8)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC and always read back timezone-aware.

    SQLite has no time zones and PostgreSQL `timestamp without time zone` neither; storing
    naive UTC everywhere keeps both backends (and Alembic's compare) identical.
    """

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # SQLite through raw SQL
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(256), unique=True, nullable=False)
    email: Mapped[str | None] = mapped_column(String(512), nullable=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    #: argon2 hash of the web sign-in password (buildworker.web.passwords); None: no sign-in
    password_hash: Mapped[str | None] = mapped_column(String(256), nullable=True)

    @property
    def canonical_name(self) -> str:
        return "~" + self.username


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    #: sha256 hex of the token; the token itself is never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    #: space-separated scopes, e.g. "jobs:read jobs:write".
    scopes: Mapped[str] = mapped_column(String(1024), nullable=False, default="")
    created: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    last_used: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)

    user: Mapped[User] = relationship(lazy="joined")


class JobGroup(Base):
    __tablename__ = "job_groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    #: list of trigger dicts ({action, condition, to, cc, in_reply_to} / {action, condition, url})
    triggers: Mapped[list[Any]] = mapped_column(JSON, nullable=False, default=list)

    owner: Mapped[User] = relationship(lazy="joined")
    jobs: Mapped[list[Job]] = relationship(back_populates="group", order_by="Job.id")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_owner_id_id", "owner_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    updated: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, default=utcnow, onupdate=utcnow
    )
    owner_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    group_id: Mapped[int | None] = mapped_column(
        ForeignKey("job_groups.id", ondelete="SET NULL"), nullable=True, index=True
    )
    manifest: Mapped[str] = mapped_column(Text, nullable=False)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    tags: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    #: the tags joined with "/" (as builds.sr.ht stores them), kept in step with `tags` by
    #: `_join_tags`, so tag pages and searches can match prefixes and substrings in SQL
    tag_string: Mapped[str] = mapped_column(Text, nullable=False, default="", server_default="")
    #: the image as the manifest names it (an alias such as debian/stable stays one here)
    image: Mapped[str] = mapped_column(String(128), nullable=False)
    arch: Mapped[str] = mapped_column(String(64), nullable=False)
    #: the release the image name meant at submit (debian/stable → debian/bookworm), then
    #: the one the worker booted; the job is routed by it. None for jobs from before 0007.
    image_release: Mapped[str | None] = mapped_column(String(128), nullable=True)
    #: the booted image's content digest (``sha256:...``, docs/images.md), reported by the
    #: worker; None until it booted, or when the image has none recorded
    image_digest: Mapped[str | None] = mapped_column(String(80), nullable=True)
    status: Mapped[str] = mapped_column(
        String(16), nullable=False, default=JobStatus.PENDING.value, index=True
    )
    secrets: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    #: the manifest's secret references (UUIDs or names) as parsed at submit, so the claim
    #: resolves them without parsing the manifest again; None for jobs from before 0006
    secret_refs: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    #: usernames with read access; "*" = public. The owner is always allowed.
    access_read: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=lambda: ["*"])
    #: usernames with write access (start/cancel). The owner is always allowed.
    access_write: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    runner: Mapped[str | None] = mapped_column(String(256), nullable=True)
    #: 0 until first enqueued; each (re)queue increments it.
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    lease_expires: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    artifact_segment: Mapped[str] = mapped_column(
        String(16), nullable=False, default=new_artifact_segment
    )

    owner: Mapped[User] = relationship(lazy="joined")
    group: Mapped[JobGroup | None] = relationship(back_populates="jobs")
    tasks: Mapped[list[Task]] = relationship(
        back_populates="job",
        order_by="Task.position",
        cascade="all, delete-orphan",
        lazy="selectin",
    )
    artifacts: Mapped[list[Artifact]] = relationship(
        back_populates="job", order_by="Artifact.id", cascade="all, delete-orphan"
    )

    @property
    def queue_image(self) -> str:
        """The image name the job's queue is keyed on: the resolved release, else (a job
        from before 0007) the name as submitted."""
        return self.image_release or self.image

    @validates("tags")
    def _join_tags(self, _key: str, tags: list[str] | None) -> list[str]:
        self.tag_string = "/".join(tags or [])
        return list(tags or [])


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("job_id", "name", name="uq_tasks_job_id_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True
    )
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    name: Mapped[str] = mapped_column(String(256), nullable=False)
    status: Mapped[str] = mapped_column(
        String(16), nullable=False, default=TaskStatus.PENDING.value
    )
    updated: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, default=utcnow, onupdate=utcnow
    )

    job: Mapped[Job] = relationship(back_populates="tasks")


class Artifact(Base):
    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True
    )
    created: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    #: the path in the guest, as written in the manifest
    path: Mapped[str] = mapped_column(String(4096), nullable=False)
    #: basename
    name: Mapped[str] = mapped_column(String(512), nullable=False)
    size: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    #: where the store keeps the bytes, relative to the store root
    storage_key: Mapped[str] = mapped_column(String(4096), nullable=False)

    job: Mapped[Job] = relationship(back_populates="artifacts")


class Secret(Base):
    __tablename__ = "secrets"
    __table_args__ = (UniqueConstraint("owner_id", "uuid", name="uq_secrets_owner_id_uuid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    uuid: Mapped[str] = mapped_column(String(36), nullable=False)
    name: Mapped[str | None] = mapped_column(String(512), nullable=True)
    #: ssh_key | pgp_key | plaintext_file
    type: Mapped[str] = mapped_column(String(32), nullable=False)
    #: Fernet token of the secret material (buildworker.api.crypto)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    mode: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)


class SshKey(Base):
    """A user's SSH public key (meta.sr.ht's ``sshkey``): who may log in to build hosts.

    A fingerprint is unique across all users, so a presented key names one user.
    """

    __tablename__ = "ssh_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    #: "<type> <base64>" (buildworker.ssh.keys.PublicKey.text)
    key: Mapped[str] = mapped_column(Text, nullable=False)
    #: "SHA256:<base64>" of the key blob, as ssh-keygen -l prints it
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    comment: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    last_used: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    user: Mapped[User] = relationship(lazy="joined")


class Worker(Base):
    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    #: ImageCatalogue.served(): [{"image", "arches", "default_arch"}, ...]
    images: Mapped[list[Any]] = mapped_column(JSON, nullable=False, default=list)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)


class Outbox(Base):
    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("job_id", "attempt", name="uq_outbox_job_id_attempt"),
        Index("ix_outbox_published_at", "published_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True
    )
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    created: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class TriggerDelivery(Base):
    """One trigger to deliver (email or webhook), written in the transaction that made its
    job (or the last job of its group) terminal and drained by buildworker.triggers.sender.

    A job trigger has ``job_id`` set and ``group_id`` NULL; a job-group trigger the reverse.
    ``index`` is the trigger's position in the manifest (or the group's list), so the unique
    constraints make recording idempotent: a trigger cannot be recorded, hence fired, twice.
    """

    __tablename__ = "trigger_deliveries"
    __table_args__ = (
        UniqueConstraint("job_id", "index", name="uq_trigger_deliveries_job_id_index"),
        UniqueConstraint("group_id", "index", name="uq_trigger_deliveries_group_id_index"),
        Index("ix_trigger_deliveries_status_next", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), nullable=True
    )
    group_id: Mapped[int | None] = mapped_column(
        ForeignKey("job_groups.id", ondelete="CASCADE"), nullable=True
    )
    index: Mapped[int] = mapped_column(Integer, nullable=False)
    #: email | webhook
    action: Mapped[str] = mapped_column(String(16), nullable=False)
    #: always | success | failure (it matched the terminal status when recorded)
    condition: Mapped[str] = mapped_column(String(16), nullable=False)
    #: the trigger's own fields: {to, cc, in_reply_to} or {url}
    details: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    #: the job's (or group's) terminal status the trigger fired for
    fired_status: Mapped[str] = mapped_column(String(16), nullable=False)
    #: pending | sent | failed
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    created: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
