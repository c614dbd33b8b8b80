"""Debian's chromium against the live API (uvicorn), with the worker played over the real
internal API (no VM here; tests/web/test_browser_e2e.py has the real worker): the live
log, statuses in place, ANSI colours, nothing executes, axe-core, an API restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config
from web_helpers import (
    MANIFEST,
    PlayedWorker,
    axe_violations,
    browser_sign_in,
    chromium,
    screenshot_dir,
)
from worker_helpers import WORKER_TOKEN, LiveApi, free_port

pytestmark = pytest.mark.slow


class Live:
    def __init__(self, data_dir: Path, db_url: str) -> None:
        port = free_port()
        config = make_config(data_dir, db_url, origin=f"http://127.0.0.1:{port}")
        self.api = LiveApi(config, port=port)
        self.url = self.api.url
        from buildworker.web.passwords import set_password

        with self.api.app.state.sessionmaker() as db:
            from buildworker.api.accounts import get_user

            set_password(get_user(db, "alice"), "correct horse battery")
            db.commit()
        self.token = self.api.user_token

    def submit(self, manifest: str = MANIFEST, **fields: Any) -> int:
        return self.api.submit(manifest, **fields)

    def worker(self, job_id: int) -> PlayedWorker:
        return PlayedWorker(self.url, WORKER_TOKEN, job_id)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("web-live")
    data = root / "data"
    data.mkdir()
    made = Live(data, f"sqlite:///{root / 'bw.db'}")
    yield made
    made.api.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Any, live: Live) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.dialogs = dialogs  # type: ignore[attr-defined]
    yield page
    context.close()


def line_texts(page: Any, log: str) -> list[str]:
    return page.eval_on_selector_all(
        f'pre.log[data-log="{log}"] > span', "els => els.map(e => e.textContent)"
    )


def wait_for(predicate: Any, timeout: float = 20.0) -> float:
    """Seconds until predicate() is true (polls every 50 ms)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_the_live_log_follows_without_a_reload_and_stops_at_the_end(live: Live, page: Any) -> None:
    job_id = live.submit(note="live **log**")
    browser_sign_in(page, live.url, "alice")
    page.goto(f"{live.url}/~alice/job/{job_id}")
    page.evaluate("window.__sameDocument = 42")
    assert page.inner_text("#job-status") == "queued"
    worker = live.worker(job_id)
    worker.log("setup", b"booting the guest\n")
    worker.task("build", "running")
    # Each line appears while the job runs (the script polls every 0.5 s; the delay is
    # printed, not asserted: the machine is shared), and its colour is a class
    for i in range(3):
        worker.log("build", f"\x1b[3{i + 1}mstep {i}\x1b[0m\n".encode())
        waited = wait_for(lambda i=i: f"{i + 1}step {i}" in line_texts(page, "build"))
        print(f"live log: line {i} shown {waited:.2f} s after it was written")
    assert page.inner_text("#job-status") == "running"
    assert page.eval_on_selector('[data-task-status="build"]', "e => e.textContent") == "running"
    assert page.eval_on_selector("#task-build-2 span", "e => e.className") == "a-f2"
    # A partial line shows, and is completed in place when the rest comes
    worker.log("build", b"half ")
    wait_for(lambda: any("half" in t for t in line_texts(page, "build")))
    worker.log("build", b"and the rest\n")
    wait_for(lambda: "4half and the rest" in line_texts(page, "build"))
    assert len(line_texts(page, "build")) == 4
    shot = screenshot_dir() / "running-job.png"
    page.screenshot(path=str(shot), full_page=False)
    worker.task("build", "success")
    worker.task("test", "success")
    worker.log("test", b"no newline at the end")
    worker.finish("success")
    wait_for(lambda: page.inner_text("#job-status") == "success")
    wait_for(lambda: page.get_attribute("#job", "data-final") == "yes")
    assert "no newline at the end" in " ".join(line_texts(page, "test"))
    assert page.evaluate("window.__sameDocument") == 42  # never reloaded
    assert page.query_selector("#cancel-form") is None
    # It stopped following: no more status requests
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url))
    time.sleep(2)
    assert not [url for url in seen if url.endswith("/status")]


