"""Where a build's live results go: :class:`ApiReporter` (internal API) or
:class:`TerminalReporter` (`buildworker run`). Both satisfy ``context.Reporter``."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO

from buildworker.worker.apiclient import InternalApi

__all__ = ["ApiReporter", "TerminalReporter"]


class TerminalReporter:
    """Logs to a terminal with a header per task; artifacts copied into a folder.

    Parameters:
        out: binary stream to print to (stdout).
        artifacts_dir: where artifacts are copied (created on first use); None drops them.
        color: bold headers with ANSI escapes.
    """

    def __init__(self, out: BinaryIO, artifacts_dir: Path | None = None, color: bool = False):
        self._out = out
        self._artifacts_dir = artifacts_dir
        self._color = color
        self._lock = threading.Lock()
        self.statuses: dict[str, str] = {}
        self.artifacts: list[Path] = []

    def _header(self, text: str) -> bytes:
        line = f"\n==> {text}\n"
        return (f"\x1b[1;36m{line[:-1]}\x1b[0m\n" if self._color else line).encode()

    def send_chunk(self, log: str, offset: int, data: bytes) -> None:
        with self._lock:
            self._out.write(data)
            self._out.flush()

    def task_status(self, name: str, status: str) -> None:
        with self._lock:
            self.statuses[name] = status
            if status == "running":
                self._out.write(self._header(f"Running task {name}"))
            elif status != "success":
                self._out.write(self._header(f"Task {name}: {status}"))
            self._out.flush()

    def upload_artifact(self, guest_path: str, source: IO[bytes], size: int) -> str:
        if self._artifacts_dir is None:
            return "(not kept: no --artifacts folder given)"
        self._artifacts_dir.mkdir(parents=True, exist_ok=True)
        target = self._artifacts_dir / Path(guest_path).name
        with target.open("wb") as sink:
            shutil.copyfileobj(source, sink)
        self.artifacts.append(target)
        return str(target)


class ApiReporter:
    """Reports one attempt of one job through the internal API (retrying per call).

    ``on_log_bytes`` and ``on_artifact_bytes`` are told the bytes the API accepted (metrics).
    """

    def __init__(
        self,
        api: InternalApi,
        job_id: int,
        attempt: int,
        *,
        on_log_bytes: Callable[[int], None] | None = None,
        on_artifact_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self._api = api
        self._job_id = job_id
        self._attempt = attempt
        self._on_log_bytes = on_log_bytes
        self._on_artifact_bytes = on_artifact_bytes

    def send_chunk(self, log: str, offset: int, data: bytes) -> None:
        self._api.append_log(self._job_id, self._attempt, log, offset, data)
        if self._on_log_bytes is not None:
            self._on_log_bytes(len(data))

    def task_status(self, name: str, status: str) -> None:
        self._api.task_status(self._job_id, self._attempt, name, status)

    def upload_artifact(self, guest_path: str, source: IO[bytes], size: int) -> str:
        url = self._api.upload_artifact(self._job_id, self._attempt, guest_path, source, size)
        if self._on_artifact_bytes is not None:
            self._on_artifact_bytes(size)
        return url
