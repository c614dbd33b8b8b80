"""Fixtures of the SSH tests: real keys made by OpenSSH's ssh-keygen."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest


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
