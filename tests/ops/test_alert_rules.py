"""monitoring/buildworker.rules.yml: promtool check and unit tests pass, the unit tests can
fail, every rule is tested, and every metric a rule uses is exported or documented."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_helpers import promtool

from buildworker.api.metrics import ApiMetrics

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "monitoring" / "buildworker.rules.yml"
TESTS = REPO / "monitoring" / "buildworker.rules.test.yml"
OPERATIONS = REPO / "docs" / "operations.md"
_METRIC = re.compile(r"\b((?:buildworker|buildsrht)_[a-z0-9_]+)")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_promtool_check_rules() -> None:
    result = run("check", "rules", str(RULES), cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def test_promtool_test_rules() -> None:
    result = run("test", "rules", TESTS.name, cwd=TESTS.parent)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_unit_tests_fail_when_a_threshold_changes(tmp_path: Path) -> None:
    # Given the rules with the infrastructure-failure threshold raised from 10% to 50%
    rules = RULES.read_text()
    assert ") > 0.1\n" in rules
    (tmp_path / RULES.name).write_text(rules.replace(") > 0.1\n", ") > 0.5\n"))
    shutil.copy(TESTS, tmp_path / TESTS.name)
    # Then the unit test of that alert fails
    result = run("test", "rules", TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "BuildworkerInfraFailureRate" in result.stdout + result.stderr


def test_at_least_three_alerts_have_unit_tests_that_expect_them_to_fire() -> None:
    tests = yaml.safe_load(TESTS.read_text())["tests"]
    firing = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    print(sorted(firing))
    assert len(firing) >= 3
    assert {
        "BuildworkerNoWorkerReady",
        "BuildworkerOutboxBacklog",
        "BuildworkerLeaseReaps",
    } <= firing


def test_every_metric_in_a_rule_is_exported_by_the_api_or_documented_for_the_worker() -> None:
    exprs = [
        rule["expr"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
    ]
    used = {m.removesuffix("_bucket") for expr in exprs for m in _METRIC.findall(expr)}
    api_scrape = ApiMetrics().render().decode()
    api_names = set(re.findall(r"^# TYPE (\S+)", api_scrape, re.M))
    documented = set(_METRIC.findall(OPERATIONS.read_text()))
    missing = sorted(m for m in used if m not in api_names and m not in documented)
    assert missing == []
