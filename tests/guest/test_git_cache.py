"""The git mirror cache on the host: which sources it takes, its mirrors against a local
stand-in forge (create, update, failures), what its server serves and refuses, trimming,
the guest's clone command (direct when the mirror fails), its metrics and [cache] options."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildworker.cache.git import (
    EXPORT_OK,
    USED_MARK,
    GitCacheError,
    GitMirrors,
    GitServer,
    Prepared,
    guest_clone_command,
    mirror_key,
    needs_credentials,
    start_git_cache,
    trim_mirrors,
)
from buildworker.config import CacheConfig, ConfigError, parse_config
from buildworker.guest.ports import pick_port
from buildworker.manifest import Source
from buildworker.worker.metrics import WorkerMetrics
from buildworker.worker.steps.sources import clone_commands

from .git_forge import FakeGitForge


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("https://git.sr.ht/~sircmpwn/scdoc", "https/git.sr.ht/~sircmpwn/scdoc.git"),
        ("https://Git.SR.ht/~sircmpwn/scdoc.git/", "https/git.sr.ht/~sircmpwn/scdoc.git"),
        ("https://github.com:443/a/b.git", "https/github.com/a/b.git"),
        ("https://example.org:8443/a/b", "https/example.org_8443/a/b.git"),
        ("git://example.org/a/b", "git/example.org/a/b.git"),
        ("git://example.org:9418/a/b.git", "git/example.org/a/b.git"),
        ("git://127.0.0.1:2000/repo.git", "git/127.0.0.1_2000/repo.git"),
    ],
)
def test_public_urls_map_to_one_mirror_each(url: str, key: str) -> None:
    assert mirror_key(url) == key


@pytest.mark.parametrize(
    "url",
    [
        "git@git.sr.ht:~sircmpwn/scdoc",  # ssh: may need the job's key
        "ssh://git@example.org/a/b",
        "http://example.org/a/b",  # plain http is not cached
        "file:///etc",
        "https://user:token@example.org/a/b",  # credentials
        "https://token@example.org/a/b",
        "https://example.org/a/b?x=1",
        "https://example.org/a/../../etc",
        "https://example.org/a/%2e%2e/b",
        "https://example.org/",
        "https://example.org/a/.git",
        "https://example.org/a b",
        "https://example.org:99999/a",
    ],
)
def test_other_urls_go_direct(url: str) -> None:
    assert mirror_key(url) is None


def test_git_credential_secrets_send_the_jobs_sources_direct() -> None:
    assert needs_credentials(["~/.netrc"]) and needs_credentials(["/home/build/.git-credentials"])
    assert needs_credentials([None, "~/.config/git/credentials"])
    assert not needs_credentials([None, "~/.ssh/id_ed25519", "~/secret.txt"])


def test_hosts_resolving_to_private_addresses_go_direct_unless_listed(tmp_path: Path) -> None:
    mirrors = GitMirrors(tmp_path, port=1)
    for url in ("git://127.0.0.1:2000/a", "https://localhost/a", "https://10.1.2.3/a",
                "https://169.254.169.254/latest", "https://[::1]/a"):  # fmt: skip
        address, why = mirrors.check_host(url)
        assert address == "" and "cache.git-private-hosts" in why, url
    listed = GitMirrors(tmp_path, port=1, private_hosts=("127.0.0.1:2000", "localhost"))
    assert listed.check_host("git://127.0.0.1:2000/a")[0] == "127.0.0.1"
    assert listed.check_host("https://localhost/a")[0] in ("127.0.0.1", "::1")
    assert listed.check_host("git://127.0.0.1:2001/a")[0] == ""  # another port of it
    only = GitMirrors(tmp_path, port=1, hosts=("git.sr.ht",), private_hosts=("localhost",))
    assert "cache.git-hosts" in only.check_host("https://localhost/a")[1]
    assert "does not resolve" in mirrors.check_host("https://no-such-host.invalid/a")[1]


def test_the_fetch_connects_to_the_address_checked(tmp_path: Path) -> None:
    mirrors = GitMirrors(tmp_path, port=1)
    assert mirrors._pinned("https://example.org/a/b", "93.184.215.14") == (
        "https://example.org/a/b",
        ["-c", "http.curloptResolve=example.org:443:93.184.215.14"],
    )
    assert mirrors._pinned("git://example.org/a/b", "93.184.215.14") == (
        "git://93.184.215.14:9418/a/b",
        [],
    )


# --- against a local stand-in forge -----------------------------------------------------


@pytest.fixture
def forge(tmp_path: Path) -> Iterator[FakeGitForge]:
    forge = FakeGitForge(tmp_path / "forge").start()
    try:
        yield forge
    finally:
        forge.close()


@pytest.fixture
def served(tmp_path: Path, forge: FakeGitForge) -> Iterator[tuple[GitMirrors, list[object]]]:
    seen: list[object] = []
    mirrors = GitMirrors(
        tmp_path / "cache",
        port=pick_port(),
        private_hosts=(f"127.0.0.1:{forge.port}",),
        on_prepared=seen.append,
    ).start()
    server = GitServer(mirrors.mirrors_dir, mirrors.port, on_served=seen.append).start()
    try:
        yield mirrors, seen
    finally:
        server.close()
        mirrors.close()


def git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def host_url(prepared: Prepared) -> str:
    """The mirror's URL as the host reaches the server (guests: 10.0.2.2)."""
    return prepared.guest_url.replace("git://10.0.2.2:", "git://127.0.0.1:")


