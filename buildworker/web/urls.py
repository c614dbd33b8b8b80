"""Page URLs handed to people: one place that knows what a job's page is called.

Kept free of imports beyond the standard library: the internal API (``JOB_URL`` in the
guest), the triggers (emails, webhook payloads) and ``buildworker submit`` all use it.
"""

from __future__ import annotations

from urllib.parse import quote

__all__ = ["job_page_url", "user_page_url"]


def user_page_url(origin: str, owner: str) -> str:
    """``<origin>/~USER``: a user's job list."""
    return f"{origin.rstrip('/')}/~{quote(owner.removeprefix('~'), safe='')}"


def job_page_url(origin: str, owner: str, job_id: int) -> str:
    """``<origin>/~USER/job/N``: the job's page, as builds.sr.ht links to it.

    ``owner`` is the username, with or without sr.ht's ``~``.
    """
    return f"{user_page_url(origin, owner)}/job/{int(job_id)}"
