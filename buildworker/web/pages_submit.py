"""``/submit`` (a manifest editor with note, tags and visibility) and ``/resubmit/N`` (an
old job's manifest, editable). The form is handed to the API's own submit, so the checks
and the error field names are the API's; errors are shown next to the fields they name.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from buildworker.api.deps import SessionDep
from buildworker.api.errors import ApiError
from buildworker.api.public import load_job, submit_job
from buildworker.web.common import (
    PageError,
    ViewerDep,
    redirect,
    render,
    require_csrf,
    require_user,
)

__all__ = ["RESUBMITTED", "resubmit_note", "router", "split_errors"]

router = APIRouter(include_in_schema=False)

#: What a resubmitted job's note ends with (builds.sr.ht's wording).
RESUBMITTED = "(resubmitted)"
#: Form fields errors can be shown next to; any other field is the manifest's own.
FORM_FIELDS = {"manifest", "note", "tags", "access:read", "access:write"}


def resubmit_note(note: str | None) -> str:
    """The note of a resubmitted job: the old one with "(resubmitted)" once."""
    text = (note or "").rstrip()
    if text.endswith(RESUBMITTED):
        return text
    return f"{text} {RESUBMITTED}".strip()


def split_errors(errors: list[dict[str, str]]) -> dict[str, list[str]]:
    """API errors by form field; the manifest's inner fields (``image``, ``tasks[0]``, ...)
    go under "manifest" with their names, errors without a field under ""."""
    out: dict[str, list[str]] = {}
    for error in errors:
        field = error.get("field")
        reason = error.get("reason", "")
        if field is None:
            out.setdefault("", []).append(reason)
        elif field in FORM_FIELDS:
            out.setdefault(field, []).append(reason)
        else:
            out.setdefault("manifest", []).append(f"{field}: {reason}")
    return out


def _form(
    request: Request,
    user: Any,
    values: dict[str, str],
    errors: dict[str, list[str]] | None = None,
    status: int = 200,
) -> HTMLResponse:
    context = {"title": "Submit a build", "form": values, "errors": errors or {}}
    return render(request, "submit.html", context, user=user, status=status)


_BLANK = {"manifest": "", "note": "", "tags": "", "visibility": "public", "readers": ""}


@router.get("/submit", response_class=HTMLResponse)
def submit_form(request: Request, viewer: ViewerDep) -> HTMLResponse:
    user = require_user(request, viewer)
    return _form(request, user, dict(_BLANK))


@router.get("/resubmit/{job_id}", response_class=HTMLResponse)
def resubmit_form(request: Request, job_id: int, db: SessionDep, viewer: ViewerDep) -> HTMLResponse:
    user = require_user(request, viewer)
    try:
        job = load_job(db, job_id, user)
    except ApiError:
        raise PageError.not_found() from None
    public = "*" in (job.access_read or [])
    readers = [name for name in job.access_read or [] if name != "*"]
    values = {
        "manifest": job.manifest,
        "note": resubmit_note(job.note),
        "tags": "/".join(job.tags or []),
        "visibility": "public" if public else "private",
        "readers": ", ".join(readers),
    }
    return _form(request, user, values)


def _words(text: str) -> list[str]:
    return [word for word in re.split(r"[\s,/]+", text) if word]


@router.post("/submit")
def submit(
    request: Request,
    db: SessionDep,
    viewer: ViewerDep,
    csrf: Annotated[str, Form()] = "",
    manifest: Annotated[str, Form()] = "",
    note: Annotated[str, Form()] = "",
    tags: Annotated[str, Form()] = "",
    visibility: Annotated[str, Form()] = "public",
    readers: Annotated[str, Form()] = "",
) -> Response:
    require_csrf(request, csrf)
    user = require_user(request, viewer)
    manifest = manifest.replace("\r\n", "\n")
    values = {
        "manifest": manifest,
        "note": note,
        "tags": tags,
        "visibility": visibility,
        "readers": readers,
    }
    if visibility not in ("public", "private"):
        return _form(request, user, values, {"visibility": ["choose public or private"]}, 400)
    shared = _words(readers)
    body: dict[str, Any] = {
        "manifest": manifest,
        "tags": _words(tags),
        "access:read": ["*", *shared] if visibility == "public" else shared,
    }
    if note.strip():
        body["note"] = note.replace("\r\n", "\n")
    try:
        created = submit_job(request, user, body, db)
    except ApiError as exc:
        db.rollback()
        return _form(request, user, values, split_errors(exc.errors), exc.status)
    return redirect(f"/~{user.username}/job/{created['id']}")