def test_a_mirror_is_created_then_updated_and_served(
    tmp_path: Path, forge: FakeGitForge, served: tuple[GitMirrors, list[object]]
) -> None:
    mirrors, seen = served
    first = forge.create("repo")
    url = forge.url("repo")
    # The first use creates the mirror (a miss) and a clone from it has the forge's commit
    created = mirrors.prepare(url)
    assert created.result == "miss" and created.fetched_bytes > 0, created
    assert created.guest_url == f"git://10.0.2.2:{mirrors.port}/git/127.0.0.1_{forge.port}/repo.git"
    assert git("clone", "-q", host_url(created), str(tmp_path / "a")).returncode == 0
    assert git("rev-parse", "HEAD", cwd=tmp_path / "a").stdout.strip() == first
    # A new commit and a new branch upstream, a deleted one: the next use updates (a hit)
    forge.commit("repo", {"new.txt": "new\n"}, "new", branch="topic")
    second = forge.commit("repo", {"more.txt": "more\n"}, "more")
    updated = mirrors.prepare(forge.url("repo").removesuffix(".git"))  # the same mirror
    assert updated.result == "hit" and updated.guest_url == created.guest_url, updated
    listing = git("ls-remote", host_url(updated)).stdout
    assert f"{second}\trefs/heads/main" in listing and "refs/heads/topic" in listing
    subprocess.run(["git", "branch", "-D", "topic"], cwd=forge.path("repo"), check=True,
                   capture_output=True)  # fmt: skip
    mirrors.prepare(url)
    assert "refs/heads/topic" not in git("ls-remote", host_url(updated)).stdout  # pruned
    # The metrics callbacks: three prepared sources, and bytes served for the clones
    deadline = time.monotonic() + 5
    while not any(isinstance(item, int) for item in seen):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    results = [item.result for item in seen if isinstance(item, Prepared)]
    assert results == ["miss", "hit", "hit"]
    assert sum(item for item in seen if isinstance(item, int)) > 1000


