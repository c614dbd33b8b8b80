"""The pages through the real app (TestClient, SQLite): sign-in, CSRF, access, lists,
job pages, submit and resubmit, tokens, secrets, badges, feeds, safe output."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import feedparser
import pytest
from conftest import Site, make_config
from fastapi.testclient import TestClient
from web_helpers import MANIFEST, PASSWORD, csrf_of, form_token, sign_in, submit_api
from worker_helpers import WORKER_TOKEN

WORKER = {"Authorization": f"Bearer {WORKER_TOKEN}"}


# --- a worker played over the internal API, through the same TestClient --------------------


def run_job(
    client: TestClient,
    job_id: int,
    status: str = "success",
    logs: dict[str, bytes] | None = None,
    end: bool = True,
) -> None:
    r = client.post(
        f"/api/internal/jobs/{job_id}/claim", json={"worker": "w", "attempt": 1}, headers=WORKER
    )
    assert r.status_code == 200, r.text
    for name, data in (logs or {}).items():
        path = "logs/setup" if name == "setup" else f"tasks/{name}/log"
        r = client.put(
            f"/api/internal/jobs/{job_id}/{path}",
            params={"offset": 0, "attempt": 1},
            content=data,
            headers=WORKER,
        )
        assert r.status_code == 200, r.text
    if end:
        r = client.post(
            f"/api/internal/jobs/{job_id}/finish",
            json={"attempt": 1, "status": status},
            headers=WORKER,
        )
        assert r.status_code == 200, r.text


def signed_in(site: Site, name: str) -> TestClient:
    client = site.client()
    sign_in(client, name)
    return client


# --- sign-in, sessions, CSRF ---------------------------------------------------------------------


def test_sign_in_sets_a_signed_httponly_lax_cookie_and_shows_your_jobs(site: Site) -> None:
    client = site.client()
    token = csrf_of(client.get("/login").text)
    response = client.post(
        "/login",
        data={"csrf": token, "username": "alice", "password": PASSWORD, "next": "/tokens"},
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == "/tokens"
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
    assert "Your jobs" in client.get("/").text and "~alice" in client.get("/").text


def test_a_wrong_password_or_unknown_user_is_refused_alike(site: Site) -> None:
    client = site.client()
    for name, password in (("alice", "wrong password"), ("nobody", PASSWORD)):
        token = csrf_of(client.get("/login").text)
        r = client.post("/login", data={"csrf": token, "username": name, "password": password})
        assert r.status_code == 401 and "Wrong username or password." in r.text
    assert client.get("/tokens", follow_redirects=False).status_code == 303


def test_every_form_refuses_a_post_without_the_csrf_token(site: Site) -> None:
    client = signed_in(site, "alice")
    job_id = submit_api(client, site.tokens["alice"])
    posts = {
        "/login": {"username": "alice", "password": PASSWORD},
        "/logout": {},
        "/submit": {"manifest": MANIFEST},
        f"/cancel/{job_id}": {},
        "/tokens": {"name": "x", "scopes": "jobs:read"},
        "/tokens/1/revoke": {},
        "/secrets": {"type": "ssh_key", "data": "key"},
        "/secrets/00000000-0000-0000-0000-000000000000/delete": {},
    }
    for path, data in posts.items():
        for token in (None, "forged"):
            body = dict(data, csrf=token) if token else data
            r = client.post(path, data=body, follow_redirects=False)
            assert r.status_code == 403, (path, token, r.status_code)
            assert "Form expired" in r.text
    # Nothing happened: the job still runs its course, the token still works
    assert client.get(f"/~alice/job/{job_id}").status_code == 200
    assert "queued" in client.get(f"/~alice/job/{job_id}").text
    assert len(client.get("/tokens").text.split("Revoke token")) == 2  # the fixture's one


def test_sign_out_ends_the_session_and_a_new_password_ends_all(site: Site) -> None:
    client = signed_in(site, "alice")
    other = signed_in(site, "alice")
    r = client.post("/logout", data={"csrf": form_token(client, "/tokens")}, follow_redirects=False)
    assert r.status_code == 303
    assert client.get("/tokens", follow_redirects=False).status_code == 303
    assert other.get("/tokens").status_code == 200
    # When alice's password is set again, her other session ends too
    config = site.config.source
    assert config is None
    from buildworker.web.passwords import set_password

    with site.app.state.sessionmaker() as db:
        from buildworker.api.accounts import get_user

        set_password(get_user(db, "alice"), "a new password")
        db.commit()
    assert other.get("/tokens", follow_redirects=False).status_code == 303


def test_the_cookie_is_secure_when_the_origin_is_https(data_dir: Path, sqlite_url: str) -> None:
    site = Site(make_config(data_dir, sqlite_url, origin="https://ci.example.org"))
    try:
        client = TestClient(site.app, base_url="https://ci.example.org")
        client.get("/login")
        token = client.cookies.get("bw_session")
        assert token
        r = client.get("/login")
        r = client.post(
            "/login",
            data={"csrf": csrf_of(r.text), "username": "alice", "password": PASSWORD},
            follow_redirects=False,
        )
        assert "secure" in r.headers["set-cookie"].lower()
    finally:
        site.close()


def test_after_sign_in_only_local_paths_are_followed() -> None:
    from buildworker.web.pages_account import safe_next

    assert safe_next("/~alice/job/3?x=1") == "/~alice/job/3?x=1"
    for bad in ("https://evil.example", "//evil.example/x", "/\\evil.example", "javascript:x", ""):
        assert safe_next(bad) == "/"


def test_pages_that_need_you_send_you_to_sign_in_and_back(site: Site) -> None:
    client = site.client()
    for path in ("/submit", "/tokens", "/secrets", "/ssh-keys", "/resubmit/1"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=%2F")


# --- access ----------------------------------------------------------------------------------------


def test_private_jobs_are_404_for_others_and_public_ones_show_no_cancel_button(
    site: Site,
) -> None:
    alice = signed_in(site, "alice")
    bob = signed_in(site, "bob")
    anonymous = site.client()
    private = submit_api(alice, site.tokens["alice"], note="secret plan", **{"access:read": []})  # type: ignore[arg-type]
    public = submit_api(alice, site.tokens["alice"], note="open work")
    shared = submit_api(alice, site.tokens["alice"], **{"access:read": ["bob"]})  # type: ignore[arg-type]
    run_job(alice, private, logs={"build": b"private output\n"}, end=False)
    # The owner sees both, with a cancel button
    assert "secret plan" in alice.get(f"/~alice/job/{private}").text
    assert 'id="cancel-form"' in alice.get(f"/~alice/job/{public}").text
    # Others: the private job does not exist, anywhere it could show
    for client in (bob, anonymous):
        for path in (
            f"/~alice/job/{private}",
            f"/~alice/job/{private}/status",
            f"/logs/{private}/build/log",
        ):
            assert client.get(path).status_code == 404, path
        assert "secret plan" not in client.get("/~alice").text
        assert "open work" in client.get("/~alice").text
        page = client.get(f"/~alice/job/{public}").text
        assert "open work" in page and 'id="cancel-form"' not in page
        r = client.post(f"/cancel/{public}", data={"csrf": form_token(client, "/login")})
        assert (r.status_code in (403, 200) and "Not allowed" in r.text) or client is anonymous
    # A reader in access:read sees it; the owner's session reads the private log too
    assert bob.get(f"/~alice/job/{shared}").status_code == 200
    assert anonymous.get(f"/~alice/job/{shared}").status_code == 404
    assert alice.get(f"/logs/{private}/build/log").content == b"private output\n"
    # The URL must name the owner
    assert alice.get(f"/~bob/job/{public}").status_code == 404


def test_signed_out_visitors_see_public_jobs_only(site: Site) -> None:
    alice = signed_in(site, "alice")
    submit_api(alice, site.tokens["alice"], note="visible one")
    submit_api(alice, site.tokens["alice"], note="hidden one", **{"access:read": []})  # type: ignore[arg-type]
    home = site.client().get("/").text
    assert "Public jobs" in home and "visible one" in home and "hidden one" not in home


def test_cancel_from_the_page(site: Site) -> None:
    alice = signed_in(site, "alice")
    queued = submit_api(alice, site.tokens["alice"])
    token = csrf_of(alice.get(f"/~alice/job/{queued}").text)
    r = alice.post(f"/cancel/{queued}", data={"csrf": token}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/~alice/job/{queued}"
    page = alice.get(r.headers["location"]).text
    assert 's-cancelled" id="job-status" data-job-status>cancelled<' in page
    assert "The job is cancelled." in page
    # A finished job: said on the page, not as an error page
    done = submit_api(alice, site.tokens["alice"])
    run_job(alice, done)
    r = alice.post(f"/cancel/{done}", data={"csrf": token})
    assert r.status_code == 200 and "This job is already complete (success)" in r.text
    # A running one: the worker is told at its next heartbeat
    running = submit_api(alice, site.tokens["alice"])
    run_job(alice, running, end=False)
    r = alice.post(f"/cancel/{running}", data={"csrf": token})
    assert "Cancel requested" in r.text
    beat = alice.post(
        f"/api/internal/jobs/{running}/heartbeat", json={"attempt": 1}, headers=WORKER
    )
    assert beat.json()["cancelled"] is True


# --- lists, tags, search ---------------------------------------------------------------------------


def test_search_and_tag_pages(site: Site) -> None:
    alice = signed_in(site, "alice")
    t = site.tokens["alice"]
    a = submit_api(alice, t, note="Fix the frobnicator", tags=["proj", "main"])
    b = submit_api(alice, t, note="release", tags=["proj", "rel"])
    run_job(alice, b, status="failed")

    def listed(path: str) -> set[int]:
        return {
            int(n)
            for n in re.findall(r'class="job-id" href="/~alice/job/(\d+)"', alice.get(path).text)
        }

    assert listed("/?search=frob") == {a}
    assert listed("/?search=status%3Afailed") == {b}
    assert listed("/?search=%21status%3Afailed") == {a}
    assert listed("/~alice/proj") == {a, b}
    assert listed("/~alice/proj/main") == {a}
    r = alice.get("/?search=colour%3Ared")
    assert r.status_code == 400 and "Invalid search key" in r.text


# --- job page contents -----------------------------------------------------------------------------


def test_the_job_page_shows_everything_escaped(site: Site) -> None:
    alice = signed_in(site, "alice")
    manifest = MANIFEST + "# </pre><script>alert('manifest')</script>\n"
    job_id = submit_api(
        alice,
        site.tokens["alice"],
        manifest,
        note="**bold** <img src=x onerror=alert(1)> [x](javascript:alert(2))",
        tags=["proj"],
    )
    logs = {
        "setup": b"booting\n",
        "build": b"\x1b[31mred\x1b[0m <script>alert(3)</script></pre>\x1b]0;pwned\x07\n",
    }
    run_job(alice, job_id, logs=logs)
    page = alice.get(f"/~alice/job/{job_id}")
    html = page.text
    assert "<strong>bold</strong>" in html  # markdown rendered
    assert "<img" not in html and "onerror=alert(1)&gt;" in html  # HTML in the note is text
    assert 'href="javascript' not in html
    assert (
        "<script>alert" not in html and "&lt;script&gt;alert(3)&lt;/script&gt;&lt;/pre&gt;" in html
    )
    assert "pwned" not in html
    assert '<span class="a-f1">red</span>' in html
    assert "&lt;/pre&gt;&lt;script&gt;alert(&#39;manifest&#39;)" in html
    assert 'id="task-build-1"' in html and 'id="setup-1"' in html
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "unsafe-inline" not in page.headers["content-security-policy"]
    assert "<script>" not in html and "<script src=" not in html  # a finished job needs no JS


def test_a_running_job_page_loads_the_live_script_and_status_json(site: Site) -> None:
    alice = signed_in(site, "alice")
    job_id = submit_api(alice, site.tokens["alice"])
    run_job(alice, job_id, logs={"build": b"first\nsecond half"}, end=False)
    html = alice.get(f"/~alice/job/{job_id}").text
    assert re.search(r'<script src="/static/log\.js\?v=[0-9a-f]+" defer></script>', html)
    assert 'data-offset="6"' in html and "second half" not in html  # the script takes over
    status = alice.get(f"/~alice/job/{job_id}/status").json()
    assert status["status"] == "running" and status["final"] is False
    assert {log["key"]: log["size"] for log in status["logs"]} == {
        "setup": 0,
        "build": len(b"first\nsecond half"),
        "test": 0,
    }


def test_a_big_log_says_so_and_links_the_whole_log(site: Site) -> None:
    alice = signed_in(site, "alice")
    job_id = submit_api(alice, site.tokens["alice"])
    big = b"".join(b"line %d\n" % i for i in range(40000))
    run_job(alice, job_id, logs={"build": big})
    html = alice.get(f"/~alice/job/{job_id}").text
    assert "This is a big file! Only the last 128 KiB is shown." in html
    assert f'href="/logs/{job_id}/build/log">Download the full log' in html
    assert 'id="task-build-40000"' in html and 'id="task-build-1"' not in html
    assert alice.get(f"/logs/{job_id}/build/log").content == big


# --- submit and resubmit ---------------------------------------------------------------------------


def test_submit_from_the_form_and_errors_inline(site: Site) -> None:
    alice = signed_in(site, "alice")
    token = form_token(alice)
    bad = alice.post(
        "/submit",
        data={
            "csrf": token,
            "manifest": "image: debian/bookworm\ntasks:\n  - Bad: x\n",
            "tags": "UP",
        },
    )
    assert bad.status_code == 400
    assert "tasks[0]: invalid task name &#39;Bad&#39;" in bad.text
    assert 'id="err-tags-1">Invalid tag name' in bad.text
    assert "  - Bad: x" in bad.text  # what was typed is kept
    ok = alice.post(
        "/submit",
        data={
            "csrf": token,
            "manifest": MANIFEST.replace("\n", "\r\n"),
            "note": "from the form",
            "tags": "proj/web",
            "visibility": "private",
            "readers": "bob",
        },
        follow_redirects=False,
    )
    assert ok.status_code == 303
    job_id = int(ok.headers["location"].rsplit("/", 1)[1])
    job = alice.get(
        f"/api/jobs/{job_id}", headers={"Authorization": f"token {site.tokens['alice']}"}
    ).json()
    assert job["note"] == "from the form" and job["tags"] == "proj/web"
    assert site.client().get(ok.headers["location"]).status_code == 404  # private
    assert signed_in(site, "bob").get(ok.headers["location"]).status_code == 200  # listed


def test_resubmit_prefills_the_old_manifest_with_a_resubmitted_note(site: Site) -> None:
    alice = signed_in(site, "alice")
    job_id = submit_api(alice, site.tokens["alice"], note="nightly", tags=["a", "b"])
    form = alice.get(f"/resubmit/{job_id}").text
    assert "nightly (resubmitted)</textarea>" in form and 'value="a/b"' in form
    assert "image: debian/bookworm" in form
    from buildworker.web.pages_submit import resubmit_note

    assert (
        resubmit_note("x (resubmitted)") == "x (resubmitted)"
        and resubmit_note(None) == "(resubmitted)"
    )
    # Someone who may not read the job cannot resubmit it
    private = submit_api(alice, site.tokens["alice"], **{"access:read": []})  # type: ignore[arg-type]
    assert signed_in(site, "bob").get(f"/resubmit/{private}").status_code == 404


# --- tokens and secrets ----------------------------------------------------------------------------


def test_tokens_are_created_once_listed_and_revoked(site: Site) -> None:
    alice = signed_in(site, "alice")
    page = alice.post(
        "/tokens",
        data={"csrf": form_token(alice, "/tokens"), "name": "laptop", "scopes": ["jobs:read"]},
    )
    new = re.search(r'<code id="new-token">([0-9a-f]{64})</code>', page.text)
    assert new, page.text
    headers = {"Authorization": f"token {new.group(1)}"}
    assert alice.get("/api/jobs", headers=headers).status_code == 200
    assert new.group(1) not in alice.get("/tokens").text  # shown only once
    token_id = int(re.findall(r'action="/tokens/(\d+)/revoke"', page.text)[-1])
    # bob cannot revoke alice's token
    bob = signed_in(site, "bob")
    assert (
        bob.post(
            f"/tokens/{token_id}/revoke", data={"csrf": form_token(bob, "/tokens")}
        ).status_code
        == 404
    )
    alice.post(f"/tokens/{token_id}/revoke", data={"csrf": form_token(alice, "/tokens")})
    assert alice.get("/api/jobs", headers=headers).status_code == 401
    bad = alice.post("/tokens", data={"csrf": form_token(alice, "/tokens"), "name": "x"})
    assert bad.status_code == 400 and "scopes: at least one scope is required" in bad.text


def test_secrets_are_added_listed_and_deleted(site: Site) -> None:
    alice = signed_in(site, "alice")
    token = form_token(alice, "/secrets")
    r = alice.post(
        "/secrets",
        data={
            "csrf": token,
            "type": "plaintext_file",
            "name": "deploy-token",
            "path": "~/.t",
            "mode": "600",
        },
        files={"file": ("t.bin", b"\x00\x01secret-bytes")},
    )
    assert r.status_code == 200 and "deploy-token" in r.text and "~/.t (600)" in r.text
    assert "secret-bytes" not in r.text
    bad = alice.post(
        "/secrets", data={"csrf": token, "type": "plaintext_file", "data": "x", "mode": "999"}
    )
    assert bad.status_code == 400 and "path: path is required for plaintext_file" in bad.text
    uuid = re.search(r'action="/secrets/([0-9a-f-]{36})/delete"', r.text)
    assert uuid
    bob = signed_in(site, "bob")
    assert (
        bob.post(
            f"/secrets/{uuid.group(1)}/delete", data={"csrf": form_token(bob, "/secrets")}
        ).status_code
        == 404
    )
    alice.post(f"/secrets/{uuid.group(1)}/delete", data={"csrf": token})
    assert "deploy-token" not in alice.get("/secrets").text


def test_the_ssh_keys_page_says_what_it_will_hold(site: Site) -> None:
    page = signed_in(site, "alice").get("/ssh-keys")
    assert page.status_code == 200 and "SSH access" in page.text


# --- badges and feeds ------------------------------------------------------------------------------


def test_the_badge_turns_from_success_to_failure(site: Site) -> None:
    alice = signed_in(site, "alice")
    anonymous = site.client()
    assert ">unknown<" in anonymous.get("/~alice/proj.svg").text
    first = submit_api(alice, site.tokens["alice"], tags=["proj"])
    run_job(alice, first, "success")
    badge = anonymous.get("/~alice/proj.svg")
    assert badge.headers["content-type"] == "image/svg+xml" and ">success<" in badge.text
    second = submit_api(alice, site.tokens["alice"], tags=["proj", "x"])
    run_job(alice, second, "failed")
    assert ">failure<" in anonymous.get("/~alice/proj.svg").text
    assert ">failure<" in anonymous.get("/~alice/proj/x.svg").text
    assert ">unknown<" in anonymous.get("/~alice/other.svg").text  # its own tag, no cache mix-up
    assert ">proj<" in anonymous.get("/~alice/proj.svg").text
    assert anonymous.get("/~nobody/proj.svg").status_code == 404


def test_rss_feeds_parse_and_link_to_pages(site: Site) -> None:
    alice = signed_in(site, "alice")
    a = submit_api(alice, site.tokens["alice"], note="one <b>&", tags=["proj"])
    submit_api(alice, site.tokens["alice"], note="two", tags=["other"])
    submit_api(alice, site.tokens["alice"], note="private", tags=["proj"], **{"access:read": []})  # type: ignore[arg-type]
    feed = feedparser.parse(site.client().get("/~alice/proj/rss.xml").content)
    assert not feed.bozo, feed.bozo_exception
    assert [e.title for e in feed.entries] == [f"#{a} (QUEUED)"]
    assert feed.entries[0].link == f"http://testserver/~alice/job/{a}"
    assert feed.entries[0].description == "one <b>&"
    everything = feedparser.parse(site.client().get("/~alice/rss.xml").content)
    assert not everything.bozo and len(everything.entries) == 2


# --- errors as pages ---------------------------------------------------------------------------------


def test_unknown_pages_are_html_404s_and_api_paths_stay_json(site: Site) -> None:
    client = site.client()
    page = client.get("/no/such/page")
    assert page.status_code == 404 and "text/html" in page.headers["content-type"]
    assert client.get("/~nobody").status_code == 404
    api = client.get("/api/nothing")
    assert api.status_code == 404 and api.json() == {"errors": [{"reason": "404 not found"}]}
    assert client.get("/logs/999/log").json() == {"errors": [{"reason": "404 not found"}]}
    # an API client (a token, or asking for JSON) on a mistyped path gets the API's body
    for headers in ({"Authorization": "token x"}, {"Accept": "application/json"}):
        typo = client.get("/no/such/page", headers=headers)
        assert typo.status_code == 404 and typo.json() == {"errors": [{"reason": "404 not found"}]}


# --- the admin command -------------------------------------------------------------------------------


def test_admin_user_password_reads_stdin_and_enables_sign_in(tmp_path: Path) -> None:
    db = tmp_path / "bw.db"
    conf = tmp_path / "worker.conf"
    conf.write_text(f"[database]\nurl = sqlite:///{db}\n")

    def admin(*args: str, stdin: str = "") -> Any:
        return subprocess.run(
            [sys.executable, "-m", "buildworker.cli", "--config", str(conf), "admin", *args],
            input=stdin.encode(),
            capture_output=True,
            timeout=60,
        )

    assert admin("user", "add", "carol").returncode == 0
    short = admin("user", "password", "carol", stdin="short\n")
    assert short.returncode == 1 and b"at least 8 characters" in short.stderr
    done = admin("user", "password", "carol", stdin="a long enough one\n")
    assert done.returncode == 0, done.stderr
    assert admin("user", "password", "nobody", stdin="whatever123\n").returncode == 1
    from buildworker.api.accounts import get_user
    from buildworker.db.engine import make_engine, make_sessionmaker
    from buildworker.web.passwords import check_password

    engine = make_engine(f"sqlite:///{db}")
    with make_sessionmaker(engine)() as session:
        user = get_user(session, "carol")
        assert user.password_hash and user.password_hash.startswith("$argon2id$")
        assert check_password(user, "a long enough one") and not check_password(user, "short")
    engine.dispose()


@pytest.mark.parametrize("path", ["/", "/login"])
def test_pages_carry_security_headers(site: Site, path: str) -> None:
    r = site.client().get(path)
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


def test_the_job_page_shows_the_release_an_alias_meant_and_the_image_digest(site: Site) -> None:
    alice = signed_in(site, "alice")
    # Given a worker whose debian/stable is a symlink to bookworm
    served = [
        {"image": "debian/bookworm", "arches": ["amd64"], "release": "debian/bookworm"},
        {"image": "debian/stable", "arches": ["amd64"], "release": "debian/bookworm"},
    ]
    r = alice.post("/api/internal/workers", json={"name": "w", "images": served}, headers=WORKER)
    assert r.status_code == 200, r.text
    manifest = MANIFEST.replace("image: debian/bookworm", "image: debian/stable")
    assert "image: debian/stable" in manifest
    job_id = submit_api(alice, site.tokens["alice"], manifest)
    # Before a worker booted it: the release, no digest
    html = alice.get(f"/~alice/job/{job_id}").text
    assert re.search(r'id="job-image">debian/stable \(debian/bookworm\), amd64<', html), html
    assert "job-image-digest" not in html
    # When the worker reports the image it booted
    run_job(alice, job_id, end=False)
    digest = "sha256:" + "c" * 64
    body = {"attempt": 1, "release": "debian/bookworm", "arch": "amd64", "digest": digest}
    r = alice.post(f"/api/internal/jobs/{job_id}/image", json=body, headers=WORKER)
    assert r.status_code == 200, r.text
    html = alice.get(f"/~alice/job/{job_id}").text
    assert f'id="job-image-digest"><code>{digest}</code>' in html
