"""images/debian/link-aliases: the suite aliases name what the mirror says each suite is
today, among the releases built here (a loopback mirror; no test leaves the host)."""

from __future__ import annotations

import functools
import http.server
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO

LINK_ALIASES = REPO / "images" / "debian" / "link-aliases"


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], str]]:
    """A loopback mirror factory: {suite: codename} → its URL."""
    servers: list[http.server.ThreadingHTTPServer] = []

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    def make(suites: dict[str, str]) -> str:
        root = tmp_path / f"mirror{len(servers)}"
        for suite, codename in suites.items():
            dists = root / "dists" / suite
            dists.mkdir(parents=True)
            (dists / "Release").write_text(
                f"Origin: Debian\nLabel: Debian\nSuite: {suite}\nCodename: {codename}\n"
                "Date: Sat, 28 Nov 2026 08:00:00 UTC\n" + "MD5Sum:\n" + " 0" * 3000 + "\n"
            )
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root))
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


def built(dest: Path, *releases: str) -> Path:
    for release in releases:
        (dest / release).mkdir(parents=True)
        (dest / release / "config.yml").write_text(f"release: {release}\n")
    return dest


def link(dest: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINK_ALIASES), str(dest), url], capture_output=True, text=True, timeout=60
    )


TODAY = {"oldstable": "bookworm", "stable": "trixie", "testing": "forky", "unstable": "sid"}


def test_aliases_follow_the_mirror_and_only_name_built_releases(
    mirror: Callable[[dict[str, str]], str], tmp_path: Path
) -> None:
    dest = built(tmp_path / "debian", "bookworm", "trixie")
    (dest / "testing").symlink_to("trixie")  # what an older table said
    result = link(dest, mirror(TODAY))
    assert result.returncode == 0, result.stderr
    assert {p.name: p.readlink().name for p in dest.iterdir() if p.is_symlink()} == {
        "oldstable": "bookworm",
        "stable": "trixie",
    }
    # testing is forky now: not built, so no alias (not one to trixie it no longer means)
    assert "forky is not built here (images/debian/genimg forky)" in result.stdout
    assert "sid is not built here" in result.stdout


def test_when_the_mirror_says_otherwise_the_aliases_move(
    mirror: Callable[[dict[str, str]], str], tmp_path: Path
) -> None:
    dest = built(tmp_path / "debian", "bullseye", "bookworm", "trixie")
    before_trixie = {"oldstable": "bullseye", "stable": "bookworm", "testing": "trixie"}
    assert link(dest, mirror(before_trixie)).returncode == 0
    assert (dest / "stable").readlink().name == "bookworm"
    assert (dest / "testing").readlink().name == "trixie"
    assert link(dest, mirror(TODAY)).returncode == 0
    assert (dest / "stable").readlink().name == "trixie"
    assert (dest / "oldstable").readlink().name == "bookworm"
    assert not (dest / "testing").is_symlink()


def test_without_a_mirror_the_last_known_table_is_used(tmp_path: Path) -> None:
    dest = built(tmp_path / "debian", "bookworm", "trixie", "sid")
    (dest / "testing").mkdir()  # a real directory of that name is the ops team's: left alone
    result = link(dest, "http://127.0.0.1:9")  # nothing listens on the discard port
    assert result.returncode == 0, result.stderr
    assert (dest / "stable").readlink().name == "trixie"
    assert (dest / "oldstable").readlink().name == "bookworm"
    assert (dest / "unstable").readlink().name == "sid"
    assert (dest / "testing").is_dir() and not (dest / "testing").is_symlink()
