"""images/debian/genimg: idempotent and quick once built, clear about bad arguments."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import IMAGES, REPO, SSH_KEY

GENIMG = IMAGES / "debian" / "genimg"


def genimg(*args: str) -> subprocess.CompletedProcess[str]:
    # No test leaves the host: link-aliases' mirror is a port nothing listens on (its last
    # known table then applies; tests/guest/test_link_aliases.py runs it against a mirror).
    env = {**os.environ, "DEBIAN_MIRROR": "http://127.0.0.1:9"}
    return subprocess.run(
        [str(GENIMG), *args], capture_output=True, text=True, timeout=600, check=False, env=env
    )


def test_a_built_image_is_reported_up_to_date_at_once(bookworm: object) -> None:
    start = time.monotonic()
    result = genimg("bookworm", "--authorized-key", f"{SSH_KEY}.pub")
    assert result.returncode == 0, result.stderr
    assert "is up to date" in result.stdout
    assert time.monotonic() - start < 10
    # The aliases are in place: bookworm is oldstable now (trixie stable, where built).
    debian = IMAGES / "debian"
    assert (debian / "oldstable").resolve() == (debian / "bookworm").resolve()
    if (debian / "trixie" / "config.yml").exists():
        assert (debian / "stable").resolve() == (debian / "trixie").resolve()
    else:
        assert not (debian / "stable").exists()
    # And its digest is recorded, as image check verifies it.
    assert 'digest:\n  amd64: "sha256:' in (debian / "bookworm" / "config.yml").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["potato"], "unknown Debian release 'potato'"),
        (["bookworm", "mips"], "unsupported architecture 'mips'"),
        (["bookworm", "--authorized-key", "/nonexistent.pub"], "--authorized-key: cannot read"),
        (["bookworm", "--frobnicate"], "unknown option --frobnicate"),
        ([], "usage: genimg"),
    ],
)
def test_bad_arguments_are_refused_naming_the_cause(args: list[str], message: str) -> None:
    result = genimg(*args)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.fixture
def stale_mirror(tmp_path: Path) -> Iterator[str]:
    """A loopback "mirror" whose sid Release expired, as these machines' mirror's did."""
    dists = tmp_path / "mirror" / "dists" / "sid"
    dists.mkdir(parents=True)
    (dists / "InRelease").write_text(
        "Origin: Debian\nSuite: unstable\nCodename: sid\n"
        "Date: Fri, 30 Oct 2026 08:08:01 UTC\nValid-Until: Fri, 06 Nov 2026 08:08:01 UTC\n"
    )

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path / "mirror"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_release_past_its_valid_until_is_refused_naming_the_date_and_the_way_out(
    stale_mirror: str, tmp_path: Path
) -> None:
    # This checkout's genimg (the built images may be another checkout's), into an empty dir.
    env = {**os.environ, "DEBIAN_MIRROR": stale_mirror}
    env.pop("DEBIAN_ALLOW_STALE_MIRROR", None)
    args = ["sid", "--images", str(tmp_path / "out"), "--authorized-key", f"{SSH_KEY}.pub"]
    result = subprocess.run(
        [str(REPO / "images" / "debian" / "genimg"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode != 0
    assert "the mirror's sid Release expired on Fri, 06 Nov 2026 08:08:01 UTC" in result.stderr
    assert "DEBIAN_ALLOW_STALE_MIRROR=1" in result.stderr
    assert "bootstrapping" not in result.stdout  # refused before mmdebstrap ran
    assert not (tmp_path / "out" / "debian" / "sid" / "config.yml").exists()


def fake_built(images: Path, release: str = "bookworm") -> None:
    """An images dir where this checkout's genimg finds debian/<release> (amd64) up to date:
    the outputs exist and .recipe is the hash genimg computes (its recipe= line)."""
    here = REPO / "images" / "debian"
    text = (here / "genimg").read_text()
    block = text[text.index("packages=(") : text.index(")\n", text.index("packages=("))]
    packages = " ".join(block.removeprefix("packages=(").replace('"$kernel_pkg"', "").split())
    packages = f"linux-image-cloud-amd64 {packages}"
    recipe_input = b"".join((here / n).read_bytes() for n in ("genimg", "customize", "initrd-init"))
    recipe_input += f"{packages}\n{release} amd64\n".encode() + Path(f"{SSH_KEY}.pub").read_bytes()
    out = images / "debian" / release / "amd64"
    out.mkdir(parents=True)
    for name in ("root.img.qcow2", "vmlinuz", "initrd.img"):
        (out / name).write_bytes(b"x")
    (out / ".recipe").write_text(hashlib.sha256(recipe_input).hexdigest()[:16] + "\n")
    (out.parent / "config.yml").write_text('family: debian\ndigest:\n  amd64: "sha256:00"\n')


def test_an_up_to_date_check_asks_the_mirror_only_when_an_alias_link_it_made_is_gone(
    tmp_path: Path,
) -> None:
    fake_built(tmp_path)
    record = tmp_path / "debian" / ".build" / "aliases"
    env = {**os.environ, "DEBIAN_MIRROR": "http://127.0.0.1:9"}
    args = [str(REPO / "images" / "debian" / "genimg"), "bookworm", "--images", str(tmp_path)]
    args += ["--authorized-key", f"{SSH_KEY}.pub"]

    def run() -> None:
        result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
        assert result.returncode == 0 and "is up to date" in result.stdout, result.stderr

    run()  # no run of link-aliases recorded yet: it runs
    assert "debian/oldstable -> bookworm" in record.read_text()
    assert (tmp_path / "debian" / "oldstable").resolve() == (tmp_path / "debian" / "bookworm")
    made = record.stat().st_mtime_ns
    run()  # every link it made is there: the mirror is not asked
    assert record.stat().st_mtime_ns == made
    (tmp_path / "debian" / "oldstable").unlink()
    run()  # a link it made is gone: it runs again and puts it back
    assert record.stat().st_mtime_ns != made
    assert (tmp_path / "debian" / "oldstable").is_symlink()
