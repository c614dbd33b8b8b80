"""The sender against real servers: aiosmtpd on loopback and a stdlib HTTP server."""

from __future__ import annotations

import base64
import datetime as dt
import json
import ssl
import time
from email.message import Message
from email.utils import getaddresses
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from trigger_helpers import (
    CREATED,
    ORIGIN,
    HookServer,
    SmtpServer,
    add_job,
    add_user,
    manifest_with,
)

from buildworker.config import ApiConfig, Config, MailConfig, TriggersConfig
from buildworker.db.models import Job, JobGroup, TriggerDelivery, utcnow
from buildworker.triggers import sender as sender_module
from buildworker.triggers.dispatch import record_job_triggers
from buildworker.triggers.sender import TriggerSender
from buildworker.triggers.webhook import WebhookSigner

SEED = base64.b64encode(bytes(range(32))).decode()
PUBLIC = WebhookSigner.from_base64(SEED).public_key_b64()


def text_of(message: Message) -> str:
    data = message.get_payload(decode=True)
    assert isinstance(data, bytes)
    return data.decode("utf-8")


class Clock:
    """A clock the test moves forward (the sender never sleeps on it)."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def config(smtp_port: int = 9, **triggers: object) -> Config:
    # The test servers listen on loopback, which webhooks refuse by default.
    settings: dict[str, object] = {
        "webhook_key": SEED,
        "retry_backoff": 30.0,
        "webhook_allow_private": True,
    }
    settings.update(triggers)
    return Config(
        api=ApiConfig(origin=ORIGIN),
        mail=MailConfig(
            smtp_host="127.0.0.1",
            smtp_port=smtp_port,
            from_address="buildworker <ci@example.org>",
            smtp_timeout=5.0,
        ),
        triggers=TriggersConfig(**settings),  # type: ignore[arg-type]
    )


def finished_job(
    sessions: sessionmaker[Session], triggers: str, status: str = "failed", **job: object
) -> int:
    """A job with ``triggers`` that just ended with ``status``, as the API tier ends it."""
    with sessions() as session:
        row = add_job(
            session,
            add_user(session),
            manifest=manifest_with(triggers),
            tags=["proj", "main"],
            note="Fix the frobnicator",
            task_statuses={"build": "success", "_hidden": "success", "test": "failed"},
            **job,  # type: ignore[arg-type]
        )
        session.commit()
        session.execute(
            update(Job)
            .where(Job.id == row.id)
            .values(status=status, updated=row.updated)
            .execution_options(synchronize_session=False)
        )
        record_job_triggers(session, row.id)
        session.commit()
        return row.id


def the_delivery(sessions: sessionmaker[Session]) -> TriggerDelivery:
    with sessions() as session:
        (row,) = session.scalars(select(TriggerDelivery))
        return row


def webhook_trigger(url: str, condition: str = "always") -> str:
    return f"  - action: webhook\n    condition: {condition}\n    url: {url}\n"


# --- webhooks --------------------------------------------------------------------------------


def test_webhook_retried_after_500s_is_delivered_once(
    sessions: sessionmaker[Session], hook_server: HookServer
) -> None:
    # Given a receiver that answers 500 twice, then 200
    hook_server.answers.extend([500, 500])
    job_id = finished_job(sessions, webhook_trigger(hook_server.url))
    clock = Clock()
    sender = TriggerSender(sessions, config(), clock=clock)
    # When the sender tries, waits out the backoff (30 s, then 60 s) and tries again
    assert sender.run_once() == 1
    row = the_delivery(sessions)
    assert (row.status, row.attempts, row.last_error) == ("pending", 1, "HTTP 500: boom")
    assert sender.run_once() == 0  # not due yet
    clock.advance(30)
    assert sender.run_once() == 1
    clock.advance(59)
    assert sender.run_once() == 0  # the second wait is 60 s
    clock.advance(1)
    assert sender.run_once() == 1
    # Then it was delivered once, on the third attempt
    row = the_delivery(sessions)
    assert (row.status, row.attempts, row.last_error) == ("sent", 3, None)
    assert row.sent_at == clock.now
    assert len(hook_server.requests) == 3
    clock.advance(3600)
    assert sender.run_once() == 0
    assert len(hook_server.requests) == 3
    # And the payload is the job's, signed with the configured key
    request = hook_server.requests[-1]
    payload = json.loads(request.body)
    assert payload["id"] == job_id and payload["status"] == "failed"
    assert payload["tasks"][0] == {
        "name": "build",
        "status": "success",
        "log": f"{ORIGIN}/logs/{job_id}/build/log",
    }
    assert payload["owner"] == {"canonical_name": "~alice", "name": "alice"}
    Ed25519PublicKey.from_public_bytes(base64.b64decode(PUBLIC)).verify(
        base64.b64decode(request.headers["X-Payload-Signature"]),
        request.body + request.headers["X-Payload-Nonce"].encode(),
    )


def test_delivery_fails_after_max_attempts(
    sessions: sessionmaker[Session], hook_server: HookServer
) -> None:
    hook_server.answers.extend([503] * 10)
    finished_job(sessions, webhook_trigger(hook_server.url))
    clock = Clock()
    sender = TriggerSender(sessions, config(max_attempts=3, retry_backoff=1.0), clock=clock)
    for _ in range(6):
        sender.run_once()
        clock.advance(10)
    row = the_delivery(sessions)
    assert (row.status, row.attempts) == ("failed", 3)
    assert row.last_error == "HTTP 503: boom"
    assert len(hook_server.requests) == 3


def test_two_senders_do_not_deliver_one_trigger_twice(
    sessions: sessionmaker[Session], hook_server: HookServer
) -> None:
    finished_job(sessions, webhook_trigger(hook_server.url))
    first = TriggerSender(sessions, config())
    second = TriggerSender(sessions, config())
    # Both saw the row as due; only one wins the claim (attempts 0 → 1)
    with sessions() as session:
        (row,) = session.scalars(select(TriggerDelivery))
    assert first._attempt(row.id, 0) is True
    assert second._attempt(row.id, 0) is False
    assert second.run_once() == 0
    assert len(hook_server.requests) == 1


def test_conditions_unmet_send_nothing(
    sessions: sessionmaker[Session], hook_server: HookServer
) -> None:
    finished_job(sessions, webhook_trigger(hook_server.url, "success"), status="failed")
    assert TriggerSender(sessions, config()).run_once() == 0
    assert hook_server.requests == []


def test_the_background_thread_delivers(
    sessions: sessionmaker[Session], hook_server: HookServer
) -> None:
    state = SimpleNamespace(sessionmaker=sessions, config=config(poll=0.05))
    stop = sender_module.start(state)
    try:
        finished_job(sessions, webhook_trigger(hook_server.url))
        state.trigger_sender.wake()
        deadline = time.monotonic() + 10
        while the_delivery(sessions).status != "sent" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop()
    assert the_delivery(sessions).status == "sent"
    assert len(hook_server.requests) == 1


# --- email -----------------------------------------------------------------------------------

EMAIL_TRIGGER = """\
  - action: email
    condition: failure
    to: Alice Doe <alice@example.org>, bob@example.org
    cc: oncall@example.org
    in_reply_to: <patch-1@lists.example.org>
