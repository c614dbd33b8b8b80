"""Public keys are parsed by cryptography and validated: type, size, one key, SHA256 print."""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from buildworker.ssh.keys import MIN_RSA_BITS, InvalidKey, parse_public_key

from .conftest import fingerprint


@pytest.mark.parametrize(
    ("kind", "bits", "expected_bits"),
    [("ed25519", None, 256), ("ecdsa", 384, 384), ("rsa", 3072, 3072), ("rsa", 2048, 2048)],
)
def test_keys_made_by_ssh_keygen_are_accepted_with_their_fingerprint(
    make_key: Callable[..., Path], kind: str, bits: int | None, expected_bits: int
) -> None:
    pub = make_key(f"ok-{kind}-{bits}", kind, bits).with_suffix(".pub")
    key = parse_public_key(pub.read_text())
    assert key.bits == expected_bits
    # the fingerprint is the one ssh-keygen (and sshd's log) shows
    assert key.fingerprint == fingerprint(pub)
    assert key.comment == f"ok-{kind}-{bits}@test"
    assert key.line == pub.read_text().strip()


def test_small_rsa_keys_are_refused_with_the_size(make_key: Callable[..., Path]) -> None:
    pub = make_key("small", "rsa", 1024).with_suffix(".pub")
    with pytest.raises(InvalidKey, match=f"at least {MIN_RSA_BITS} bits \\(this one has 1024\\)"):
        parse_public_key(pub.read_text())


def test_dsa_keys_are_refused(make_key: Callable[..., Path]) -> None:
    pub = make_key("dsa", "dsa").with_suffix(".pub")
    with pytest.raises(InvalidKey, match="DSA keys are refused"):
        parse_public_key(pub.read_text())


def _sk_ed25519_line() -> str:
    def string(data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + data

    blob = string(b"sk-ssh-ed25519@openssh.com") + string(b"\x07" * 32) + string(b"ssh:")
    return "sk-ssh-ed25519@openssh.com " + base64.b64encode(blob).decode() + " token"


def test_fido_keys_are_accepted() -> None:
    key = parse_public_key(_sk_ed25519_line())
    assert key.type == "sk-ssh-ed25519@openssh.com" and key.kind == "Ed25519-SK"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the key is empty"),
        ("   \n", "the key is empty"),
        ("hello", "start with its type"),
        ("hello world", "unsupported key type 'hello'"),
        ('from="10.0.0.1" ssh-ed25519 AAAA', "options are not accepted"),
        ("ssh-ed25519", "no key data"),
        ("ssh-ed25519 not*base64", "not valid base64"),
        ("ssh-ed25519 AAAA", "too short"),
        ("ssh-foo AAAA", "unsupported key type 'ssh-foo'"),
        ("ssh-ed25519-cert-v01@openssh.com AAAA", "certificates are not accepted"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "never a private key"),
    ],
)
def test_bad_keys_say_why(text: str, message: str) -> None:
    with pytest.raises(InvalidKey, match=message):
        parse_public_key(text)


def test_a_key_whose_data_is_another_type_is_refused(make_key: Callable[..., Path]) -> None:
    data = make_key("typed").with_suffix(".pub").read_text().split()[1]
    with pytest.raises(InvalidKey, match="says it is ssh-rsa but its data is ssh-ed25519"):
        parse_public_key(f"ssh-rsa {data}")


def test_two_keys_at_once_are_refused(make_key: Callable[..., Path]) -> None:
    one = make_key("one").with_suffix(".pub").read_text()
    two = make_key("two").with_suffix(".pub").read_text()
    with pytest.raises(InvalidKey, match="one key per request"):
        parse_public_key(one + two)


def test_truncated_key_data_is_refused(make_key: Callable[..., Path]) -> None:
    kind, data = make_key("cut", "rsa", 2048).with_suffix(".pub").read_text().split()[:2]
    cut = base64.b64encode(base64.b64decode(data)[:-40]).decode()
    with pytest.raises(InvalidKey, match="not a valid RSA key"):
        parse_public_key(f"{kind} {cut}")
