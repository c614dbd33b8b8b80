"""Helpers of the web tests (import as `from web_helpers import ...`): accounts with
passwords, signing in through the real forms, a worker played over the real internal API,
Debian's chromium driven by playwright, axe-core from tests/web/node_modules."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

HERE = Path(__file__).resolve().parent
AXE = HERE / "node_modules" / "axe-core" / "axe.min.js"
CHROMIUM = "/usr/bin/chromium"
#: Flags for a headless chromium as root that talks to nothing but loopback.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct horse battery"
MANIFEST = "image: debian/bookworm\ntasks:\n  - build: echo hi\n  - test: echo ok\n"
SETUP_LOG = "setup"


def add_user(app: Any, name: str, password: str | None = PASSWORD) -> str:
    """Create a user (with a web password unless None); returns an all-scopes token."""
    from buildworker.api.accounts import create_token, create_user
    from buildworker.web.passwords import set_password

    with app.state.sessionmaker() as session:
        user = create_user(session, name, f"{name}@example.org")
        if password is not None:
            set_password(user, password)
        token = create_token(session, user, "*", name="tests").token
        session.commit()
    return token


CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


def sign_in(client: TestClient, name: str, password: str = PASSWORD) -> None:
    """Sign in through the real form (a GET for the token, then the POST)."""
    token = csrf_of(client.get("/login").text)
    response = client.post(
        "/login",
        data={"csrf": token, "username": name, "password": password, "next": "/"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text


def form_token(client: TestClient, path: str = "/submit") -> str:
    return csrf_of(client.get(path).text)


def submit_api(client: TestClient, token: str, manifest: str = MANIFEST, **fields: Any) -> int:
    response = client.post(
        "/api/jobs",
        json={"manifest": manifest, **fields},
        headers={"Authorization": f"token {token}"},
    )
    assert response.status_code == 200, response.text
    return int(response.json()["id"])


class PlayedWorker:
    """A worker played by the test over the real internal API (no VM): claims a queued job
    and reports task statuses, log output and the end, when the test says so."""

    def __init__(self, base_url: str, token: str, job_id: int, attempt: int = 1) -> None:
        from buildworker.worker.apiclient import InternalApi

        self.api = InternalApi(base_url, token, retry_budget_s=60)
        self.job_id = job_id
        self.attempt = attempt
        self.offsets: dict[str, int] = {}
        self.api.claim(job_id, "played-worker", attempt)

    def log(self, name: str, data: bytes) -> None:
        """Append to a task's log, or to the setup log for name "setup"."""
        from buildworker.worker.logs import SETUP_LOG as SETUP

        log = SETUP if name == "setup" else name
        offset = self.offsets.get(name, 0)
        self.offsets[name] = self.api.append_log(self.job_id, self.attempt, log, offset, data)

    def task(self, name: str, status: str) -> None:
        self.api.task_status(self.job_id, self.attempt, name, status)

    def finish(self, status: str = "success") -> None:
        self.api.finish(self.job_id, self.attempt, status)
        self.api.close()


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's chromium, headless, with a fresh profile; nothing is downloaded."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


def browser_sign_in(page: Any, base: str, name: str, password: str = PASSWORD) -> None:
    page.goto(f"{base}/login")
    page.fill("#username", name)
    page.fill("#password", password)
    page.click("form.narrow button[type=submit]")
    page.wait_for_url(f"{base}/")


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's violations of impact serious or critical on the current page."""
    # Evaluated through the DevTools protocol: the page's CSP (rightly) refuses an inline
    # <script>, and the test must not weaken it.
    page.evaluate(AXE.read_text() + "\n;undefined")
    result = page.evaluate("async () => await axe.run(document)")
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["html"][:120] for n in v["nodes"]]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def screenshot_dir() -> Path:
    path = Path(tempfile.gettempdir()) / "buildworker-web-screenshots"
    path.mkdir(exist_ok=True)
    return path
