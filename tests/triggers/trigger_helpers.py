"""Plain helpers for the trigger tests: rows, servers' records (no fixtures here)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller
from sqlalchemy.orm import Session

from buildworker.db.models import Job, JobGroup, Task, User

ORIGIN = "https://ci.example.org"
CREATED = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def manifest_with(triggers: str, tasks: tuple[str, ...] = ("build", "_hidden", "test")) -> str:
    lines = ["image: debian/bookworm", "tasks:"]
    lines += [f"  - {name}: echo {name}" for name in tasks]
    lines.append("triggers:")
    lines.append(triggers)
    return "\n".join(lines) + "\n"


def add_user(session: Session, name: str = "alice") -> User:
    user = User(username=name, email=f"{name}@example.org")
    session.add(user)
    session.flush()
    return user


def add_job(
    session: Session,
    owner: User,
    *,
    manifest: str,
    status: str = "running",
    tags: list[str] | None = None,
    note: str | None = None,
    runner: str | None = "host1",
    group: JobGroup | None = None,
    task_statuses: dict[str, str] | None = None,
    duration_s: float = 133,
) -> Job:
    job = Job(
        owner_id=owner.id,
        manifest=manifest,
        image="debian/bookworm",
        arch="amd64",
        status=status,
        tags=tags or [],
        note=note,
        runner=runner,
        attempt=1,
        group_id=group.id if group else None,
        created=CREATED,
        updated=CREATED + timedelta(seconds=duration_s),
    )
    session.add(job)
    session.flush()
    for position, (name, task_status) in enumerate((task_statuses or {}).items()):
        session.add(Task(job_id=job.id, position=position, name=name, status=task_status))
    session.flush()
    return job


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: Message


@dataclass
class SmtpSink:
    """The messages a real aiosmtpd server accepted."""

    received: list[Received] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(
            Received(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                message=message_from_bytes(envelope.original_content or envelope.content),
            )
        )
        return "250 OK"


@dataclass
class SmtpServer:
    sink: SmtpSink
    port: int
    controller: Controller | None = None

    def start(self, **kwargs: Any) -> None:
        self.controller = Controller(self.sink, hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@dataclass
class HookRequest:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HookServer:
    url: str
    requests: list[HookRequest]
    #: status codes to answer, in order; 200 once exhausted
    answers: list[int]
