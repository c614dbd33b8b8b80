"""The units under systemd's own tools: `systemd-analyze verify` clean, `security
--offline=true` at or under the exposure levels of issue 10, the sysusers.d entry valid,
and the settings the daemons rely on (notify, watchdog, stop timeout above the drain)."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from buildworker.config import WorkerConfig

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
#: The highest exposure `systemd-analyze security` may give each unit (issue 10).
LEVELS = {"buildworker-api.service": 2.5, "buildworker-worker.service": 5.0}


def unit_settings(name: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    section = ""
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(f"{section}.{key}", []).append(value)
    return settings


def root_with(tmp_path: Path, units: dict[str, str]) -> Path:
    """A file system root holding the units, systemd's own units and the ExecStart binary,
    so verify checks the units as on an installed host."""
    root = tmp_path / "root"
    binary = root / "opt/buildworker/.venv/bin/buildworker"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for name, text in units.items():
        (root / "etc/systemd/system" / name).write_text(text)
    return root


def verify(root: Path, names: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "systemd-analyze",
            "verify",
            f"--root={root}",
            *(f"/etc/systemd/system/{n}" for n in names),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_systemd_analyze_verify_is_clean_on_both_units(tmp_path: Path) -> None:
    units = {name: (UNITS / name).read_text() for name in LEVELS}
    result = verify(root_with(tmp_path, units), list(units))
    print(result.stdout, result.stderr)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    # the check above can fail: a misspelt directive is reported
    text = (UNITS / "buildworker-api.service").read_text().replace("WatchdogSec=", "WatchDogSec=")
    result = verify(
        root_with(tmp_path, {"buildworker-api.service": text}), ["buildworker-api.service"]
    )
    assert "Unknown key 'WatchDogSec' in section [Service]" in result.stderr


@pytest.mark.parametrize("name", sorted(LEVELS))
def test_security_exposure_is_at_or_under_the_level(name: str) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNITS / name)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    score = float(match.group(1))
    print(f"{name}: exposure {score} {match.group(2)} (at most {LEVELS[name]})")
    assert score <= LEVELS[name]


def seconds(timespan: str) -> float:
    out = subprocess.run(
        ["systemd-analyze", "timespan", timespan], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"μs: (\d+)", out)
    assert match, out
    return int(match.group(1)) / 1e6


@pytest.mark.parametrize("name", sorted(LEVELS))
def test_units_notify_ready_with_a_watchdog_as_the_dedicated_user(name: str) -> None:
    s = unit_settings(name)
    assert s["Service.Type"] == ["notify"]
    assert s["Service.NotifyAccess"] == ["main"]
    assert seconds(s["Service.WatchdogSec"][0]) >= 10
    assert s["Service.User"] == ["buildworker"]
    assert "buildworker" in s["Service.StateDirectory"][0].split()


def test_worker_stop_timeout_is_longer_than_the_drain_timeout() -> None:
    stop_s = seconds(unit_settings("buildworker-worker.service")["Service.TimeoutStopSec"][0])
    assert stop_s > WorkerConfig().drain_timeout + 30


def test_sysusers_entry_creates_the_user_the_units_run_as(tmp_path: Path) -> None:
    conf = UNITS / "sysusers.d/buildworker.conf"
    result = subprocess.run(
        ["systemd-sysusers", "--dry-run", f"--root={tmp_path}", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Creating user 'buildworker' (buildworker build farm)" in result.stdout + result.stderr


def test_units_parse_as_ini_with_no_duplicate_sections() -> None:
    for name in LEVELS:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read_string((UNITS / name).read_text())
        assert parser.sections() == ["Unit", "Service", "Install"]
