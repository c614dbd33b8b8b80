"""Acceptance in a real browser against the live API, RabbitMQ, the worker daemon and real
guests: sign in, submit from the form, watch the first task's output arrive while it runs,
success, the artifact downloads byte-identical; resubmit; cancel a running job from the page.

Two guests boot (one per job; the cancelled job is stopped mid-task), one after the other.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config
from web_helpers import PASSWORD, browser_sign_in, chromium, screenshot_dir
from worker_helpers import IMAGES, SSH_KEY, WORKER_TOKEN, LiveApi, free_port, vm_work_dir

from buildworker.guest.hypervisor import Hypervisor
from buildworker.guest.images import ImageCatalogue
from buildworker.worker.apiclient import InternalApi
from buildworker.worker.daemon import Daemon

pytestmark = [pytest.mark.vm, pytest.mark.slow]

#: The images directory the bookworm image really lives in (a worktree may link it from
#: another checkout, and the catalogue refuses images that resolve outside its root).
REAL_IMAGES = (IMAGES / "debian" / "bookworm").resolve().parent.parent

AMQP = "amqp://guest:guest@127.0.0.1:5672"
MANIFEST = """\
image: debian/bookworm
artifacts: [out/blob.bin]
tasks:
  - build: |
      echo first-line
      for i in 1 2 3 4 5 6; do printf '\\033[32mtick %s\\033[0m\\n' $i; sleep 1; done
      mkdir -p out && head -c 200000 /dev/urandom > out/blob.bin
      sha256sum out/blob.bin
  - check: echo checked
"""
LONG = "image: debian/bookworm\ntasks:\n  - wait: |\n      echo started-waiting\n      sleep 600\n"


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


class Stack:
    def __init__(self, root: Any) -> None:
        self.vhost = f"bw-web-{uuid.uuid4().hex[:10]}"
        _rabbitmqctl("add_vhost", self.vhost)
        _rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        data = root / "data"
        data.mkdir()
        self.work_dir = vm_work_dir()
        port = free_port()
        config = make_config(data, f"sqlite:///{root / 'bw.db'}", origin=f"http://127.0.0.1:{port}")
        config = replace(
            config,
            broker=replace(config.broker, url=f"{AMQP}/{urllib.parse.quote(self.vhost, safe='')}"),
            worker=replace(config.worker, name=f"web-e2e-{uuid.uuid4().hex[:6]}"),
            vm=replace(config.vm, ssh_key=SSH_KEY, work_dir=self.work_dir),
        )
        self.live = LiveApi(config, lifespan="on", port=port)
        from buildworker.api.accounts import get_user
        from buildworker.web.passwords import set_password

        with self.live.app.state.sessionmaker() as db:
            set_password(get_user(db, "alice"), PASSWORD)
            db.commit()
        vms = Hypervisor(config.vm, worker_name=config.worker.name)
        self.daemon = Daemon(
            config, ImageCatalogue(REAL_IMAGES), vms, InternalApi(self.live.url, WORKER_TOKEN)
        )
        self.daemon.start()
        self.thread = threading.Thread(target=self.daemon.run_until_stopped, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.daemon.stop_now()
        self.thread.join(120)
        self.live.close()
        shutil.rmtree(self.work_dir, ignore_errors=True)
        _rabbitmqctl("delete_vhost", self.vhost)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    made = Stack(tmp_path_factory.mktemp("web-e2e"))
    yield made
    made.close()


def wait_for(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def lines(page: Any, log: str) -> list[str]:
    return page.eval_on_selector_all(
        f'pre.log[data-log="{log}"] > span', "els => els.map(e => e.textContent)"
    )


def has_line(page: Any, log: str, text: str) -> bool:
    """Whether the log shows a line that is exactly ``text`` (after its number)."""
    return any(re.fullmatch(rf"\d+{re.escape(text)}", line) for line in lines(page, log))


def test_submit_watch_download_resubmit_and_cancel_in_a_browser(stack: Stack) -> None:
    base = stack.live.url
    with chromium() as browser:
        context = browser.new_context(
            viewport={"width": 1000, "height": 900}, accept_downloads=True
        )
        page = context.new_page()
        dialogs: list[str] = []

        def on_dialog(dialog: Any) -> None:
            dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)
        # Sign in, submit a manifest from the form, land on the job page
        browser_sign_in(page, base, "alice")
        page.goto(f"{base}/submit")
        page.fill("#manifest", MANIFEST)
        page.fill("#note", "from the **browser**")
        page.fill("#tags", "web/e2e")
        page.click("form.submit button[type=submit]")
        page.wait_for_url(re.compile(rf"{re.escape(base)}/~alice/job/\d+$"))
        job_id = int(page.url.rsplit("/", 1)[1])
        page.evaluate("window.__sameDocument = 7")
        # The first task's output appears while it runs, without a reload
        # (the task preamble's `set -x` shows "+ echo first-line" before the output line)
        wait_for(lambda: has_line(page, "build", "first-line"), timeout=300)
        assert page.inner_text("#job-status") == "running"
        assert (
            page.eval_on_selector('[data-task-status="build"]', "e => e.textContent") == "running"
        )
        wait_for(lambda: any("tick 2" in line for line in lines(page, "build")), timeout=60)
        colours = page.eval_on_selector_all(
            'pre.log[data-log="build"] span.a-f2', "els => els.map(e => e.textContent)"
        )
        assert any(text.startswith("tick ") for text in colours), colours
        page.screenshot(path=str(screenshot_dir() / "running-job-vm.png"))
        # The status turns to success in place
        wait_for(lambda: page.inner_text("#job-status") == "success", timeout=300)
        assert page.evaluate("window.__sameDocument") == 7
        assert (
            page.eval_on_selector('[data-task-status="check"]', "e => e.textContent") == "success"
        )
        # The artifact link downloads the file byte-identical (sha256 printed in the guest)
        wait_for(lambda: page.query_selector("#artifact-list a") is not None, timeout=30)
        with page.expect_download() as info:
            page.click("#artifact-list a")
        blob = Path(info.value.path()).read_bytes()
        assert len(blob) == 200000
        printed = " ".join(lines(page, "build"))
        assert hashlib.sha256(blob).hexdigest() in printed
        # Resubmit: the old manifest, the note "(resubmitted)"; run a long job instead
        page.click("text=Resubmit")
        page.wait_for_url(f"{base}/resubmit/{job_id}")
        assert page.input_value("#manifest") == MANIFEST
        assert page.input_value("#note") == "from the **browser** (resubmitted)"
        page.fill("#manifest", LONG)
        page.click("form.submit button[type=submit]")
        page.wait_for_url(re.compile(rf"{re.escape(base)}/~alice/job/\d+$"))
        second = int(page.url.rsplit("/", 1)[1])
        assert second != job_id
        # Cancel the running job from its page
        wait_for(lambda: has_line(page, "wait", "started-waiting"), timeout=300)
        page.click("#cancel-form button")
        page.wait_for_url(f"{base}/~alice/job/{second}")
        wait_for(lambda: page.inner_text("#job-status") == "cancelled", timeout=60)
        assert stack.live.job(second)["status"] == "cancelled"
        assert stack.live.job(job_id)["note"] == "from the **browser**"
        assert dialogs == []
        context.close()
