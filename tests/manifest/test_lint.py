"""`buildworker lint` through the installed console script: output format and exit codes."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from buildworker.commands import lint
from buildworker.exitcodes import EXIT_INVALID, EXIT_UNREADABLE, EXIT_VALID
from buildworker.manifest import parse_manifest
from buildworker.render import DEFAULT_PREAMBLE

REPO_ROOT = Path(__file__).resolve().parents[2]
Lint = Callable[..., subprocess.CompletedProcess[str]]
GOOD = "image: debian/bookworm\ntasks:\n  - build: make\n"


@pytest.fixture
def run_lint(
    buildworker_bin: Path, empty_config: Path
) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(*args: str, stdin: str | None = None, config: Path = empty_config) -> Any:
        return subprocess.run(
            [str(buildworker_bin), "--config", str(config), "lint", *args],
            capture_output=True,
            text=True,
            input=stdin,
            timeout=60,
        )

    return run


def test_valid_file_exits_zero_and_prints_no_problem(run_lint: Lint, tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text(GOOD)
    result = run_lint(str(good))
    assert result.returncode == 0
    assert result.stdout == ""
    assert "1 file checked: 1 valid, 0 invalid, 0 unreadable" in result.stderr


def test_problems_and_warnings_are_printed_per_file(run_lint: Lint, tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text(GOOD + "variables: {A: 1}\n")
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "image: debian/bookworm\ntasks: [{Build: x}]\nenvironment: {A: {B: c}}\nfoo: 1\n"
    )
    result = run_lint(str(good), str(bad))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{good}: warning: variables: unknown key, ignored",
        f"{bad}: tasks[0]: invalid task name 'Build' (use a-z, 0-9, _ and -)",
        f"{bad}: environment.A: nested maps are not supported (use a string, a number or a list)",
        f"{bad}: warning: foo: unknown key, ignored",
    ]


def test_no_warnings_flag_hides_warnings(run_lint: Lint, tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text(GOOD + "variables: {A: 1}\n")
    result = run_lint("--no-warnings", str(good))
    assert (result.returncode, result.stdout) == (0, "")


def test_unreadable_file_exits_two(run_lint: Lint, tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text(GOOD)
    missing = tmp_path / "missing.yml"
    binary = tmp_path / "binary.yml"
    binary.write_bytes(b"image: \xff\xfe\n")
    result = run_lint(str(good), str(missing), str(binary))
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        f"{missing}: cannot read: No such file or directory",
        f"{binary}: manifest: not UTF-8 text (byte 7)",
    ]


def test_stdin_and_limits(run_lint: Lint) -> None:
    result = run_lint("--max-size", "20", "-", stdin=GOOD)
    assert result.returncode == 1
    assert result.stdout == "-: manifest: must be at most 20 bytes\n"
    many = GOOD + "artifacts: [a, b, c]\n"
    result = run_lint("--max-artifacts", "2", "-", stdin=many)
    assert result.stdout == "-: artifacts: at most 2 artifacts are allowed, got 3\n"


def test_help_documents_output_and_exit_codes(buildworker_bin: Path) -> None:
    result = subprocess.run(
        [str(buildworker_bin), "lint", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "'FILE: field: reason'" in text
    assert "'FILE: warning: field: reason'" in text
    assert (
        "Exit status: 0 when every file is a valid manifest, 1 when at least one is invalid, 2"
        in text
    )


def test_render_prints_buildenv_and_task_scripts(run_lint: Lint) -> None:
    hello = REPO_ROOT / "examples" / "hello.yml"
    result = run_lint("--render", str(hello))
    assert result.returncode == 0, result.stdout
    out = result.stdout
    assert f"==> {hello}: ~/.buildenv\n#!/bin/sh\ncomplete-build() {{\n" in out
    assert "export RELEASE=1000000\n" in out
    assert "WORDS=(one 'two words' 3)\n" in out
    assert f"==> {hello}: ~/.tasks/greet\n{DEFAULT_PREAMBLE}echo " in out
    assert f"==> {hello}: ~/.tasks/check\n{DEFAULT_PREAMBLE}" in out


def test_example_manifest_is_what_the_readme_promises() -> None:
    manifest = parse_manifest((REPO_ROOT / "examples" / "hello.yml").read_text())
    assert manifest.image == "debian/bookworm"
    assert len(manifest.tasks) == 2
    assert manifest.environment and not manifest.packages
    assert manifest.warnings == ()


def test_command_module_follows_the_cli_contract() -> None:
    assert lint.NAME == "lint" and lint.HELP
    assert (EXIT_VALID, EXIT_INVALID, EXIT_UNREADABLE) == (0, 1, 2)


def test_limits_default_to_the_api_config(run_lint: Lint, tmp_path: Path) -> None:
    conf = tmp_path / "worker.conf"
    conf.write_text("[api]\nmax-artifacts = 1\nmax-manifest-size = 1KiB\n")
    two = GOOD + "artifacts: [a, b]\n"
    result = run_lint("-", stdin=two, config=conf)
    assert result.stdout == "-: artifacts: at most 1 artifacts are allowed, got 2\n"
    big = GOOD + "#" * 1100 + "\n"
    assert (
        run_lint("-", stdin=big, config=conf).stdout == "-: manifest: must be at most 1024 bytes\n"
    )
    # An explicit flag wins over the config.
    assert run_lint("--max-artifacts", "2", "-", stdin=two, config=conf).returncode == 0
