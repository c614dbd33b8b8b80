"""Client of the internal worker API (``/api/internal``), on httpx, retrying with backoff.

Every call of that API is idempotent, so every call here is retried on transport errors,
5xx and 429 until ``retry_budget_s`` runs out: a build keeps running while the API restarts
and its log chunks land when it is back. Answers that retrying cannot change are raised at
once as typed errors (:class:`Unauthorized`, :class:`NotFound`, :class:`Conflict`,
:class:`TooLarge`); no httpx exception escapes this module.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any, TypeVar

import httpx
import structlog
from pydantic import BaseModel

from buildworker.backoff import compute_backoff
from buildworker.contract import (
    ArtifactAnswer,
    ClaimAnswer,
    ClaimBody,
    HeartbeatAnswer,
    ImageBody,
    LogAnswer,
)
from buildworker.worker.errors import InfraError
from buildworker.worker.logs import SETUP_LOG

__all__ = [
    "Conflict",
    "InternalApi",
    "InternalApiError",
    "NotFound",
    "TooLarge",
    "Unauthorized",
    "is_retryable_status",
]

#: Default time one call keeps retrying before it gives up, in seconds.
RETRY_BUDGET_S = 300.0
#: Bytes per read when streaming an artifact body.
UPLOAD_BLOCK = 256 * 1024


class InternalApiError(InfraError):
    """The internal API refused or could not be reached. ``status`` is the HTTP status
    (None for a transport error), ``body`` the decoded JSON answer when there was one.

    (Not ``ApiError``: that is the HTTP error the API itself raises, buildworker.api.errors.)
    """

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class Unauthorized(InternalApiError):
    """401/403: the worker token is wrong; retrying will not help."""


class NotFound(InternalApiError):
    """404: unknown job."""


class Conflict(InternalApiError):
    """409: the attempt is not (or no longer) ours, or a log offset left a gap."""


class TooLarge(InternalApiError):
    """413: the artifact is over the API's size cap."""


def is_retryable_status(status: int) -> bool:
    """Whether an HTTP status may change on a later try (5xx, 429, 408)."""
    return status >= 500 or status in (408, 429)


_ERRORS: Mapping[int, type[InternalApiError]] = {
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
}


