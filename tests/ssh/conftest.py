"""Fixtures of the SSH tests: real keys made by OpenSSH's ssh-keygen."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .entry import EntryPoint


def keygen(directory: Path, name: str, kind: str = "ed25519", bits: int | None = None) -> Path:
    """A key pair made by ssh-keygen; returns the private key's path (``.pub`` beside it)."""
    path = directory / name
    argv = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"{name}@test", "-f", str(path)]
    if bits is not None:
        argv += ["-b", str(bits)]
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    return path


@pytest.fixture(scope="session")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="session")
def make_key(key_dir: Path) -> Callable[..., Path]:
    made: dict[tuple[str, str, int | None], Path] = {}

    def make(name: str, kind: str = "ed25519", bits: int | None = None) -> Path:
        spec = (name, kind, bits)
        if spec not in made:
            made[spec] = keygen(key_dir, name, kind, bits)
        return made[spec]

    return make


def fingerprint(pub: Path) -> str:
    """What ssh-keygen -l says the key's SHA256 fingerprint is."""
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return out.split()[1]


@pytest.fixture(scope="module")
def entry_point(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EntryPoint]:
    """A live API with alice, bob, carol (keys registered) and dave (key not registered),
    Debian's sshd with the shipped configuration on a loopback port, the control server."""
    from worker.worker_helpers import LiveApi, api_config

    from .entry import start_entry_point

    data = tmp_path_factory.mktemp("api")
    api = LiveApi(api_config(data, f"sqlite:///{data / 'buildworker.db'}"))
    try:
        point = start_entry_point(api)
    except BaseException:
        api.close()
        raise
    try:
        for name in ("alice", "bob", "carol"):
            point.add_person(name)
        point.add_person("dave", register_key=False)
        yield point
    finally:
        point.close()
