"""Constants and helpers shared by the API tests (import as `from api_helpers import ...`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from fastapi import FastAPI

from buildworker.api.accounts import create_token, create_user
from buildworker.config import Config

#: Images accepted at submit in tests (no worker registers in most of them).
TEST_IMAGES = ("debian/bookworm@amd64", "debian/bookworm@arm64", "alpine/edge@x86_64")
WORKER_TOKEN = "test-worker-token"
ORIGIN = "http://testserver"
UNREACHABLE_BROKER = "amqp://guest:guest@127.0.0.1:9/%2F"

MANIFEST = """\
image: debian/bookworm
tasks:
  - build: |
      echo hello
  - test: |
      echo world
"""


@dataclass(frozen=True)
class Account:
    username: str
    user_id: int
    #: scope set → token
    tokens: dict[str, str]

    def headers(self, scopes: str = "rw") -> dict[str, str]:
        return {"Authorization": f"token {self.tokens[scopes]}"}


#: Named scope sets every test account gets a token for.
SCOPE_SETS = {
    "rw": "jobs:read jobs:write secrets:read secrets:write",
    "ro": "jobs:read",
    "jobs": "jobs:write",
    "secrets": "secrets:read secrets:write",
    "all": "*",
}


def make_account(app: FastAPI, username: str) -> Account:
    with app.state.sessionmaker() as session:
        user = create_user(session, username, f"{username}@example.org")
        tokens = {
            key: create_token(session, user, scopes, name=key).token
            for key, scopes in SCOPE_SETS.items()
        }
        session.commit()
        return Account(username=username, user_id=user.id, tokens=tokens)


def with_api(config: Config, **changes: object) -> Config:
    """A copy of `config` with some [api] keys changed."""
    return replace(config, api=replace(config.api, **changes))  # type: ignore[arg-type]
