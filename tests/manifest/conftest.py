"""Fixtures for the manifest tests: the shared corpus and the installed console script."""

from __future__ import annotations

import csv
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def corpus_dir() -> Path:
    """shared/corpus/manifests beside the checkout (as in CI), else /work/shared's.

    Fails instead of skipping: the corpus is part of the acceptance criteria.
    """
    for shared in (REPO_ROOT / ".." / "shared", Path("/work/shared")):
        candidate = shared.resolve() / "corpus" / "manifests"
        if (candidate / "INDEX.tsv").is_file():
            return candidate
    raise RuntimeError(f"corpus not found beside {REPO_ROOT} nor under /work/shared")


@dataclass(frozen=True)
class CorpusEntry:
    path: Path
    verdict: str  # "valid" or "invalid:<field>"


def corpus_entries() -> list[CorpusEntry]:
    directory = corpus_dir()
    with open(directory / "INDEX.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [CorpusEntry(directory / row["file"], row["verdict"]) for row in rows]


@pytest.fixture(scope="session")
def buildworker_bin() -> Path:
    """The console script installed in the test's virtualenv (not a module import)."""
    beside = Path(sys.executable).parent / "buildworker"
    if beside.exists():
        return beside
    found = shutil.which("buildworker")
    if found is None:
        raise RuntimeError("the buildworker console script is not installed")
    return Path(found)


@pytest.fixture(scope="session")
def empty_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config file with no keys: lint then uses the built-in defaults, whatever
    $BUILDWORKER_CONFIG or /etc/buildworker/worker.conf say on this machine."""
    path = tmp_path_factory.mktemp("config") / "empty.conf"
    path.write_text("")
    return path
