"""The package cache on the host: a real apt-cacher-ng of ours, the Debian archive through it,
nothing else through it, its transfer log as metrics, trimming, and the [cache] options."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from buildworker.cache.apt import (
    APT_CONF_PATH,
    AptCacher,
    CacheError,
    Transfer,
    TransferLog,
    guest_apt_conf,
    start_apt_cache,
    trim_cache,
)
from buildworker.config import CacheConfig, ConfigError, parse_config
from buildworker.guest.images import ImageInfo
from buildworker.guest.ports import pick_port
from buildworker.worker.metrics import WorkerMetrics

RELEASE = "http://deb.debian.org/debian/dists/bookworm/Release"
#: a package file: never revalidated (index files such as Release are, on each fetch)
DEB = "http://deb.debian.org/debian/pool/main/h/hello/hello_2.10-3_amd64.deb"
SECURITY = "http://deb.debian.org/debian-security/dists/bookworm-security/Release"


@pytest.fixture(scope="module")
def cacher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AptCacher, list[Transfer]]]:
    seen: list[Transfer] = []
    cache = AptCacher(
        tmp_path_factory.mktemp("acng"), port=pick_port(below=32768), on_transfer=seen.append
    ).start()
    try:
        yield cache, seen
    finally:
        cache.close()


def get(cache: AptCacher, url: str) -> httpx.Response:
    with httpx.Client(proxy=cache.url, timeout=60) as client:
        return client.get(url)


def wait_for(seen: list[Transfer], count: int) -> None:
    deadline = time.monotonic() + 15
    while len(seen) < count:
        assert time.monotonic() < deadline, f"transfers seen: {seen}"
        time.sleep(0.1)


def test_the_archive_comes_through_and_the_second_fetch_is_a_hit(
    cacher: tuple[AptCacher, list[Transfer]],
) -> None:
    cache, seen = cacher
    before = len(seen)
    # Given a package fetched through our apt-cacher-ng twice
    first = get(cache, DEB)
    second = get(cache, DEB)
    # Then both answers are the file, and the log shows one miss then one hit
    assert first.status_code == second.status_code == 200
    assert first.content == second.content and first.content.startswith(b"!<arch>")
    wait_for(seen, before + 2)
    miss, hit = seen[before : before + 2]
    assert not miss.hit and miss.fetched_bytes > 0
    assert hit.hit and hit.fetched_bytes == 0 and hit.served_bytes == miss.served_bytes
    # And the archive's index and the security archive are served too
    assert b"Codename: bookworm" in get(cache, RELEASE).content
    assert get(cache, SECURITY).status_code == 200


def test_the_cache_serves_nothing_but_the_debian_archives(
    cacher: tuple[AptCacher, list[Transfer]],
) -> None:
    cache, _ = cacher
    # A host service, the cache itself, another site, the archive path on a local host
    for url in (
        "http://127.0.0.1:22/",
        f"http://127.0.0.1:{cache.port}/acng-report.html",
        "http://example.com/",
        "http://127.0.0.1:8080/debian/dists/bookworm/Release",
        "http://169.254.169.254/latest/meta-data/",
    ):
        assert get(cache, url).status_code == 403, url
    # And no tunnel: CONNECT is refused
    with socket.create_connection(("127.0.0.1", cache.port), timeout=10) as sock:
        sock.sendall(b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n")
        assert sock.recv(64).split(b" ")[1] == b"403"


def test_transfers_become_the_cache_metrics(
    cacher: tuple[AptCacher, list[Transfer]],
) -> None:
    _, seen = cacher
    metrics = WorkerMetrics()
    for transfer in seen:
        metrics.cache_transfer("apt", transfer.hit, transfer.served_bytes, transfer.fetched_bytes)
    value = metrics.registry.get_sample_value
    hits = sum(t.hit for t in seen)
    assert hits >= 1 and len(seen) - hits >= 1
    assert value("buildworker_cache_requests_total", {"cache": "apt", "result": "hit"}) == hits
    assert value("buildworker_cache_served_bytes_total", {"cache": "apt"}) == sum(
        t.served_bytes for t in seen
    )
    assert value("buildworker_cache_fetched_bytes_total", {"cache": "apt"}) == sum(
        t.fetched_bytes for t in seen
    )


def test_the_transfer_log_waits_for_a_whole_line_and_follows_a_truncation(tmp_path: Path) -> None:
    path = tmp_path / "apt-cacher.log"
    log = TransferLog(path)
    assert log.read() == []  # no file yet
    path.write_bytes(b"1|I|100|127.0.0.1|debrep/a.deb\n1|O|90|127.0.0.1|debrep/a.deb\n1|O|9")
    assert log.read() == [Transfer(hit=False, served_bytes=90, fetched_bytes=100)]
    with open(path, "ab") as handle:
        handle.write(b"0|127.0.0.1|debrep/a.deb\n1|E|832|127.0.0.1| [HTTP error]\n")
    assert log.read() == [Transfer(hit=True, served_bytes=90, fetched_bytes=0)]
    path.write_bytes(b"2|O|5|127.0.0.1|debrep/b\n")
    assert log.read() == [Transfer(hit=True, served_bytes=5, fetched_bytes=0)]


def test_a_taken_port_is_refused_naming_the_option(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(CacheError, match=r"cache\.apt-port: 127\.0\.0\.1:\d+ is taken"):
            AptCacher(tmp_path, port=port).start()


def test_trim_removes_the_least_recently_used_files_with_their_heads(tmp_path: Path) -> None:
    now = time.time()
    for age, name in ((300, "old.deb"), (200, "mid.deb"), (100, "new.deb")):
        for path in (tmp_path / name, tmp_path / f"{name}.head"):
            path.write_bytes(b"x" * (8192 if path.suffix == ".deb" else 10))
            os.utime(path, (now - age, now - age))
    on_disk = sum(p.stat().st_blocks * 512 for p in tmp_path.iterdir())
    removed = trim_cache(tmp_path, on_disk - 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mid.deb",
        "mid.deb.head",
        "new.deb",
        "new.deb.head",
    ]
    assert removed > 0
    assert trim_cache(tmp_path, on_disk) == 0


def test_guests_send_only_the_cached_hosts_through_it() -> None:
    text = guest_apt_conf("http://10.0.2.2:3142", ["deb.debian.org", "security.debian.org"])
    assert text.splitlines() == [
        'Acquire::http::Proxy "DIRECT";',
        'Acquire::http::Proxy::deb.debian.org "http://10.0.2.2:3142";',
        'Acquire::http::Proxy::security.debian.org "http://10.0.2.2:3142";',
    ]
    image = ImageInfo(
        name="debian/bookworm",
        arch="x86_64",
        directory=Path("/nonexistent"),
        disk=Path("/nonexistent/disk"),
        kernel=None,
        initrd=None,
        apt_proxy="http://10.0.2.2:3142",
        apt_hosts=("deb.debian.org",),
    )
    command = image.install_command(["cmake"])
    assert command.index(APT_CONF_PATH) < command.index("apt-get update")
    assert APT_CONF_PATH in image.add_repository_command("x", "http://example.org/ x main")
    plain = ImageInfo(**{**vars(image), "apt_proxy": ""})
    assert APT_CONF_PATH not in plain.install_command(["cmake"])


def test_an_existing_proxy_becomes_a_forward_and_no_process_of_ours() -> None:
    cache = start_apt_cache(CacheConfig(apt_proxy="http://127.0.0.1:3999"))
    assert cache.forwards == ("10.0.2.2:3999=127.0.0.1:3999",)
    assert cache.guest_url == "http://10.0.2.2:3999" and cache.cacher is None
    off = start_apt_cache(CacheConfig())
    assert off.forwards == () and off.guest_url == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("apt-proxy = http://10.1.2.3:3142", "cache.apt-proxy: expected http://127.0.0.1:PORT"),
        ("apt-proxy = https://127.0.0.1:3142", "cache.apt-proxy: expected"),
        ("apt-proxy = http://127.0.0.1:3142\napt-run = yes", "cache.apt-proxy: set together"),
        ("apt-port = 40000", "cache.apt-port: expected a port from 1 to 32767"),
        ("apt-hosts = deb.debian.org, a b", "cache.apt-hosts: expected host names"),
        ("apt-max-size = lots", "cache.apt-max-size: expected a size"),
        ("apt-run = maybe", "cache.apt-run: expected yes or no"),
    ],
)
def test_a_bad_cache_section_names_the_option(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_config(f"[cache]\n{text}\n")


def test_a_good_cache_section_parses() -> None:
    config = parse_config("[cache]\napt-run = yes\napt-port = 3143\napt-max-age = 2d\n")
    assert config.cache.apt_url == "http://127.0.0.1:3143"
    assert config.cache.apt_max_age == 2 * 86400


def test_a_run_shares_the_cache_a_worker_runs_already(
    cacher: tuple[AptCacher, list[Transfer]],
) -> None:
    cache, _ = cacher
    # Given apt-run on the port our running cache holds: a run uses it, a worker refuses
    config = CacheConfig(apt_run=True, apt_port=cache.port)
    shared = start_apt_cache(config, share_running=True)
    assert shared.cacher is None and shared.guest_url == f"http://10.0.2.2:{cache.port}"
    with pytest.raises(CacheError, match=r"cache\.apt-port"):
        start_apt_cache(config, share_running=False)


def test_our_apt_cacher_ng_dies_with_a_worker_killed_outright(tmp_path: Path) -> None:
    # Given a process that started our cache, killed with SIGKILL (no close())
    script = (
        "import sys, time; from pathlib import Path; from buildworker.cache.apt import AptCacher; "
        f"c = AptCacher(Path({str(tmp_path)!r}), port={pick_port(below=32768)}).start(); "
        "print('PID', c._process.pid, flush=True); time.sleep(600)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    line = ""
    while not line.startswith("PID "):
        line = parent.stdout.readline()
        assert line, "the parent ended before starting the cache"
    child = int(line.split()[1])
    os.kill(child, 0)  # running
    parent.kill()
    parent.wait(10)
    # Then apt-cacher-ng goes too (it would hold the port for the next start)
    deadline = time.monotonic() + 10
    try:
        while Path(f"/proc/{child}").exists() and "Z" not in _state(child):
            assert time.monotonic() < deadline, f"apt-cacher-ng {child} outlived its parent"
            time.sleep(0.1)
    finally:
        if "Z" not in _state(child):
            os.kill(child, 9)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
