"""Every real manifest in shared/corpus gets the verdict its INDEX.tsv gives."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from buildworker.manifest import Manifest, ManifestError, parse_manifest

from .conftest import CorpusEntry, corpus_dir, corpus_entries

ENTRIES = corpus_entries()


def verdict_of(path: Path) -> str:
    try:
        parse_manifest(path.read_text(encoding="utf-8"))
    except ManifestError as exc:
        return f"invalid:{exc.errors[0].field}"
    return "valid"


def test_index_covers_every_file_in_the_corpus() -> None:
    on_disk = {p.name for p in corpus_dir().iterdir() if p.name != "INDEX.tsv"}
    assert on_disk == {e.path.name for e in ENTRIES}
    assert len(ENTRIES) >= 50
    assert {e.verdict.split(":")[0] for e in ENTRIES} == {"valid", "invalid"}


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.path.name for e in ENTRIES])
def test_parser_verdict_matches_index(entry: CorpusEntry) -> None:
    got = verdict_of(entry.path)
    if entry.verdict == "valid":
        assert got == "valid"
    else:
        # "invalid:<field>": refused, with an error whose field starts with <field>.
        expected_field = entry.verdict.split(":", 1)[1]
        assert got.startswith(f"invalid:{expected_field}")


def test_valid_corpus_manifests_have_tasks_and_parse_their_sources() -> None:
    for entry in ENTRIES:
        if entry.verdict != "valid":
            continue
        manifest = parse_manifest(entry.path.read_text(encoding="utf-8"))
        assert isinstance(manifest, Manifest)
        assert manifest.tasks or manifest.shell
        for source in manifest.parsed_sources():
            assert source.scm in ("git", "hg") and source.directory


def test_lint_gives_the_same_verdicts_on_the_whole_corpus(
    buildworker_bin: Path, empty_config: Path
) -> None:
    # One run of the real console script over every file: problems are printed as
    # "FILE: field: reason", warnings as "FILE: warning: field: reason".
    paths = [str(e.path) for e in ENTRIES]
    result = subprocess.run(
        [str(buildworker_bin), "--config", str(empty_config), "lint", *paths],
        capture_output=True,
        text=True,
        timeout=120,
    )
    invalid = [e for e in ENTRIES if e.verdict != "valid"]
    assert result.returncode == (1 if invalid else 0), result.stderr
    errors: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        path, _, rest = line.partition(": ")
        if not rest.startswith("warning: "):
            errors.setdefault(path, []).append(rest)
    for entry in ENTRIES:
        if entry.verdict == "valid":
            assert str(entry.path) not in errors, errors.get(str(entry.path))
        else:
            field = entry.verdict.split(":", 1)[1]
            assert errors[str(entry.path)][0].startswith(field), errors[str(entry.path)]
    # Exit statuses: 0 for the valid files together, 1 for each invalid one on its own.
    # (Few runs: each start of the console script costs about a second.)
    valid = [str(e.path) for e in ENTRIES if e.verdict == "valid"]
    ok = subprocess.run(
        [str(buildworker_bin), "--config", str(empty_config), "lint", *valid],
        capture_output=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stdout
    for entry in invalid:
        bad = subprocess.run(
            [str(buildworker_bin), "--config", str(empty_config), "lint", str(entry.path)],
            capture_output=True,
            timeout=60,
        )
        assert bad.returncode == 1, entry.path