"""


def test_email_is_received_with_builds_sr_ht_headers_and_body(
    sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    smtp_server.start()
    job_id = finished_job(sessions, EMAIL_TRIGGER, status="failed")
    sender = TriggerSender(sessions, config(smtp_server.port))
    assert sender.run_once() == 1
    assert the_delivery(sessions).status == "sent"
    (received,) = smtp_server.sink.received
    assert received.mail_from == "ci@example.org"
    assert sorted(received.rcpt_tos) == [
        "alice@example.org",
        "bob@example.org",
        "oncall@example.org",
    ]
    message = received.message
    assert message["Subject"] == "[proj/main] build failed"
    assert message["From"] == "buildworker <ci@example.org>"
    assert getaddresses([message["To"]]) == [
        ("Alice Doe", "alice@example.org"),
        ("", "bob@example.org"),
    ]
    assert message["Cc"] == "oncall@example.org"
    assert message["In-Reply-To"] == "<patch-1@lists.example.org>"
    assert message["Message-ID"].startswith(f"<buildworker.{the_delivery(sessions).id}.")
    assert message.get_content_type() == "text/plain"
    body = text_of(message).replace("\r\n", "\n")
    assert body == (
        f"proj/main #{job_id}: FAILED in 2m13s\n\n"
        "Fix the frobnicator\n\n"
        f"{ORIGIN}/~alice/job/{job_id}\n\n"
        "✓ build ✗ test \n"
    )


def test_smtp_down_is_retried_later_not_lost(
    sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    # Given the SMTP server is down when the job ends
    finished_job(sessions, EMAIL_TRIGGER, status="timeout")
    clock = Clock()
    sender = TriggerSender(sessions, config(smtp_server.port), clock=clock)
    assert sender.run_once() == 1
    row = the_delivery(sessions)
    assert row.status == "pending" and row.attempts == 1
    assert "Connection refused" in (row.last_error or "")
    # When it comes back and the backoff has passed
    smtp_server.start()
    clock.advance(30)
    assert sender.run_once() == 1
    # Then the mail arrives, once
    assert the_delivery(sessions).status == "sent"
    assert [r.message["Subject"] for r in smtp_server.sink.received] == [
        "[proj/main] build timeout"
    ]


def test_group_email_end_to_end(sessions: sessionmaker[Session], smtp_server: SmtpServer) -> None:
    smtp_server.start()
    with sessions() as session:
        owner = add_user(session)
        group = JobGroup(
            owner_id=owner.id,
            note="release",
            created=CREATED,
            triggers=[{"action": "email", "condition": "always", "to": "team@example.org"}],
        )
        session.add(group)
        session.flush()
        jobs = [
            add_job(session, owner, manifest=manifest_with("  []"), group=group, tags=tags)
            for tags in (["proj", "a"], ["proj", "b"])
        ]
        session.commit()
        for job, status in zip(jobs, ("success", "failed"), strict=True):
            session.execute(
                update(Job)
                .where(Job.id == job.id)
                .values(status=status, updated=job.updated)
                .execution_options(synchronize_session=False)
            )
            record_job_triggers(session, job.id)
            session.commit()
    assert TriggerSender(sessions, config(smtp_server.port)).run_once() == 1
    (received,) = smtp_server.sink.received
    assert received.message["Subject"] == "[proj] build failed"
    body = text_of(received.message).replace("\r\n", "\n")
    a, b = (job.id for job in jobs)
    assert body == (
        "proj: FAILED in 2m13s\n\nrelease\n\n"
        f"✓ #{a} SUCCESS proj/a {ORIGIN}/~alice/job/{a}\n"
        f"✗ #{b} FAILED  proj/b {ORIGIN}/~alice/job/{b}\n"
    )


# --- STARTTLS ----------------------------------------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "smtp.pem", tmp_path / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_smtp(smtp_server: SmtpServer, tmp_path: Path) -> tuple[SmtpServer, Path]:
    """The SMTP server offering (and requiring) STARTTLS with a self-signed certificate."""
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    smtp_server.start(tls_context=context, require_starttls=True)
    return smtp_server, cert


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_starttls_verifies_the_server_certificate(
    sessions: sessionmaker[Session], tls_smtp: tuple[SmtpServer, Path]
) -> None:
    server, cert = tls_smtp
    finished_job(sessions, EMAIL_TRIGGER, status="failed")
    clock = Clock()
    # Given a certificate the system does not trust: the attempt fails, nothing is sent
    untrusting = TriggerSender(sessions, config(server.port), clock=clock)
    assert untrusting.run_once() == 1
    row = the_delivery(sessions)
    assert row.status == "pending" and "CERTIFICATE_VERIFY_FAILED" in (row.last_error or "")
    assert server.sink.received == []
    # When the operator names the CA: sent, over TLS
    base = config(server.port)
    trusting_config = Config(
        api=base.api,
        mail=MailConfig(**{**base.mail.__dict__, "smtp_ca_file": str(cert)}),
        triggers=base.triggers,
    )
    clock.advance(30)
    assert TriggerSender(sessions, trusting_config, clock=clock).run_once() == 1
    assert the_delivery(sessions).status == "sent"
    assert len(server.sink.received) == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_required_starttls_refuses_a_plain_server(
    sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    smtp_server.start()  # no STARTTLS offered
    finished_job(sessions, EMAIL_TRIGGER, status="failed")
    base = config(smtp_server.port)
    strict = Config(
        api=base.api,
        mail=MailConfig(**{**base.mail.__dict__, "smtp_starttls": "required"}),
        triggers=base.triggers,
    )
    assert TriggerSender(sessions, strict).run_once() == 1
    row = the_delivery(sessions)
    assert row.status == "pending" and "does not offer STARTTLS" in (row.last_error or "")
    assert smtp_server.sink.received == []


def test_old_finished_deliveries_are_pruned(
    sessions: sessionmaker[Session], hook_server: HookServer
) -> None:
    hook_server.answers.append(400)
    finished_job(sessions, webhook_trigger(hook_server.url) + webhook_trigger(hook_server.url))
    clock = Clock()
    sender = TriggerSender(sessions, config(max_attempts=1), clock=clock)
    assert sender.run_once() == 2  # one failed (400, last attempt), one sent
    with sessions() as session:
        pending = TriggerDelivery(
            job_id=None,
            group_id=None,
            index=0,
            action="webhook",
            condition="always",
            details={},
            fired_status="success",
            status="pending",
            attempts=0,
            next_attempt_at=clock.now + dt.timedelta(days=365),
            created=clock.now,
        )
        session.add(pending)
        session.commit()
    with sessions() as session:
        assert sorted(r.status for r in session.scalars(select(TriggerDelivery))) == [
            "failed",
            "pending",
            "sent",
        ]
    clock.advance(29 * 86400)
    assert sender.prune() == 0
    clock.advance(2 * 86400)
    assert sender.prune() == 2
    with sessions() as session:
        # an undelivered one is never pruned
        assert [r.status for r in session.scalars(select(TriggerDelivery))] == ["pending"]
