"""Job pages: lists (``/``, ``/~USER``, ``/~USER/TAG/PATH``), the job page and its live
status, cancel, RSS feeds and badges (builds.sr.ht §3.3 routes)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from buildworker.api.deps import SessionDep, get_config
from buildworker.api.errors import ApiError
from buildworker.api.public import cancel_job, load_job
from buildworker.db.models import Job, User
from buildworker.jobstate import JobStatus
from buildworker.web.badge import badge_status, badge_svg
from buildworker.web.common import (
    PageError,
    ViewerDep,
    flash,
    redirect,
    render,
    require_csrf,
    require_user,
)
from buildworker.web.feeds import FeedItem, rss_feed
from buildworker.web.jobpage import job_context, job_status
from buildworker.web.notes import note_summary, render_note
from buildworker.web.queries import list_jobs, newest_finished_status
from buildworker.web.search import SearchError, Term, parse_query
from buildworker.web.urls import job_page_url, user_page_url

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
#: Items in a feed.
FEED_ITEMS = 50


def _owner(db: Session, username: str) -> User:
    user = db.scalars(select(User).where(User.username == username.removeprefix("~"))).first()
    if user is None:
        raise PageError.not_found()
    return user


def _page_number(request: Request) -> int:
    raw = request.query_params.get("page", "1")
    return int(raw) if raw.isdigit() and 0 < int(raw) < 1_000_000 else 1


def _job_list(
    request: Request,
    db: Session,
    viewer: User | None,
    *,
    owner: User | None,
    tag_path: tuple[str, ...] = (),
    title: str,
    feed: str | None = None,
    badge: str | None = None,
) -> HTMLResponse:
    query = request.query_params.get("search", "")
    terms: list[Term] = []
    error = None
    try:
        terms = parse_query(query)
    except SearchError as exc:
        error = str(exc)
    page = list_jobs(
        db,
        viewer=viewer,
        owner=owner,
        terms=terms,
        tag_path=tag_path,
        page=_page_number(request),
    )
    context: dict[str, Any] = {
        "title": title,
        "owner": owner,
        "tag_path": tag_path,
        "page": page,
        "search": query,
        "search_error": error,
        "feed": feed,
        "badge": badge,
        "summary": note_summary,
        "render_note": render_note,
    }
    return render(request, "jobs.html", context, user=viewer, status=400 if error else 200)


@router.get("/", response_class=HTMLResponse)
def home(request: Request, db: SessionDep, viewer: ViewerDep) -> HTMLResponse:
    if viewer is None:
        return _job_list(request, db, None, owner=None, title="Public jobs")
    return _job_list(
        request,
        db,
        viewer,
        owner=viewer,
        title="Your jobs",
        feed=f"/~{viewer.username}/rss.xml",
    )


@router.get("/~{username}", response_class=HTMLResponse)
def user_jobs(request: Request, username: str, db: SessionDep, viewer: ViewerDep) -> HTMLResponse:
    owner = _owner(db, username)
    return _job_list(
        request,
        db,
        viewer,
        owner=owner,
        title=f"~{owner.username}'s jobs",
        feed=f"/~{owner.username}/rss.xml",
    )


def _readable_job(db: Session, username: str, job_id: int, viewer: User | None) -> Job:
    """The job at /~USER/job/N if the viewer may read it: the API's check, and a 404 like
    the API's otherwise (also when USER is not the job's owner)."""
    try:
        job = load_job(db, job_id, viewer)
    except ApiError:
        raise PageError.not_found() from None
    if job.owner.username != username.removeprefix("~"):
        raise PageError.not_found()
    return job


@router.get("/~{username}/job/{job_id}", response_class=HTMLResponse)
def job_page(
    request: Request, username: str, job_id: int, db: SessionDep, viewer: ViewerDep
) -> HTMLResponse:
    job = _readable_job(db, username, job_id, viewer)
    context = job_context(job, viewer, request.app.state.store)
    context["title"] = f"#{job.id} ({job.status})"
    return render(request, "job.html", context, user=viewer)


@router.get("/~{username}/job/{job_id}/status")
def job_status_json(
    request: Request, username: str, job_id: int, db: SessionDep, viewer: ViewerDep
) -> JSONResponse:
    try:
        job = _readable_job(db, username, job_id, viewer)
    except PageError:
        return JSONResponse({"errors": [{"reason": "404 not found"}]}, status_code=404)
    return JSONResponse(
        job_status(job, viewer, request.app.state.store), headers={"Cache-Control": "no-store"}
    )


@router.post("/cancel/{job_id}")
def cancel(
    request: Request,
    job_id: int,
    db: SessionDep,
    viewer: ViewerDep,
    csrf: Annotated[str, Form()] = "",
) -> Response:
    require_csrf(request, csrf)
    user = require_user(request, viewer)
    try:
        job = load_job(db, job_id, user)
    except ApiError:
        raise PageError.not_found() from None
    page = f"/~{job.owner.username}/job/{job.id}"
    try:
        cancel_job(job_id, user, db)
    except ApiError as exc:
        if exc.status == 404:
            raise PageError.not_found() from None
        if exc.status == 403:
            raise PageError(403, "Not allowed", "You may not cancel this job.") from None
        flash(request, str(exc))
        return redirect(page)
    db.refresh(job)
    if job.status == JobStatus.RUNNING:
        flash(request, "Cancel requested: the build stops within seconds.")
    else:
        flash(request, f"The job is {job.status}.")
    return redirect(page)


def _feed(
    request: Request, db: Session, viewer: User | None, owner: User, path: tuple[str, ...]
) -> Response:
    config = get_config(request)
    page = list_jobs(db, viewer=viewer, owner=owner, tag_path=path, per_page=FEED_ITEMS)
    link = user_page_url(config.api.origin, owner.username)
    if path:
        link += "/" + "/".join(path)
    name = f"~{owner.username}" + ("/" + "/".join(path) if path else "")
    items = [
        FeedItem(
            job.id,
            job.status,
            job.note,
            job_page_url(config.api.origin, owner.username, job.id),
            job.updated,
        )
        for job in page.jobs
    ]
    body = rss_feed(f"{name} builds — {config.web.site_name}", link, f"Build jobs of {name}", items)
    return Response(body, media_type="application/rss+xml; charset=utf-8")


@router.get("/~{username}/rss.xml")
def user_feed(request: Request, username: str, db: SessionDep, viewer: ViewerDep) -> Response:
    return _feed(request, db, viewer, _owner(db, username), ())


def _badge(request: Request, db: Session, owner: User, path: tuple[str, ...]) -> Response:
    status = badge_status(newest_finished_status(db, owner, path))
    label = request.query_params.get("name") or (
        "/".join(path) if path else get_config(request).web.site_name
    )
    # No caching beyond revalidation: builds.sr.ht's 30 s cache keyed badges without the
    # tag path, so one tag's badge could show another's status.
    return Response(
        badge_svg(label[:64], status),
        media_type="image/svg+xml",
        headers={"Cache-Control": "no-cache"},
    )


@router.get("/~{username}/{tags:path}")
def tag_page(
    request: Request, username: str, tags: str, db: SessionDep, viewer: ViewerDep
) -> Response:
    owner = _owner(db, username)
    parts = [part for part in tags.split("/") if part]
    if parts and parts[-1] == "rss.xml":
        return _feed(request, db, viewer, owner, tuple(parts[:-1]))
    if parts and parts[-1].endswith(".svg"):
        last = parts[-1].removesuffix(".svg")
        path = tuple([*parts[:-1], last] if last else parts[:-1])
        return _badge(request, db, owner, path)
    if not parts:
        return redirect(f"/~{owner.username}")
    path = tuple(parts)
    return _job_list(
        request,
        db,
        viewer,
        owner=owner,
        tag_path=path,
        title=f"~{owner.username}/{'/'.join(path)}",
        feed=f"/~{owner.username}/{'/'.join(path)}/rss.xml",
        badge=f"/~{owner.username}/{'/'.join(path)}.svg",
    )
