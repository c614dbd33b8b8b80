"""Webhook delivery: POST the JSON payload, signed the way sr.ht signs webhooks.

``X-Payload-Nonce`` is 16 hex characters (8 random bytes) and ``X-Payload-Signature`` is
base64(Ed25519-sign(body ‖ nonce)) — core-go's ``SignWebhook``, so receivers written for
builds.sr.ht verify ours with the instance's public key (docs/triggers.md shows how).

The key is ``[triggers] webhook-key`` (or the file named by ``webhook-key-file``): a base64
32-byte Ed25519 seed, the format of sr.ht's ``[webhooks] private-key``.

Run ``python -m buildworker.triggers.webhook genkey`` for a new seed and
``python -m buildworker.triggers.webhook pubkey --config worker.conf`` for the public key
to hand to receivers.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import ipaddress
import secrets
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from buildworker.config import ConfigError, TriggersConfig, load_config
from buildworker.exitcodes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

__all__ = [
    "DeliveryOutcome",
    "WebhookSigner",
    "is_public_address",
    "load_signer",
    "post_webhook",
    "refuse_private",
]

Resolver = Callable[[str, int], list[str]]

#: Bytes of a receiver's answer kept in ``last_error`` (sr.ht logged the first 2048).
RESPONSE_EXCERPT = 2048


@dataclass(frozen=True)
class DeliveryOutcome:
    """How one delivery attempt went. ``permanent`` failures are not retried."""

    ok: bool
    detail: str
    permanent: bool = False


class WebhookSigner:
    """Signs payloads with an Ed25519 key made from a 32-byte seed."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)

    @classmethod
    def from_base64(cls, text: str) -> WebhookSigner:
        try:
            seed = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not valid base64") from None
        return cls(seed)

    def public_key_b64(self) -> str:
        raw = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return base64.b64encode(raw).decode("ascii")

    def sign(self, body: bytes, nonce: str | None = None) -> tuple[str, str]:
        """(nonce, signature) for ``body``: the two header values."""
        nonce = nonce if nonce is not None else secrets.token_hex(8)
        signature = self._key.sign(body + nonce.encode("ascii"))
        return nonce, base64.b64encode(signature).decode("ascii")


def load_signer(config: TriggersConfig) -> WebhookSigner | None:
    """The configured signer, or None when no key is configured.

    Raises:
        ConfigError: the key (or its file) is unusable; the message names the key.
    """
    if config.webhook_key and config.webhook_key_file:
        raise ConfigError("triggers.webhook-key: set webhook-key or webhook-key-file, not both")
    if config.webhook_key_file:
        try:
            text = Path(config.webhook_key_file).expanduser().read_text()
        except OSError as exc:
            raise ConfigError(
                f"triggers.webhook-key-file: cannot read {config.webhook_key_file}: {exc.strerror}"
            ) from None
        where = "triggers.webhook-key-file"
    elif config.webhook_key:
        text, where = config.webhook_key, "triggers.webhook-key"
    else:
        return None
    try:
        return WebhookSigner.from_base64(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: expected a base64 Ed25519 seed of 32 bytes ({exc})") from None


def _excerpt(response: httpx.Response) -> str:
    data = response.content[:RESPONSE_EXCERPT]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return f"<{len(response.content)} bytes, not UTF-8>"


def is_public_address(address: str) -> bool:
    """Whether ``address`` (an IP literal) is a globally routable unicast address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def refuse_private(url: str, resolve: Resolver = _resolve) -> DeliveryOutcome | None:
    """A failure when ``url``'s host resolves to any non-public address, else None.

    The API tier runs inside the operator's network and webhook URLs are user input: without
    this, a manifest could make it POST to the broker, the database or a cloud metadata
    service. (A DNS answer that changes between this check and the connection is not
    covered; operators who need that should also filter egress.)
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return DeliveryOutcome(False, f"invalid port in URL {url!r}", permanent=True)
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError) as exc:
        return DeliveryOutcome(False, f"cannot resolve {host!r}: {exc}")
    private = [address for address in addresses if not is_public_address(address)]
    if private or not addresses:
        return DeliveryOutcome(
            False,
            f"refused: {host} resolves to a non-public address ({', '.join(private)}); "
            "see [triggers] webhook-allow-private",
            permanent=True,
        )
    return None


def post_webhook(
    url: str,
    body: bytes,
    signer: WebhookSigner | None,
    *,
    timeout_s: float,
    allow_private: bool = False,
    resolve: Resolver = _resolve,
) -> DeliveryOutcome:
    """POST ``body`` to ``url``; ok on a 2xx answer.

    Redirects are not followed (a redirected POST would arrive as a GET without the
    payload, and could point at a private address). Any other answer or a transport error is
    a retryable failure; a URL that can never work (bad scheme, non-public address unless
    ``allow_private``) is permanent.
    """
    if not url.startswith(("http://", "https://")):
        return DeliveryOutcome(False, f"not an http(s) URL: {url!r}", permanent=True)
    if not allow_private:
        refused = refuse_private(url, resolve)
        if refused is not None:
            return refused
    headers = {"Content-Type": "application/json", "User-Agent": "buildworker-triggers"}
    if signer is not None:
        nonce, signature = signer.sign(body)
        headers["X-Payload-Nonce"] = nonce
        headers["X-Payload-Signature"] = signature
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=False) as client:
            response = client.post(url, content=body, headers=headers)
    except httpx.InvalidURL as exc:
        return DeliveryOutcome(False, f"invalid URL: {exc}", permanent=True)
    except httpx.HTTPError as exc:
        return DeliveryOutcome(False, f"{type(exc).__name__}: {exc}")
    if 200 <= response.status_code < 300:
        return DeliveryOutcome(True, f"HTTP {response.status_code}")
    return DeliveryOutcome(False, f"HTTP {response.status_code}: {_excerpt(response)}")


def main(argv: list[str] | None = None) -> int:
    """``genkey``: print a new base64 seed; ``pubkey``: print the configured public key."""
    parser = argparse.ArgumentParser(prog="python -m buildworker.triggers.webhook")
    parser.add_argument("action", choices=("genkey", "pubkey"))
    parser.add_argument("--config", help="worker.conf to read [triggers] from (pubkey)")
    args = parser.parse_args(argv)
    if args.action == "genkey":
        print(base64.b64encode(secrets.token_bytes(32)).decode("ascii"))
        return EXIT_OK
    try:
        signer = load_signer(load_config(args.config).triggers)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if signer is None:
        print("error: no [triggers] webhook-key or webhook-key-file configured", file=sys.stderr)
        return EXIT_FAILURE
    print(signer.public_key_b64())
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
