"""What every page shares: the template environment, the signed-in user, errors as pages.

Routes raise `PageError` (rendered as an HTML page with its status) or `SignInRequired`
(a redirect to the sign-in form that comes back afterwards); `render` fills in what the
layout needs (the user, the CSRF token, static file URLs).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from buildworker.api.deps import SessionDep, get_config
from buildworker.db.models import TERMINAL_JOB_STATUSES, User
from buildworker.web.session import CsrfError, check_csrf, csrf_token, session_user

__all__ = [
    "STATIC",
    "TEMPLATES",
    "PageError",
    "SignInRequired",
    "ViewerDep",
    "flash",
    "human_duration",
    "human_size",
    "make_templates",
    "redirect",
    "render",
    "require_csrf",
    "require_user",
    "static_url",
]

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


class PageError(Exception):
    """An error shown as a page: 404 for what does not exist or may not be read."""

    def __init__(self, status: int, title: str, message: str = "") -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.message = message

    @classmethod
    def not_found(cls) -> PageError:
        return cls(404, "Not found", "There is nothing here, or you may not see it.")


class SignInRequired(Exception):
    """The page needs a signed-in user; answered with a redirect to the sign-in form."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


def viewer(request: Request, db: SessionDep) -> User | None:
    """The signed-in user, or None."""
    return session_user(request, db)


ViewerDep = Annotated[User | None, Depends(viewer)]


def require_user(request: Request, user: User | None) -> User:
    if user is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(target)
    return user


def require_csrf(request: Request, token: str) -> None:
    try:
        check_csrf(request, token)
    except CsrfError as exc:
        raise PageError(403, "Form expired", str(exc)) from None


@lru_cache(maxsize=64)
def _digest(path: Path, mtime: float) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def static_url(name: str) -> str:
    """``/static/NAME?v=<content hash>``: cached forever, refetched when the file changes."""
    path = STATIC / name
    return f"/static/{quote(name)}?v={_digest(path, path.stat().st_mtime)}"


def human_size(size: int | None) -> str:
    value = float(size or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop returns


def human_duration(seconds: float) -> str:
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def _when(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat() if value is not None else ""


def _job_duration(job: Any) -> str:
    end = job.updated if job.status in TERMINAL_JOB_STATUSES else datetime.now(UTC)
    return human_duration((end - job.created).total_seconds())


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATES))
    env = templates.env
    env.autoescape = True
    env.filters["size"] = human_size
    env.filters["when"] = _when
    env.filters["iso"] = _iso
    env.globals["static_url"] = static_url
    env.globals["job_duration"] = _job_duration
    env.globals["quote"] = lambda text: quote(str(text), safe="")
    return templates


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    user: User | None,
    status: int = 200,
) -> HTMLResponse:
    templates: Jinja2Templates = request.app.state.web_templates
    config = get_config(request)
    full = {
        "user": user,
        "csrf": csrf_token(request),
        "site_name": config.web.site_name,
        "path": request.url.path,
        "flash": _pop_flash(request),
        **context,
    }
    response: HTMLResponse = templates.TemplateResponse(
        request, name, full, status_code=status, headers={"Cache-Control": "no-store"}
    )
    return response


def flash(request: Request, message: str) -> None:
    """A message for the next page this session sees (after a redirect)."""
    session = request.scope.get("session")
    if session is not None:
        session["flash"] = message[:500]


def _pop_flash(request: Request) -> str | None:
    session = request.scope.get("session")
    message = session.pop("flash", None) if session is not None else None
    return message if isinstance(message, str) else None


def redirect(url: str) -> RedirectResponse:
    """303 See Other: the browser follows with a GET (after a form POST)."""
    return RedirectResponse(url, status_code=303)
