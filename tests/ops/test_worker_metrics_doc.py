"""docs/operations.md's table of the worker's metrics is the contract: every row is exported
with that type, those labels and those buckets, and every exported family has a row."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase
from prometheus_helpers import promtool

from buildworker.worker.metrics import WorkerMetrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
ROW = re.compile(r"^\| `([a-z_]+)`(?:, `[a-z_]+`)* \| ([a-z =1]+) \| ([^|]*) \| ([^|]*) \|$")


def worker_rows() -> dict[str, tuple[str, set[str], str]]:
    text = DOC.read_text()
    section = text[text.index("### Worker (`/metrics`") : text.index("## Alerting rules")]
    rows: dict[str, tuple[str, set[str], str]] = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match is None or match.group(1) == "metric":
            continue
        name, kind, labels, what = match.groups()
        label_names = set(re.findall(r"`([a-z_]+)`", labels.split("(")[0]))
        rows[name] = (kind.split()[0], label_names, what)
    return rows


def exported() -> dict[str, MetricWrapperBase]:
    metrics = WorkerMetrics()
    found: dict[str, MetricWrapperBase] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            suffix = "_total" if value._type == "counter" else ""
            found[value._name + suffix] = value
    return found


def buckets_of(what: str, previous: tuple[float, ...]) -> tuple[float, ...]:
    if what.startswith("same buckets"):
        return previous
    head = what.split(" s;")[0]
    return tuple(float(n) for n in head.split(", "))


def test_every_documented_worker_metric_is_exported_as_documented() -> None:
    rows = worker_rows()
    assert len(rows) >= 20, sorted(rows)
    ours = exported()
    previous: tuple[float, ...] = ()
    for name, (kind, labels, what) in rows.items():
        assert name in ours, f"{name} is documented but not exported"
        metric = ours[name]
        assert metric._type == kind, f"{name}: documented {kind}, exported {metric._type}"
        assert set(metric._labelnames) == labels, (name, metric._labelnames, labels)
        if kind == "histogram":
            previous = buckets_of(what, previous)
            bounds = tuple(b for b in vars(metric)["_upper_bounds"] if b != float("inf"))
            assert bounds == previous, f"{name}: buckets {bounds}, documented {previous}"


def test_every_exported_worker_metric_is_documented() -> None:
    rows = worker_rows()
    missing = sorted(set(exported()) - set(rows))
    assert not missing, f"exported but not in docs/operations.md: {missing}"


def test_a_fresh_scrape_is_clean_for_promtool_and_has_the_bounded_labels_at_zero() -> None:
    from prometheus_client import generate_latest

    metrics = WorkerMetrics()
    text = generate_latest(metrics.registry).decode()
    lint = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout
    assert 'buildworker_infra_failures_total{reason="settle"} 0.0' in text
    assert 'buildworker_api_request_errors_total{endpoint="claim"} 0.0' in text
    assert "process_resident_memory_bytes" in text
    # an endpoint outside the list is counted, under a bounded label
    metrics.api_error("something-new")
    assert 'endpoint="other"} 1.0' in generate_latest(metrics.registry).decode()