class InternalApi:
    """The internal API seen from a worker.

    Parameters:
        base_url: the API origin (``[worker] api-url``).
        token: the worker token (``[worker] token``).
        retry_budget_s: how long one call retries transient failures, in seconds.
        stop: when set, retries give up early (the daemon is stopping at once).
        transport: an httpx transport (tests inject failures with one).
        sleep: how to wait between tries (injectable clock).
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        retry_budget_s: float = RETRY_BUDGET_S,
        timeout_s: float = 30.0,
        stop: threading.Event | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self._client = httpx.Client(
            base_url=base_url.rstrip("/") + "/api/internal",
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            transport=transport,
        )
        self.retry_budget_s = retry_budget_s
        self._stop = stop or threading.Event()
        self._sleep = sleep or self._stop.wait
        self._log = structlog.get_logger().bind(component="apiclient")
        self.retries = 0
        #: told the endpoint name of each call that failed for good (metrics); refusals the
        #: contract expects (404 unknown job, 409 conflict) are answers, not failures
        self.on_error: Callable[[str], None] | None = None

    def close(self) -> None:
        self._client.close()

    # -- plumbing --------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        content: Callable[[], bytes | Iterator[bytes]] | None = None,
        budget_s: float | None = None,
        endpoint: str,
    ) -> httpx.Response:
        """One call, retried until it gets an answer retrying cannot change.

        Raises:
            InternalApiError: (a subclass for 401/403/404/409/413) the answer, or the last
                transport error once the budget is spent.
        """
        deadline = time.monotonic() + (self.retry_budget_s if budget_s is None else budget_s)
        attempt = 0
        while True:
            try:
                response = self._client.request(
                    method,
                    path,
                    json=json,
                    params=params,
                    content=content() if content is not None else None,
                )
            except httpx.HTTPError as exc:
                failure: InternalApiError = InternalApiError(
                    f"{method} {path}: {type(exc).__name__}: {exc}"
                )
            else:
                if response.status_code < 400:
                    return response
                body = _json_or_none(response)
                message = f"{method} {path}: HTTP {response.status_code}: {_errors_text(body)}"
                if not is_retryable_status(response.status_code):
                    cls = _ERRORS.get(response.status_code, InternalApiError)
                    if cls not in (NotFound, Conflict):
                        self._failed(endpoint)
                    raise cls(message, response.status_code, body)
                failure = InternalApiError(message, response.status_code, body)
            delay = compute_backoff(attempt, base_s=0.2, max_s=5.0)
            if time.monotonic() + delay > deadline or self._stop.is_set():
                self._failed(endpoint)
                raise failure
            self.retries += 1
            self._log.warning("api_retry", path=path, attempt=attempt, error=str(failure))
            self._sleep(delay)
            attempt += 1

    def _failed(self, endpoint: str) -> None:
        if self.on_error is not None:
            self.on_error(endpoint)

    # -- the contract ----------------------------------------------------------------------

    def register(self, name: str, images: list[dict[str, Any]]) -> None:
        self._request(
            "POST", "/workers", json={"name": name, "images": images}, endpoint="register"
        )

    def claim(self, job_id: int, worker: str, attempt: int) -> ClaimAnswer:
        response = self._request(
            "POST",
            f"/jobs/{job_id}/claim",
            json=ClaimBody(worker=worker, attempt=attempt).model_dump(),
            endpoint="claim",
        )
        return _answer(ClaimAnswer, response, f"claim of job {job_id}")

    def heartbeat(self, job_id: int, attempt: int, *, budget_s: float | None = None) -> bool:
        """Renews the lease; returns whether the job was cancelled."""
        response = self._request(
            "POST",
            f"/jobs/{job_id}/heartbeat",
            json={"attempt": attempt},
            budget_s=budget_s,
            endpoint="heartbeat",
        )
        return _answer(HeartbeatAnswer, response, f"heartbeat of job {job_id}").cancelled

    def report_image(
        self,
        job_id: int,
        attempt: int,
        release: str,
        arch: str,
        digest: str | None,
        *,
        budget_s: float | None = None,
    ) -> None:
        """Tell the API which image the job booted (its record shows it)."""
        body = ImageBody(attempt=attempt, release=release, arch=arch, digest=digest)
        self._request(
            "POST",
            f"/jobs/{job_id}/image",
            json=body.model_dump(),
            budget_s=budget_s,
            endpoint="image",
        )

    def task_status(self, job_id: int, attempt: int, name: str, status: str) -> None:
        self._request(
            "PUT",
            f"/jobs/{job_id}/tasks/{name}",
            json={"attempt": attempt, "status": status},
            endpoint="task",
        )

    def append_log(self, job_id: int, attempt: int, log: str, offset: int, data: bytes) -> int:
        """Append ``data`` at ``offset`` to the setup log (``SETUP_LOG``) or a task's log;
        returns the log's size after it.

        A 409 whose current size already covers part of the chunk (a retry of a chunk that
        did land) resends only the rest.

        Raises:
            Conflict: the API has fewer bytes than ``offset`` (a gap) or the attempt is gone.
        """
        while True:
            try:
                response = self._request(
                    "PUT",
                    # A task's log has its own path: a task may be called "setup" too.
                    f"/jobs/{job_id}/logs/setup"
                    if log == SETUP_LOG
                    else f"/jobs/{job_id}/tasks/{log}/log",
                    params={"offset": offset, "attempt": attempt},
                    content=lambda chunk=data: chunk,  # type: ignore[misc]
                    endpoint="log",
                )
            except Conflict as exc:
                size = _size_of(exc.body)
                if size is None or size < offset:
                    raise
                if size >= offset + len(data):
                    return size
                data, offset = data[size - offset :], size
                continue
            return _answer(LogAnswer, response, f"log {log} of job {job_id}").size

    def upload_artifact(
        self, job_id: int, attempt: int, guest_path: str, source: IO[bytes], size: int
    ) -> str:
        """Stream one artifact; returns its URL. ``source`` must be seekable (retries)."""

        def body() -> Iterator[bytes]:
            source.seek(0)
            while block := source.read(UPLOAD_BLOCK):
                yield block

        response = self._request(
            "PUT",
            f"/jobs/{job_id}/artifacts",
            params={"attempt": attempt, "path": guest_path},
            content=body,
            endpoint="artifact",
        )
        return _answer(ArtifactAnswer, response, f"artifact {guest_path} of job {job_id}").url

    def finish(
        self,
        job_id: int,
        attempt: int,
        status: str,
        reason: str | None = None,
        infrastructure: bool = False,
    ) -> None:
        self._request(
            "POST",
            f"/jobs/{job_id}/finish",
            json={
                "attempt": attempt,
                "status": status,
                "reason": reason,
                "infrastructure": infrastructure,
            },
            endpoint="finish",
        )

    def release(self, job_id: int, attempt: int, reason: str) -> None:
        self._request(
            "POST",
            f"/jobs/{job_id}/release",
            json={"attempt": attempt, "reason": reason},
            endpoint="release",
        )


_Answer = TypeVar("_Answer", bound=BaseModel)


def _answer(model: type[_Answer], response: httpx.Response, what: str) -> _Answer:
    """The answer as the contract's model; one that does not fit names the field."""
    try:
        return model.model_validate(response.json())
    except ValueError as exc:  # not JSON, or pydantic's ValidationError (a ValueError)
        detail = str(exc).splitlines()
        message = f"{what}: the answer does not fit the contract: {' '.join(detail[:3])}"
        raise InternalApiError(message) from None


def _json_or_none(response: httpx.Response, default: Any = None) -> Any:
    try:
        data = response.json()
    except ValueError:
        return default
    return data if data is not None else default


def _errors_text(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        parts = []
        for err in body["errors"]:
            if isinstance(err, dict):
                field = err.get("field")
                parts.append(f"{field}: {err.get('reason')}" if field else str(err.get("reason")))
        if parts:
            return "; ".join(parts)
    return str(body)[:200] if body is not None else "(no body)"


def _size_of(body: Any) -> int | None:
    """The current log size a 409 carries (``{"size": N}``, possibly next to ``errors``)."""
    if isinstance(body, dict):
        size = body.get("size")
        if isinstance(size, int):
            return size
    return None
