"""The console script: subcommand discovery, --config handling, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from buildworker.cli import main
from buildworker.exitcodes import EXIT_USAGE

BIN = Path(sys.executable).parent / "buildworker"


def test_console_script_lists_discovered_subcommands() -> None:
    out = subprocess.run([BIN, "--help"], capture_output=True, text=True, check=True).stdout
    assert "COMMAND" in out
    assert "lint" in out  # discovered from buildworker/commands/lint.py


def test_no_subcommand_is_a_usage_error() -> None:
    assert main([]) == EXIT_USAGE


def test_bad_config_value_is_reported_with_section_and_key(tmp_path: Path) -> None:
    conf = tmp_path / "w.conf"
    conf.write_text("[worker]\ntimeout = 45x\n")
    probe = tmp_path / "m.yml"
    probe.write_text("image: debian/bookworm\ntasks:\n- a: echo\n")
    result = subprocess.run(
        [BIN, "--config", str(conf), "config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == EXIT_USAGE
    assert "worker.timeout: expected a duration such as 45m, got '45x'" in result.stderr


def test_config_command_prints_effective_values_and_hides_secrets(tmp_path: Path) -> None:
    conf = tmp_path / "w.conf"
    conf.write_text("[worker]\nslots = 4\ntoken = s3cret-value\n")
    result = subprocess.run(
        [BIN, "config", "--config", str(conf)], capture_output=True, text=True, check=True
    )
    assert "slots = 4" in result.stdout
    assert "token = <set>" in result.stdout
    assert "s3cret-value" not in result.stdout


def test_running_one_command_imports_only_that_command() -> None:
    # `buildworker lint` must not pay for the API tier's imports (FastAPI, SQLAlchemy).
    code = (
        "import sys; from buildworker.cli import build_parser, _named_command; "
        "build_parser(_named_command(['--config', 'x.conf', 'lint', 'a.yml'])); "
        "print(sorted(m for m in sys.modules if m.startswith('buildworker.commands.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['buildworker.commands.lint']"
    assert "fastapi" not in out.stdout


def test_config_command_hides_mail_and_webhook_secrets(tmp_path: Path) -> None:
    conf = tmp_path / "w.conf"
    conf.write_text("[mail]\nsmtp-password = hunter2-pw\n[triggers]\nwebhook-key = c2VlZA==\n")
    result = subprocess.run(
        [BIN, "config", "--config", str(conf)], capture_output=True, text=True, check=True
    )
    assert "hunter2-pw" not in result.stdout
    assert "c2VlZA==" not in result.stdout
    assert "smtp-password = <set>" in result.stdout
