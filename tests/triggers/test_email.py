"""The SMTP adapter alone, against a real aiosmtpd server on loopback."""

from __future__ import annotations

from email.message import EmailMessage

import pytest
from trigger_helpers import SmtpServer

from buildworker.config import MailConfig
from buildworker.triggers.email import AddressError, compose, parse_addresses, send


def message(to: list[str], cc: list[str] | None = None) -> EmailMessage:
    return compose(
        sender="builds <ci@example.org>",
        to=to,
        cc=cc or [],
        subject="[x] build success",
        body="Job #1: SUCCESS in 1s\n",
        message_id="<m1@example.org>",
    )


def mail_config(port: int, **changes: object) -> MailConfig:
    values: dict[str, object] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "from_address": "builds <ci@example.org>",
        "smtp_timeout": 5.0,
    }
    values.update(changes)
    return MailConfig(**values)  # type: ignore[arg-type]


def test_parse_addresses() -> None:
    assert parse_addresses("to", '"Doe, Jane" <jane@example.org>, bob@example.org') == [
        '"Doe, Jane" <jane@example.org>',
        "bob@example.org",
    ]
    assert parse_addresses("cc", None) == []
    with pytest.raises(AddressError, match=r"^to: not an email address list"):
        parse_addresses("to", "not an address")


def test_recipients_with_commas_in_names_get_one_message(smtp_server: SmtpServer) -> None:
    smtp_server.start()
    to = parse_addresses("to", '"Doe, Jane" <jane@example.org>')
    cc = parse_addresses("cc", "bob@example.org")
    outcome = send(mail_config(smtp_server.port), message(to, cc))
    assert outcome.ok, outcome
    (received,) = smtp_server.sink.received
    assert sorted(received.rcpt_tos) == ["bob@example.org", "jane@example.org"]
    assert received.message["Message-ID"] == "<m1@example.org>"


def test_unconfigured_email_is_a_retryable_failure_naming_the_key() -> None:
    outcome = send(MailConfig(), message(["a@example.org"]))
    assert not outcome.ok and not outcome.permanent
    assert "[mail] smtp-host" in outcome.detail


def test_password_is_not_sent_in_clear(smtp_server: SmtpServer) -> None:
    smtp_server.start()  # offers no STARTTLS
    config = mail_config(smtp_server.port, smtp_user="ci", smtp_password="hunter2")
    outcome = send(config, message(["a@example.org"]))
    assert not outcome.ok and "without TLS" in outcome.detail
    assert smtp_server.sink.received == []


def test_bad_starttls_mode_is_named() -> None:
    outcome = send(
        mail_config(9, smtp_starttls="sometimes"),
        message(["a@example.org"]),
    )
    assert not outcome.ok and "smtp-starttls" in outcome.detail