def test_a_source_that_cannot_be_fetched_goes_direct(
    forge: FakeGitForge, served: tuple[GitMirrors, list[object]], tmp_path: Path
) -> None:
    mirrors, _ = served
    # A repository the forge does not have: no mirror, the guest clones direct
    missing = mirrors.prepare(forge.url("missing"))
    assert missing.result == "error" and missing.guest_url == "", missing
    assert not list(mirrors.mirrors_dir.rglob(EXPORT_OK))
    # An ineligible URL, and a host not allowed: bypass, no fetch at all
    assert mirrors.prepare("git@example.org:a/b").result == "bypass"
    assert mirrors.prepare(f"git://127.0.0.1:{forge.port + 1}/x.git").result == "bypass"
    # A fetch past git-fetch-timeout (a server that accepts and never answers)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        slow = GitMirrors(
            tmp_path / "slow", port=1, fetch_timeout=1.0, private_hosts=(f"127.0.0.1:{port}",)
        )
        started = time.monotonic()
        assert slow.prepare(f"git://127.0.0.1:{port}/r.git").result == "error"
        assert time.monotonic() - started < 10


def test_the_server_serves_the_mirrors_and_nothing_else(
    tmp_path: Path, forge: FakeGitForge, served: tuple[GitMirrors, list[object]]
) -> None:
    mirrors, _ = served
    forge.create("repo")
    prepared = mirrors.prepare(forge.url("repo"))
    base = f"git://127.0.0.1:{mirrors.port}"
    assert git("ls-remote", host_url(prepared)).returncode == 0
    # Not the forge's own path, the cache's other directories, the host's files, nor ..
    (mirrors.directory / "tmp" / "x.git").mkdir(parents=True)
    for path in (
        "/repo.git",
        "/../tmp/x.git",
        "/../locks",
        f"/{forge.root}/repo.git",
        "/etc",
        "/git",
        f"/git/127.0.0.1_{forge.port}/../../../forge/repo.git",
    ):
        result = git("ls-remote", base + path)
        assert result.returncode != 0 and "refs/heads" not in result.stdout, path
    # No push, no archive
    clone = tmp_path / "c"
    assert git("clone", "-q", host_url(prepared), str(clone)).returncode == 0
    assert git("push", host_url(prepared), "HEAD:refs/heads/evil", cwd=clone).returncode != 0
    assert git("archive", "--remote", host_url(prepared), "HEAD").returncode != 0
    # A non-git client gets nothing of the host (git daemon ends the connection)
    with socket.create_connection(("127.0.0.1", mirrors.port), timeout=30) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = sock.recv(65536)
    assert b"HTTP/" not in data