def test_the_live_log_survives_an_api_restart(live: Live, page: Any) -> None:
    job_id = live.submit()
    page.goto(f"{live.url}/~alice/job/{job_id}")  # public: no sign-in needed
    worker = live.worker(job_id)
    worker.log("build", b"before the restart\n")
    wait_for(lambda: "1before the restart" in line_texts(page, "build"))
    live.api.stop()
    wait_for(lambda: "retrying" in page.inner_text("#live"), timeout=30)
    live.api.start()
    worker.log("build", b"after the restart\n")
    wait_for(lambda: "2after the restart" in line_texts(page, "build"), timeout=30)
    assert "Following" in page.inner_text("#live")
    worker.finish("success")
    wait_for(lambda: page.inner_text("#job-status") == "success")


def test_html_in_logs_and_notes_executes_nothing_and_shows_as_text(live: Live, page: Any) -> None:
    note = (
        "<script>alert('note')</script> <img src=x onerror=alert('img')> [a](javascript:alert(1))"
    )
    job_id = live.submit(MANIFEST + "# </pre><script>alert('manifest')</script>\n", note=note)
    worker = live.worker(job_id)
    hostile = b"<script>alert(1)</script></pre><b>bold?</b>\x1b]0;owned-title\x07\n"
    worker.log("build", hostile)
    page.goto(f"{live.url}/~alice/job/{job_id}")
    worker.log("build", b"<script>alert('live')</script>\n")  # arrives through the script
    wait_for(lambda: len(line_texts(page, "build")) == 2)
    worker.finish("failed")
    wait_for(lambda: page.inner_text("#job-status") == "failed")
    page.reload()
    time.sleep(1)
    assert page.dialogs == []  # type: ignore[attr-defined]
    lines = line_texts(page, "build")
    assert lines[0] == "1<script>alert(1)</script></pre><b>bold?</b>"
    assert lines[1] == "2<script>alert('live')</script>"
    assert "owned-title" not in page.title()
    assert "<script>alert('note')</script>" in page.inner_text(".note")
    assert page.query_selector(".note img") is None and page.query_selector("pre.log b") is None


def test_axe_finds_nothing_serious_on_the_job_page_and_the_lists(live: Live, page: Any) -> None:
    job_id = live.submit(note="a note with `code`", tags=["proj", "main"])
    worker = live.worker(job_id)
    worker.log("setup", b"\x1b[1;32mok\x1b[0m setup\n")
    worker.log("build", b"".join(b"\x1b[3%dmcolour %d\x1b[0m\n" % (i % 8, i) for i in range(16)))
    worker.finish("success")
    browser_sign_in(page, live.url, "alice")
    for path in (
        f"/~alice/job/{job_id}",
        "/",
        "/~alice",
        "/~alice/proj",
        "/submit",
        "/tokens",
        "/secrets",
        "/login?next=/",
    ):
        page.goto(f"{live.url}{path}")
        assert axe_violations(page) == [], path
    page.goto(f"{live.url}/")
    page.screenshot(path=str(screenshot_dir() / "job-list.png"), full_page=True)
    page.goto(f"{live.url}/submit")
    page.screenshot(path=str(screenshot_dir() / "submit-form.png"), full_page=True)


def test_the_page_is_readable_on_a_phone(browser: Any, live: Live) -> None:
    job_id = live.submit()
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    try:
        page = context.new_page()
        page.goto(f"{live.url}/~alice/job/{job_id}")
        # Nothing is wider than the screen (long log lines wrap inside their box)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, width
    finally:
        context.close()


def test_a_second_user_and_a_visitor_see_only_what_the_api_lets_them(
    browser: Any, live: Live
) -> None:
    from web_helpers import add_user

    if not hasattr(live, "bob"):
        live.bob = add_user(live.api.app, "bob")  # type: ignore[attr-defined]
    private = live.submit(note="alice's private plan", **{"access:read": []})  # type: ignore[arg-type]
    public = live.submit(note="alice's public build")
    worker = live.worker(public)
    worker.log("build", b"running\n")
    for who in ("bob", None):
        context = browser.new_context()
        try:
            page = context.new_page()
            if who:
                browser_sign_in(page, live.url, who)
            response = page.goto(f"{live.url}/~alice/job/{private}")
            assert response.status == 404 and "Not found" in page.inner_text("h1")
            assert "private plan" not in page.content()
            page.goto(f"{live.url}/~alice/job/{public}")
            assert page.inner_text("#job-status") == "running"
            assert page.query_selector("#cancel-form") is None
            page.goto(f"{live.url}/~alice")
            listing = page.inner_text("main")
            assert "alice's public build" in listing and "private plan" not in listing
        finally:
            context.close()
    worker.finish("success")
