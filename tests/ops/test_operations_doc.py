"""docs/operations.md says what the code does: its configuration reference is the one
`buildworker config --reference` generates from config.py, and the README points to it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from buildworker.commands.config import reference
from buildworker.config import describe

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "operations.md"
BLOCK = re.compile(r"<!-- BEGIN config reference -->\n(.*?)<!-- END config reference -->", re.S)


def test_the_config_reference_in_the_doc_is_the_generated_one() -> None:
    match = BLOCK.search(DOC.read_text())
    assert match, "docs/operations.md lost its config reference markers"
    assert match.group(1) == reference(), (
        "docs/operations.md's configuration reference differs from config.py: regenerate it "
        "with `buildworker config --reference` between the markers"
    )


def test_the_reference_lists_every_key_with_its_default() -> None:
    text = reference()
    for section, key, default, _doc in describe():
        assert f"#### `[{section}]`" in text
        shown = f"`{default}`" if default else "(empty)"
        assert f"| `{key}` | {shown} |" in text


def test_config_reference_command_prints_it() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "buildworker.cli", "config", "--reference"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert out == reference()


def test_readme_points_to_the_operations_guide() -> None:
    assert "(docs/operations.md)" in (REPO / "README.md").read_text()
