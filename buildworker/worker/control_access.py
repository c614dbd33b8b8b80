"""Who may connect to which job: the control server asks the API (worker token).

The forced command runs as the SSH user, which holds no token; the daemon, which does, asks
``GET /api/internal/ssh/jobs/{id}/access?user=NAME`` (``buildworker.api.ssh_internal``) and
relays the API's refusal texts unchanged ("No such job found.", "You are not permitted to
connect to this job.").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import httpx
import structlog

__all__ = ["AccessRefused", "ApiAuthorizer", "Authorizer", "JobAccess"]

_log = structlog.get_logger(__name__)

UNREACHABLE = "The build service cannot be reached right now; try again in a minute."


@dataclass(frozen=True)
class JobAccess:
    """The API's yes: the job as the user may see it."""

    job_id: int
    status: str
    url: str
    runner: str | None
    owner: str
    #: "owner" or "write" (listed in access:write)
    access: str


class AccessRefused(Exception):
    """No: the message is for the user, as it is."""


class Authorizer(Protocol):
    def authorize(self, job_id: int, username: str) -> JobAccess:
        """May ``username`` connect to ``job_id``? Raises AccessRefused with the reason."""
        ...


class ApiAuthorizer:
    """:class:`Authorizer` over the internal API.

    Parameters:
        api_url: ``[worker] api-url``.
        token: ``[worker] token`` (the API's worker token).
        timeout_s: per request, in seconds.
    """

    def __init__(self, api_url: str, token: str, *, timeout_s: float = 10.0) -> None:
        self._client = httpx.Client(
            base_url=api_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
        )

    def authorize(self, job_id: int, username: str) -> JobAccess:
        try:
            response = self._client.get(
                f"/api/internal/ssh/jobs/{job_id}/access", params={"user": username}
            )
        except httpx.HTTPError as exc:
            _log.warning("control.api_unreachable", job_id=job_id, error=str(exc))
            raise AccessRefused(UNREACHABLE) from exc
        if response.status_code in (403, 404):
            raise AccessRefused(_reason(response))
        if response.status_code != 200:
            _log.warning(
                "control.api_refused",
                job_id=job_id,
                status=response.status_code,
                reason=_reason(response),
            )
            raise AccessRefused(UNREACHABLE)
        data = response.json()
        return JobAccess(
            job_id=int(data["job_id"]),
            status=str(data["status"]),
            url=str(data["url"]),
            runner=data.get("runner"),
            owner=str(data["owner"]),
            access=str(data.get("access", "owner")),
        )

    def close(self) -> None:
        self._client.close()


def _reason(response: httpx.Response) -> str:
    try:
        errors = response.json().get("errors") or [{}]
        return str(errors[0].get("reason") or response.reason_phrase)
    except (ValueError, AttributeError):
        return response.reason_phrase
