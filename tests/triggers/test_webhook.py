"""Webhook signing and delivery against a real HTTP server on loopback."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from trigger_helpers import HookServer, free_port

from buildworker.config import ConfigError, TriggersConfig
from buildworker.triggers.webhook import (
    WebhookSigner,
    is_public_address,
    load_signer,
    main,
    post_webhook,
    refuse_private,
)

SEED = base64.b64encode(bytes(range(32))).decode()


def verify(public_b64: str, body: bytes, nonce: str, signature_b64: str) -> None:
    """What a receiver does (docs/triggers.md): Ed25519 over body ‖ nonce."""
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_b64))
    key.verify(base64.b64decode(signature_b64), body + nonce.encode())


def test_signature_verifies_with_the_public_key_and_only_for_that_body() -> None:
    signer = WebhookSigner.from_base64(SEED)
    body = b'{"id":1,"status":"success"}'
    nonce, signature = signer.sign(body)
    assert len(nonce) == 16 and int(nonce, 16) >= 0
    verify(signer.public_key_b64(), body, nonce, signature)
    with pytest.raises(InvalidSignature):
        verify(signer.public_key_b64(), body.replace(b"success", b"failed"), nonce, signature)
    with pytest.raises(InvalidSignature):
        verify(signer.public_key_b64(), body, "0" * 16, signature)


def test_signature_matches_the_sr_ht_construction() -> None:
    # Given sr.ht's own recipe (core-go SignWebhook): ed25519.Sign(key, payload + nonce)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    expected = base64.b64encode(key.sign(b"payload" + b"00112233aabbccdd")).decode()
    # Then ours signs the same bytes (Ed25519 is deterministic)
    assert WebhookSigner.from_base64(SEED).sign(b"payload", "00112233aabbccdd") == (
        "00112233aabbccdd",
        expected,
    )


def test_load_signer_from_value_file_or_nothing(tmp_path: Path) -> None:
    assert load_signer(TriggersConfig()) is None
    key_file = tmp_path / "webhook.key"
    key_file.write_text(SEED + "\n")
    from_file = load_signer(TriggersConfig(webhook_key_file=str(key_file)))
    from_value = load_signer(TriggersConfig(webhook_key=SEED))
    assert from_file is not None and from_value is not None
    assert from_file.public_key_b64() == from_value.public_key_b64()


@pytest.mark.parametrize(
    "config,message",
    [
        (TriggersConfig(webhook_key="not base64!"), "triggers.webhook-key: expected a base64"),
        (
            TriggersConfig(webhook_key=base64.b64encode(b"short").decode()),
            "triggers.webhook-key: expected a base64 Ed25519 seed of 32 bytes",
        ),
        (TriggersConfig(webhook_key_file="/nonexistent/key"), "triggers.webhook-key-file"),
        (TriggersConfig(webhook_key=SEED, webhook_key_file="/x"), "not both"),
    ],
)
def test_bad_keys_are_config_errors_naming_the_key(config: TriggersConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_signer(config)


def test_post_delivers_signed_payload(hook_server: HookServer) -> None:
    signer = WebhookSigner.from_base64(SEED)
    body = json.dumps({"id": 5, "status": "failed"}).encode()
    outcome = post_webhook(hook_server.url, body, signer, timeout_s=5, allow_private=True)
    assert outcome.ok, outcome
    (request,) = hook_server.requests
    assert request.body == body
    assert request.headers["Content-Type"] == "application/json"
    verify(
        signer.public_key_b64(),
        request.body,
        request.headers["X-Payload-Nonce"],
        request.headers["X-Payload-Signature"],
    )


def test_unsigned_when_no_key(hook_server: HookServer) -> None:
    assert post_webhook(hook_server.url, b"{}", None, timeout_s=5, allow_private=True).ok
    assert "X-Payload-Signature" not in hook_server.requests[0].headers


def test_non_2xx_and_refused_connections_are_retryable_failures(hook_server: HookServer) -> None:
    hook_server.answers.extend([500, 302])
    failed = post_webhook(hook_server.url, b"{}", None, timeout_s=5, allow_private=True)
    assert not failed.ok and not failed.permanent
    assert failed.detail == "HTTP 500: boom"
    redirected = post_webhook(hook_server.url, b"{}", None, timeout_s=5, allow_private=True)
    assert not redirected.ok and redirected.detail.startswith("HTTP 302")
    refused = post_webhook(
        f"http://127.0.0.1:{free_port()}/", b"{}", None, timeout_s=5, allow_private=True
    )
    assert not refused.ok and not refused.permanent and "ConnectError" in refused.detail


def test_a_url_that_can_never_work_is_permanent() -> None:
    outcome = post_webhook("ftp://example.org/x", b"{}", None, timeout_s=5, allow_private=True)
    assert not outcome.ok and outcome.permanent


def test_genkey_and_pubkey_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["genkey"]) == 0
    seed = capsys.readouterr().out.strip()
    assert len(base64.b64decode(seed)) == 32
    conf = tmp_path / "w.conf"
    conf.write_text(f"[triggers]\nwebhook-key = {seed}\n")
    assert main(["pubkey", "--config", str(conf)]) == 0
    assert capsys.readouterr().out.strip() == WebhookSigner.from_base64(seed).public_key_b64()
    conf.write_text("[triggers]\n")
    assert main(["pubkey", "--config", str(conf)]) == 1
    conf.write_text(f"[triggers]\nwebhook-key = {secrets.token_hex(4)}\n")
    assert main(["pubkey", "--config", str(conf)]) == 2
    assert "triggers.webhook-key" in capsys.readouterr().err


@pytest.mark.parametrize(
    "address,public",
    [
        ("93.184.215.14", True),
        ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", True),
        ("127.0.0.1", False),
        ("10.0.2.2", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fc00::1", False),
        ("fe80::1%eth0", False),
        ("::ffff:127.0.0.1", False),
        ("not-an-ip", False),
    ],
)
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(address) is public


def fake_resolver(answers: dict[str, list[str]]) -> Callable[[str, int], list[str]]:
    """A fake DNS (the tests may not query real DNS): host → addresses."""

    def resolve(host: str, port: int) -> list[str]:
        if host not in answers:
            raise OSError("Name or service not known")
        return answers[host]

    return resolve


def test_refuse_private_checks_every_resolved_address() -> None:
    dns = fake_resolver(
        {
            "hooks.example.org": ["93.184.215.14"],
            "sneaky.example.org": ["93.184.215.14", "10.1.2.3"],
            "metadata.example.org": ["169.254.169.254"],
        }
    )
    assert refuse_private("https://hooks.example.org/x", dns) is None
    sneaky = refuse_private("https://sneaky.example.org/x", dns)
    assert sneaky is not None and sneaky.permanent and "10.1.2.3" in sneaky.detail
    metadata = refuse_private("http://metadata.example.org/latest", dns)
    assert metadata is not None and metadata.permanent
    unknown = refuse_private("http://nowhere.example.org/", dns)
    assert unknown is not None and not unknown.permanent  # DNS may come back: retried


def test_loopback_webhook_is_refused_by_default(hook_server: HookServer) -> None:
    outcome = post_webhook(hook_server.url, b"{}", None, timeout_s=5)
    assert not outcome.ok and outcome.permanent
    assert "webhook-allow-private" in outcome.detail
    assert hook_server.requests == []