def test_a_taken_git_port_is_refused_naming_the_option(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(GitCacheError, match=r"cache\.git-port"):
            GitServer(tmp_path, port).start()
        # A run shares the worker's server on that port (it only prepares mirrors)
        config = CacheConfig(git=True, git_port=port, git_dir=tmp_path / "g")
        shared = start_git_cache(config, share_running=True)
        try:
            assert shared.server is None and shared.mirrors is not None
            assert shared.forwards == (f"10.0.2.2:{port}=127.0.0.1:{port}",)
        finally:
            shared.close()
    assert start_git_cache(CacheConfig()).forwards == ()  # off: no forward, no mirrors


def make_mirror(root: Path, key: str, size: int, used: float) -> Path:
    mirror = root / key
    (mirror / "objects").mkdir(parents=True)
    (mirror / "objects" / "pack").write_bytes(os.urandom(size))
    (mirror / EXPORT_OK).touch()
    (mirror / USED_MARK).touch()
    os.utime(mirror / USED_MARK, (used, used))
    return mirror


def test_trim_removes_the_least_recently_used_mirrors(tmp_path: Path) -> None:
    root = tmp_path / "mirrors"
    now = time.time()
    old = make_mirror(root, "https/a.org/old.git", 300_000, now - 3000)
    mid = make_mirror(root, "https/a.org/mid.git", 300_000, now - 2000)
    new = make_mirror(root, "git/b.org/new.git", 300_000, now - 1000)
    removed = trim_mirrors(root, 700_000, tmp_path / "locks")
    assert removed >= 300_000
    assert not old.exists() and mid.exists() and new.exists()
    assert trim_mirrors(root, 10**9, tmp_path / "locks") == 0


def test_guest_clone_falls_back_to_a_direct_clone(
    tmp_path: Path, forge: FakeGitForge, served: tuple[GitMirrors, list[object]]
) -> None:
    mirrors, _ = served
    head = forge.create("repo")
    url = forge.url("repo")

    def run(mirror_url: str, directory: str) -> subprocess.CompletedProcess[str]:
        commands = clone_commands(Source("git", url, directory, None), mirror_url)
        script = " && ".join(command for command, _ in commands)
        return subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=False
        )

    # Through the mirror: origin is the source's URL, the commit the forge's
    result = run(host_url(mirrors.prepare(url)), "via")
    assert result.returncode == 0, result.stderr
    assert git("remote", "get-url", "origin", cwd=tmp_path / "via").stdout.strip() == url
    assert git("rev-parse", "HEAD", cwd=tmp_path / "via").stdout.strip() == head
    # A mirror that does not answer: direct, the same result
    result = run(f"git://127.0.0.1:{pick_port()}/nothing.git", "direct")
    assert result.returncode == 0 and "cloning directly" in result.stdout, result
    assert git("rev-parse", "HEAD", cwd=tmp_path / "direct").stdout.strip() == head
    # A directory that exists already is not removed: the clone fails as without a cache
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep").touch()
    result = run(host_url(mirrors.prepare(url)), "taken")
    assert result.returncode != 0 and (tmp_path / "taken" / "keep").exists(), result
    assert "already exists" in result.stderr
    assert "remote set-url origin" in guest_clone_command("git://m/x", url, "d")


def test_the_git_series_exist_from_the_start() -> None:
    metrics = WorkerMetrics()
    metrics.cache_request("git", "hit", 10)
    metrics.cache_served("git", 100)
    registry = metrics.registry
    assert (
        registry.get_sample_value(
            "buildworker_cache_requests_total", {"cache": "git", "result": "bypass"}
        )
        == 0
    )
    assert (
        registry.get_sample_value(
            "buildworker_cache_requests_total", {"cache": "git", "result": "hit"}
        )
        == 1
    )
    assert (
        registry.get_sample_value("buildworker_cache_served_bytes_total", {"cache": "git"}) == 100
    )
    assert (
        registry.get_sample_value("buildworker_cache_fetched_bytes_total", {"cache": "git"}) == 10
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("git-port = 0", "cache.git-port: expected a port from 1 to 65535"),
        ("git = yes\napt-run = yes\napt-port = 3142\ngit-port = 3142", "cache.git-port: 3142"),
        ("git-hosts = Git.sr.ht", "cache.git-hosts: expected lower-case host names"),
        ("git-private-hosts = a:b", "cache.git-private-hosts: expected HOST or HOST:PORT"),
        ("git-fetch-timeout = 0s", "cache.git-fetch-timeout"),
        ("git-max-size = lots", "cache.git-max-size: expected a size"),
        ("git = maybe", "cache.git: expected yes or no"),
    ],
)
def test_a_bad_git_cache_option_is_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_config(f"[cache]\n{text}\n")


def test_a_good_git_cache_section_parses(tmp_path: Path) -> None:
    config = parse_config(
        f"[cache]\ngit = yes\ngit-port = 9500\ngit-dir = {tmp_path}\ngit-max-size = 2GiB\n"
        "git-hosts = git.sr.ht, github.com\ngit-private-hosts = forge.lan:9418\n"
    ).cache
    assert config.git and config.git_port == 9500 and config.git_dir == tmp_path
    assert config.git_max_size == 2 * 1024**3
    assert config.git_hosts == ("git.sr.ht", "github.com")
    assert config.git_private_hosts == ("forge.lan:9418",)
