"""The setup log's line naming the image a job runs on (issue 14)."""

from __future__ import annotations

from buildworker.worker.runner import image_line

DIGEST = "sha256:" + "d" * 64


def test_an_alias_is_named_beside_the_release_with_the_digest() -> None:
    line = image_line("debian/stable", "debian/bookworm", "amd64", DIGEST)
    assert line == f"Image: debian/bookworm (asked as debian/stable), amd64, digest {DIGEST}"


def test_a_release_asked_by_name_and_an_image_without_a_digest() -> None:
    line = image_line("debian/bookworm", "debian/bookworm", "arm64", None)
    assert line == "Image: debian/bookworm, arm64, digest not recorded"
