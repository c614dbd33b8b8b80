"""sshd's ``AuthorizedKeysCommand``: which user holds the offered key, as one forced-command line.

sshd runs ``buildworker --config FILE ssh authorized-keys %u %t %k`` as ``[ssh] keys-user``
for every key a client offers to the SSH user. We ask the API (worker token, read from FILE)
who holds the key and print one ``authorized_keys`` line::

    restrict,pty,command="/path/buildworker ssh shell --socket SOCK 'alice'" ssh-ed25519 AAAA...

``restrict`` turns off every forwarding, X11, agent and user rc; ``pty`` gives a terminal back;
``command`` forces our shell whatever the client asked for (builds.sr.ht's buildsrht-keys
prints the same shape). Nothing printed means the key is refused. Login names other than
``[ssh] user`` get nothing.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = ["KeyLookupError", "KeyOwner", "authorized_line", "lookup_key_owner"]

#: What a username looks like (buildworker.api.accounts.USERNAME); nothing else is printed.
_USERNAME = re.compile(r"^[a-z_][a-z0-9_-]{1,29}$")
_KEY_TYPE = re.compile(r"^[a-z0-9@.-]{1,64}$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


class KeyLookupError(Exception):
    """The API could not answer (sshd logs our stderr and refuses the key)."""


@dataclass(frozen=True)
class KeyOwner:
    username: str
    key_id: int
    fingerprint: str


def lookup_key_owner(
    api_url: str, token: str, key_type: str, key_b64: str, *, timeout_s: float = 10.0
) -> KeyOwner | None:
    """Who holds this key (None: nobody). Raises KeyLookupError when the API cannot say."""
    if not _KEY_TYPE.fullmatch(key_type) or not _BASE64.fullmatch(key_b64):
        return None
    try:
        response = httpx.post(
            f"{api_url.rstrip('/')}/api/internal/ssh/key-owner",
            json={"type": key_type, "key": key_b64},
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        raise KeyLookupError(f"the API at {api_url} cannot be reached: {exc}") from exc
    if response.status_code in (400, 404):
        return None
    if response.status_code != 200:
        raise KeyLookupError(f"the API answered {response.status_code}: {response.text[:200]}")
    data = response.json()
    return KeyOwner(
        username=str(data["username"]),
        key_id=int(data["key_id"]),
        fingerprint=str(data["fingerprint"]),
    )


def authorized_line(
    owner: str, key_type: str, key_b64: str, *, executable: Path, socket_path: Path
) -> str:
    """The ``authorized_keys`` line that lets ``owner``'s key in, to our forced command only.

    Raises ValueError for a username, key or path that cannot be written safely into it.
    """
    if not _USERNAME.fullmatch(owner):
        raise ValueError(f"refusing to print an unusual username: {owner!r}")
    if not _KEY_TYPE.fullmatch(key_type) or not _BASE64.fullmatch(key_b64):
        raise ValueError("refusing to print a malformed key")
    command = shlex.join([str(executable), "ssh", "shell", "--socket", str(socket_path), owner])
    # Inside command="..." only a double quote or a backslash would need escaping; shlex
    # output of these paths has neither unless the paths do, which we refuse.
    if '"' in command or "\\" in command:
        raise ValueError(f"the forced command cannot be quoted safely: {command!r}")
    return f'restrict,pty,command="{command}" {key_type} {key_b64}'
