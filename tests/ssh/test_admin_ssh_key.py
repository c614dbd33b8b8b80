"""`buildworker admin ssh-key add USER FILE` (and list, remove) on the API's database."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from buildworker.api.accounts import create_token, get_user
from buildworker.api.app import create_app
from buildworker.config import load_config

from .conftest import fingerprint

BIN = Path(sys.executable).parent / "buildworker"


def admin(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), "--config", str(config), "admin", *args],
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin,
    )


def test_add_list_remove_through_the_cli(
    tmp_path: Path, sqlite_url: str, make_key: Callable[..., Path]
) -> None:
    config = tmp_path / "worker.conf"
    config.write_text(f"[database]\nurl = {sqlite_url}\n")
    assert admin(config, "user", "add", "dana").returncode == 0
    assert admin(config, "user", "add", "erin").returncode == 0
    pub = make_key("dana-cli").with_suffix(".pub")
    # When an operator adds dana's .pub file
    added = admin(config, "ssh-key", "add", "dana", str(pub))
    assert added.returncode == 0, added.stderr
    assert fingerprint(pub) in added.stdout
    # Then the API lists it as dana's key, with the same fingerprint
    app = create_app(load_config(config))
    with app.state.sessionmaker() as session:
        token = create_token(session, get_user(session, "dana"), "keys:read").token
        session.commit()
    listing = TestClient(app).get("/api/user/ssh-keys", headers={"Authorization": f"token {token}"})
    (key,) = listing.json()["results"]
    assert key["fingerprint"] == fingerprint(pub)
    app.state.engine.dispose()
    # And the same key cannot be given to erin; a small RSA key is refused with its reason
    taken = admin(config, "ssh-key", "add", "erin", "-", stdin=pub.read_text())
    assert taken.returncode == 1 and "We already have this SSH key on file." in taken.stderr
    small = make_key("small-cli", "rsa", 1024).with_suffix(".pub")
    refused = admin(config, "ssh-key", "add", "erin", str(small))
    assert refused.returncode == 1 and ":1: RSA keys must have at least 2048 bits" in refused.stderr
    listed = admin(config, "ssh-key", "list", "dana")
    assert (
        listed.returncode == 0 and f"{key['id']}\t{fingerprint(pub)}\tssh-ed25519" in listed.stdout
    )
    # Removing is by owner and id: erin cannot remove dana's key
    assert admin(config, "ssh-key", "remove", "erin", str(key["id"])).returncode == 1
    removed = admin(config, "ssh-key", "remove", "dana", str(key["id"]))
    assert removed.returncode == 0, removed.stderr
    assert admin(config, "ssh-key", "list", "dana").stdout == ""
    missing = admin(config, "ssh-key", "add", "dana", str(tmp_path / "nope.pub"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr
