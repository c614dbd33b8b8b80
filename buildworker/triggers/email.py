"""Email delivery over SMTP, with verified STARTTLS (sr.ht skipped TLS verification).

`compose` builds the message (pure); `send` speaks SMTP. ``[mail] smtp-starttls``:

- ``auto``: upgrade with STARTTLS whenever the server offers it, verifying its certificate
  against the system CAs (or ``smtp-ca-file``); a bad certificate fails the attempt, it
  never falls back to plain text;
- ``required``: refuse to send when the server does not offer STARTTLS;
- ``off``: plain text.

The password is never sent over an unencrypted connection unless ``off`` says so.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formataddr, getaddresses, parseaddr

from buildworker.config import MailConfig
from buildworker.triggers.webhook import DeliveryOutcome

__all__ = ["STARTTLS_MODES", "AddressError", "compose", "parse_addresses", "send"]

STARTTLS_MODES = ("auto", "required", "off")


class AddressError(ValueError):
    """An address list that cannot be used; the message names the field."""


def parse_addresses(field: str, text: str | None) -> list[str]:
    """``"Alice <a@example.org>, b@example.org"`` → formatted addresses (RFC 5322 list)."""
    if not text:
        return []
    out = []
    for name, addr in getaddresses([text]):
        if not addr or "@" not in addr or addr.startswith("@") or addr.endswith("@"):
            raise AddressError(f"{field}: not an email address list: {text!r}")
        out.append(formataddr((name, addr)))
    return out


def compose(
    *,
    sender: str,
    to: Sequence[str],
    cc: Sequence[str],
    subject: str,
    body: str,
    message_id: str,
    in_reply_to: str | None = None,
) -> EmailMessage:
    """A text/plain UTF-8 message with builds.sr.ht's headers."""
    message = EmailMessage()
    message["From"] = sender
    if to:
        message["To"] = ", ".join(to)
    if cc:
        message["Cc"] = ", ".join(cc)
    message["Subject"] = subject
    message["Message-ID"] = message_id
    if in_reply_to:
        # sr.ht dropped in_reply_to from manifests (a decoding bug); we keep it, and thread.
        message["In-Reply-To"] = in_reply_to
        message["References"] = in_reply_to
    message.set_content(body, subtype="plain", charset="utf-8")
    return message


def _bare(address: str) -> str:
    return parseaddr(address)[1]


def _tls_context(config: MailConfig) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=config.smtp_ca_file or None)


def _hang_up(smtp: smtplib.SMTP) -> None:
    """QUIT and close; errors here come after the message was accepted (or the attempt
    already failed), so they must not turn a sent message into a retry — a duplicate."""
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        pass
    finally:
        smtp.close()


def send(config: MailConfig, message: EmailMessage) -> DeliveryOutcome:
    """Send ``message`` to its To and Cc recipients through ``[mail]``.

    Refused recipients and 5xx answers to the message are permanent failures; everything
    else (server down, timeouts, TLS problems, 4xx) is retried by the sender.
    """
    if not config.smtp_host:
        return DeliveryOutcome(False, "email is not configured ([mail] smtp-host is empty)")
    if not config.from_address:
        return DeliveryOutcome(False, "email is not configured ([mail] from-address is empty)")
    if config.smtp_starttls not in STARTTLS_MODES:
        return DeliveryOutcome(
            False, f"[mail] smtp-starttls must be one of {', '.join(STARTTLS_MODES)}"
        )
    headers = [str(value) for name in ("To", "Cc") for value in message.get_all(name) or []]
    recipients = [addr for _name, addr in getaddresses(headers) if addr]
    if not recipients:
        return DeliveryOutcome(False, "no recipients", permanent=True)
    smtp: smtplib.SMTP | None = None
    try:
        smtp = smtplib.SMTP(config.smtp_host, config.smtp_port, timeout=config.smtp_timeout)
        smtp.ehlo()
        encrypted = False
        if config.smtp_starttls != "off" and smtp.has_extn("starttls"):
            smtp.starttls(context=_tls_context(config))
            smtp.ehlo()
            encrypted = True
        elif config.smtp_starttls == "required":
            return DeliveryOutcome(
                False, "the SMTP server does not offer STARTTLS ([mail] smtp-starttls)"
            )
        if config.smtp_user:
            if not encrypted and config.smtp_starttls != "off":
                return DeliveryOutcome(False, "refusing to send the SMTP password without TLS")
            smtp.login(config.smtp_user, config.smtp_password)
        refused = smtp.send_message(
            message, from_addr=_bare(config.from_address), to_addrs=recipients
        )
    except smtplib.SMTPRecipientsRefused as exc:
        which = ", ".join(f"{rcpt}: {code}" for rcpt, (code, _msg) in exc.recipients.items())
        return DeliveryOutcome(False, f"recipients refused ({which})", permanent=True)
    except (smtplib.SMTPDataError, smtplib.SMTPSenderRefused) as exc:
        error = exc.smtp_error
        text = error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)
        return DeliveryOutcome(
            False, f"SMTP {exc.smtp_code}: {text}", permanent=500 <= exc.smtp_code < 600
        )
    except ssl.SSLError as exc:
        return DeliveryOutcome(False, f"TLS: {exc}")
    except (smtplib.SMTPException, OSError) as exc:  # OSError covers timeouts
        return DeliveryOutcome(False, f"{type(exc).__name__}: {exc}")
    finally:
        if smtp is not None:
            _hang_up(smtp)
    accepted = [rcpt for rcpt in recipients if rcpt not in refused]
    detail = f"sent to {', '.join(accepted)}"
    if refused:
        detail += f"; refused: {', '.join(sorted(refused))}"
    return DeliveryOutcome(True, detail)
