"""`buildworker admin`: users and tokens from the shell; the token is printed once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select

from buildworker.api.app import create_app
from buildworker.config import load_config
from buildworker.db.models import Token

BIN = Path(sys.executable).parent / "buildworker"


def admin(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), "--config", str(config), "admin", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_user_and_token_lifecycle_through_the_cli(tmp_path: Path, sqlite_url: str) -> None:
    config = tmp_path / "worker.conf"
    config.write_text(f"[database]\nurl = {sqlite_url}\n[api]\nimages = debian/bookworm\n")
    # Given a user made with the CLI
    made = admin(config, "user", "add", "carol", "--email", "carol@example.org")
    assert made.returncode == 0, made.stderr
    assert "~carol" in made.stdout
    assert admin(config, "user", "add", "carol").returncode == 1
    assert admin(config, "user", "add", "Bad Name").returncode == 1
    # When a token is created, it is the only thing on stdout
    created = admin(config, "token", "create", "carol", "--scopes", "jobs:read", "--name", "ci")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert len(token) == 64 and "\n" not in token
    # Then it works against the API, and is not stored in clear
    app = create_app(load_config(config))
    client = TestClient(app)
    assert client.get("/api/jobs", headers={"Authorization": f"token {token}"}).status_code == 200
    with app.state.sessionmaker() as session:
        assert token not in {t.token_hash for t in session.scalars(select(Token))}
    listing = admin(config, "token", "list", "carol")
    assert listing.returncode == 0 and "active" in listing.stdout and "ci" in listing.stdout
    assert token not in listing.stdout
    token_id = listing.stdout.split("\t", 1)[0]
    # And once revoked it is refused
    assert admin(config, "token", "revoke", token_id).returncode == 0
    assert "revoked" in admin(config, "token", "list", "carol").stdout
    assert client.get("/api/jobs", headers={"Authorization": f"token {token}"}).status_code == 401
    app.state.engine.dispose()


def test_refusals_name_the_cause(tmp_path: Path, sqlite_url: str) -> None:
    config = tmp_path / "worker.conf"
    config.write_text(f"[database]\nurl = {sqlite_url}\n")
    assert admin(config, "user", "add", "dave").returncode == 0
    bad_scope = admin(config, "token", "create", "dave", "--scopes", "jobs:admin")
    assert bad_scope.returncode == 1 and "unknown scope 'jobs:admin'" in bad_scope.stderr
    nobody = admin(config, "token", "create", "erin", "--scopes", "jobs:read")
    assert nobody.returncode == 1 and "no user 'erin'" in nobody.stderr
    assert admin(config, "token", "revoke", "999").returncode == 1


def test_gen_key_prints_a_fernet_key(tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    out = subprocess.run([str(BIN), "admin", "gen-key"], capture_output=True, text=True, check=True)
    Fernet(out.stdout.strip().encode())
