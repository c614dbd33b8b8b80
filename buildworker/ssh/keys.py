"""Users' SSH public keys: parse one ``<type> <base64> [comment]`` line and validate it.

The key material is decoded by ``cryptography`` (``load_ssh_public_key``), never by hand; this
module only decides what we accept and how a refusal reads. Accepted: Ed25519, ECDSA
(nistp256/384/521), their FIDO ``sk-`` forms, and RSA of at least ``MIN_RSA_BITS``. Refused:
DSA (OpenSSH itself disabled it), certificates, ``authorized_keys`` options, several keys at
once. The fingerprint is OpenSSH's ``SHA256:<unpadded base64>`` of the key blob, exactly what
``ssh-keygen -l`` prints and what sshd logs, so people can match them by eye.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

__all__ = [
    "ACCEPTED_TYPES",
    "MAX_COMMENT",
    "MAX_KEY_TEXT",
    "MIN_RSA_BITS",
    "InvalidKey",
    "PublicKey",
    "fingerprint_of_blob",
    "parse_public_key",
]

#: Smallest RSA modulus accepted, in bits (NIST SP 800-131A; ssh-keygen's default is 3072).
MIN_RSA_BITS = 2048
#: Longest key line accepted, in characters (a 16384-bit RSA key is about 2,800).
MAX_KEY_TEXT = 8192
#: Longest comment kept, in characters (meta.sr.ht's column).
MAX_COMMENT = 256

#: Key types accepted, with a short name for messages.
ACCEPTED_TYPES = {
    "ssh-ed25519": "Ed25519",
    "sk-ssh-ed25519@openssh.com": "Ed25519-SK",
    "ecdsa-sha2-nistp256": "ECDSA",
    "ecdsa-sha2-nistp384": "ECDSA",
    "ecdsa-sha2-nistp521": "ECDSA",
    "sk-ecdsa-sha2-nistp256@openssh.com": "ECDSA-SK",
    "ssh-rsa": "RSA",
}
_REFUSED_TYPES = {
    "ssh-dss": "DSA keys are refused (OpenSSH no longer accepts them); use an Ed25519 key",
}
_TYPE_WORD = re.compile(r"^[a-z0-9][a-z0-9@.-]*$")


class InvalidKey(ValueError):
    """A key we refuse; the message says why, for a person (the API names the field)."""


@dataclass(frozen=True)
class PublicKey:
    """A validated public key. ``blob`` is the wire-format key, ``text`` ``<type> <base64>``."""

    type: str
    blob: bytes
    comment: str | None
    bits: int
    fingerprint: str

    @property
    def base64(self) -> str:
        return base64.b64encode(self.blob).decode("ascii")

    @property
    def text(self) -> str:
        """``<type> <base64>``: what an ``authorized_keys`` line carries after its options."""
        return f"{self.type} {self.base64}"

    @property
    def line(self) -> str:
        """The key as ``ssh-keygen`` writes a ``.pub`` file (with the comment, if any)."""
        return f"{self.text} {self.comment}" if self.comment else self.text

    @property
    def kind(self) -> str:
        return ACCEPTED_TYPES[self.type]


def fingerprint_of_blob(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a key blob: ``SHA256:`` + unpadded base64."""
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _blob_type(blob: bytes) -> str:
    """The type name a key blob starts with (an SSH ``string``)."""
    if len(blob) < 4:
        raise InvalidKey("the key data is too short to be an SSH key")
    (length,) = struct.unpack(">I", blob[:4])
    if length > 64 or len(blob) < 4 + length:
        raise InvalidKey("the key data is not an SSH public key")
    try:
        return blob[4 : 4 + length].decode("ascii")
    except UnicodeDecodeError:
        raise InvalidKey("the key data is not an SSH public key") from None


def parse_public_key(text: str) -> PublicKey:
    """Validate one public key line (as in ``~/.ssh/id_ed25519.pub``).

    Raises:
        InvalidKey: the text is not exactly one acceptable public key; the message says why.
    """
    if not isinstance(text, str):
        raise InvalidKey("the key should be a string such as 'ssh-ed25519 AAAA... you@host'")
    stripped = text.strip()
    if not stripped:
        raise InvalidKey("the key is empty")
    if len(stripped) > MAX_KEY_TEXT:
        raise InvalidKey(f"the key is longer than {MAX_KEY_TEXT} characters")
    if "\n" in stripped or "\r" in stripped:
        raise InvalidKey("send one key per request (the text has several lines)")
    if "\0" in stripped:
        raise InvalidKey("the key contains a NUL character")
    if stripped.startswith("-----BEGIN"):
        raise InvalidKey(
            "this is a PEM file; send the public key in OpenSSH form (the .pub file), "
            "never a private key"
        )
    words = stripped.split(None, 2)
    key_type = words[0]
    if key_type in _REFUSED_TYPES:
        raise InvalidKey(_REFUSED_TYPES[key_type])
    if key_type.endswith("-cert-v01@openssh.com"):
        raise InvalidKey("certificates are not accepted; send the plain public key")
    if key_type not in ACCEPTED_TYPES:
        if len(words) < 2:
            raise InvalidKey(
                "the key should start with its type (such as ssh-ed25519) and then its data"
            )
        if not _TYPE_WORD.fullmatch(key_type) or "=" in key_type or '"' in key_type:
            raise InvalidKey(
                "the key should start with its type (such as ssh-ed25519); "
                "authorized_keys options are not accepted"
            )
        known = ", ".join(ACCEPTED_TYPES)
        raise InvalidKey(f"unsupported key type {key_type!r} (accepted: {known})")
    if len(words) < 2:
        raise InvalidKey(f"the {key_type} key has no key data after its type")
    try:
        blob = base64.b64decode(words[1], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKey("the key data is not valid base64") from None
    embedded = _blob_type(blob)
    if embedded != key_type:
        raise InvalidKey(f"the key says it is {key_type} but its data is {embedded}")
    try:
        key = load_ssh_public_key(f"{key_type} {words[1]}".encode("ascii"))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidKey(f"this is not a valid {ACCEPTED_TYPES[key_type]} key ({exc})") from None
    if isinstance(key, rsa.RSAPublicKey):
        bits = key.key_size
        if bits < MIN_RSA_BITS:
            raise InvalidKey(
                f"RSA keys must have at least {MIN_RSA_BITS} bits (this one has {bits}); "
                "make a new one with ssh-keygen -t ed25519"
            )
    elif isinstance(key, ec.EllipticCurvePublicKey):
        bits = key.key_size
    elif isinstance(key, ed25519.Ed25519PublicKey):
        bits = 256
    else:  # pragma: no cover - every accepted type maps to one of the above
        raise InvalidKey(f"unsupported key type {key_type!r}")
    comment = words[2].strip() if len(words) > 2 else None
    if comment is not None and len(comment) > MAX_COMMENT:
        raise InvalidKey(f"the key's comment is longer than {MAX_COMMENT} characters")
    return PublicKey(
        type=key_type,
        blob=blob,
        comment=comment or None,
        bits=bits,
        fingerprint=fingerprint_of_blob(blob),
    )
