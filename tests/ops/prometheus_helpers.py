"""A real Prometheus (Debian's package) for tests: started on a loopback port with a temp
config and data dir, scraping loopback targets every second, queried over its HTTP API.

    with Prometheus(tmp_path, {"buildworker-api": ["127.0.0.1:8080"]}) as prom:
        prom.wait_for_targets_up()
        prom.query('buildworker_jobs{status="queued"}')   # → [{"metric": {...}, "value": ...}]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml

__all__ = ["Prometheus", "promtool"]


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool missing: scripts/setup installs Debian's prometheus package"
    return found


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    """Parameters:
    directory: where the config, data and log go.
    targets: scrape job name → ``HOST:PORT`` targets (``/metrics`` on each).
    rule_files: rules files to load (alerts evaluate every second too).
    """

    def __init__(
        self,
        directory: Path,
        targets: dict[str, list[str]],
        *,
        rule_files: list[Path] | None = None,
        interval: str = "1s",
    ) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus missing: scripts/setup installs Debian's prometheus package"
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(p) for p in rule_files or []],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": hosts}]}
                for job, hosts in targets.items()
            ],
        }
        self.config_path = directory / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = directory / "prometheus.log"
        self._proc = subprocess.Popen(
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )
        self._wait(lambda: self._get("/-/ready").status_code == 200, 60, "Prometheus to be ready")

    # --- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- HTTP API -------------------------------------------------------------------------

    def _get(self, path: str, **params: str) -> httpx.Response:
        try:
            return httpx.get(f"{self.url}{path}", params=params, timeout=10)
        except httpx.TransportError:
            assert self._proc.poll() is None, self.log_path.read_text()[-3000:]
            return httpx.Response(599)

    def _api(self, path: str, **params: str) -> Any:
        response = self._get(path, **params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; the vector's samples (``metric`` labels and ``value``)."""
        data = self._api("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def values(self, expr: str) -> list[float]:
        return [float(sample["value"][1]) for sample in self.query(expr)]

    def query_range(self, expr: str, start: float, end: float, step: str = "1s") -> list[Any]:
        """A range query; each series' ``values`` as (time, float) pairs."""
        data = self._api(
            "/api/v1/query_range", query=expr, start=str(start), end=str(end), step=step
        )
        return [
            {"metric": s["metric"], "values": [(float(t), float(v)) for t, v in s["values"]]}
            for s in data["result"]
        ]

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self._api("/api/v1/targets")["activeTargets"]
        return active

    def alerts(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._api("/api/v1/alerts")["alerts"]
        return found

    # --- waiting --------------------------------------------------------------------------

    def _wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}; "
                    f"log: {self.log_path.read_text()[-2000:]}"
                )
            time.sleep(0.25)

    def wait_for_targets_up(self, timeout: float = 60) -> None:
        def all_up() -> bool:
            targets = self.targets()
            return bool(targets) and all(t["health"] == "up" for t in targets)

        self._wait(all_up, timeout, f"every target up: {json.dumps(self.targets())[:1500]}")

    def wait_for(
        self, expr: str, predicate: Callable[[list[float]], bool], timeout: float = 60
    ) -> list[float]:
        """Query ``expr`` until ``predicate(values)`` holds; the values."""

        def check() -> list[float] | None:
            values = self.values(expr)
            return values if predicate(values) else None

        result: list[float] = self._wait(check, timeout, f"{expr} to satisfy the test")
        return result
