"""schemathesis against /api/openapi.json: no generated request may cause a server error.

Requests carry a valid user token (the internal API gets the worker token), so they reach
the handlers rather than stopping at 401; a few jobs and a secret exist so that low ids hit
real rows. Runs on SQLite and PostgreSQL (integer overflow, for one, differs).

The operations are driven from inside one test per backend (schemathesis' pytest plugin
does not combine with our parametrized fixtures under pytest 9); a failure names the
operation and the request.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

import schemathesis
from api_helpers import MANIFEST, WORKER_TOKEN, make_account
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from starlette.testclient import TestClient

# Every schemathesis module imported now, at collection, not lazily inside the run: pytest
# rewrites a plugin's modules on first import, and CPython 3.11's compiler can fail that with
# "SystemError: AST constructor recursion depth mismatch" when it happens while other threads
# run (seen with schemathesis.generation.jsonschema.strategy, then with 4.32's
# specs.openapi.stateful.dependencies.naming: which modules load lazily changes by release).
for _module in pkgutil.walk_packages(schemathesis.__path__, "schemathesis."):
    with contextlib.suppress(Exception):  # optional extras (e.g. the CLI's) may be missing
        importlib.import_module(_module.name)

#: Examples per operation; enough to find type and range mistakes, fast on 2 cores.
EXAMPLES = 40


def _exerciser(
    operation: Any, client: TestClient, token: str, failures: list[str]
) -> Callable[[], None]:
    """A hypothesis test of one operation, sent through `client` (no lifespan per call)."""

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def exercise(case: schemathesis.Case) -> None:
        kwargs = case.as_transport_kwargs(base_url="http://testserver")
        kwargs.setdefault("headers", {})["Authorization"] = token
        if not kwargs.get("cookies"):
            kwargs.pop("cookies", None)
        response = client.request(**kwargs)
        if response.status_code >= 500:
            failures.append(
                f"{case.method} {case.formatted_path} query={case.query} "
                f"body={case.body!r:.300} → {response.status_code}: {response.text[:300]}"
            )

    return exercise  # type: ignore[no-any-return]


def test_no_server_errors(app: FastAPI) -> None:
    # Given an app with a user, two jobs and a secret
    account = make_account(app, "fuzz")
    client = TestClient(app)
    for execute in (False, True):
        response = client.post(
            "/api/jobs", json={"manifest": MANIFEST, "execute": execute}, headers=account.headers()
        )
        assert response.status_code == 200
    client.post("/api/secrets", json={"type": "pgp_key", "data": "PGP"}, headers=account.headers())
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app)
    # A crash must come back as a 500 response (collected below), not abort the run.
    fuzz_client = TestClient(app, raise_server_exceptions=False)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an Err raises: the test fails
        operations += 1
        internal = operation.path.startswith("/api/internal")
        token = f"Bearer {WORKER_TOKEN}" if internal else f"token {account.tokens['all']}"

        exercise = _exerciser(operation, fuzz_client, token, failures)
        exercise()
    # Then every operation was exercised and none answered 5xx
    assert operations >= 10
    assert failures == [], "\n".join(failures[:20])


def test_openapi_document_is_served(client: TestClient) -> None:
    document = client.get("/api/openapi.json").json()
    paths = document["paths"]
    for path in (
        "/api/jobs",
        "/api/jobs/{job_id}",
        "/api/jobs/{job_id}/manifest",
        "/api/jobs/{job_id}/artifacts",
        "/api/jobs/{job_id}/start",
        "/api/jobs/{job_id}/cancel",
        "/api/job-group",
        "/api/secrets",
    ):
        assert path in paths, path
    body = paths["/api/jobs"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/x-www-form-urlencoded"} <= set(body)
