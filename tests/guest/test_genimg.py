"""images/debian/genimg: idempotent and quick once built, clear about bad arguments."""

from __future__ import annotations

import subprocess
import time

import pytest

from .conftest import IMAGES, SSH_KEY

GENIMG = IMAGES / "debian" / "genimg"


def genimg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GENIMG), *args], capture_output=True, text=True, timeout=600, check=False
    )


def test_a_built_image_is_reported_up_to_date_at_once(bookworm: object) -> None:
    start = time.monotonic()
    result = genimg("bookworm", "--authorized-key", f"{SSH_KEY}.pub")
    assert result.returncode == 0, result.stderr
    assert "is up to date" in result.stdout
    assert time.monotonic() - start < 10
    # The aliases are in place.
    assert (IMAGES / "debian" / "stable").resolve() == (IMAGES / "debian" / "bookworm").resolve()


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
