"""Adds the web pages to the API tier's FastAPI app: `install(app)`, one call in api/app.py.

What it adds: the page routes, ``/static``, the session cookie middleware, security
headers on every answer (a Content-Security-Policy that allows scripts and styles only
from this origin's files: no inline script, no inline style), and HTML error pages for
page paths (the API's paths keep their JSON errors).
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from buildworker.config import Config
from buildworker.web import pages_account, pages_jobs, pages_submit
from buildworker.web.common import STATIC, PageError, SignInRequired, make_templates, render
from buildworker.web.session import COOKIE, session_secret, session_user

__all__ = ["CONTENT_SECURITY_POLICY", "SecurityHeaders", "install"]

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
#: Paths whose errors stay in the API's JSON form.
_API_PREFIXES = ("/api/", "/logs/", "/artifacts/")
#: The interactive API docs load their own script and styles: no CSP there.
_NO_CSP = ("/api/docs",)


class SecurityHeaders:
    """Pure ASGI middleware: CSP, nosniff, no framing, same-origin referrers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = not str(scope.get("path", "")).startswith(_NO_CSP)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"),
                    (b"x-frame-options", b"DENY"),
                ]
                if csp:
                    extra.append((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()))
                headers += [(name, value) for name, value in extra if name not in names]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _is_api(path: str) -> bool:
    return path.startswith(_API_PREFIXES) or path == "/api"


def _wants_json(request: Request) -> bool:
    """API paths answer JSON; so does any path asked by an API client (an Authorization header, or an
    Accept that names JSON and not HTML), so `curl -H "Authorization: token ..." /typo` gets the
    API's error body, as it did before the pages existed. Browsers get the HTML page."""
    if _is_api(request.url.path) or request.url.path.startswith("/static/"):
        return True
    if "authorization" in request.headers:  # pages sign in by cookie, API clients by token
        return True
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def install(app: FastAPI, config: Config) -> None:
    """Mount the pages on `app` (after the API's routers and exception handlers)."""
    app.state.web_templates = make_templates()
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.include_router(pages_account.router)
    app.include_router(pages_submit.router)
    app.include_router(pages_jobs.router)  # last: /~USER/{tags:path} takes what is left
    app.add_middleware(
        SessionMiddleware,
        secret_key=session_secret(config),
        session_cookie=COOKIE,
        max_age=int(config.web.session_lifetime),
        same_site="lax",
        https_only=config.api.origin.startswith("https://"),
    )
    app.add_middleware(SecurityHeaders)

    api_http_error = app.exception_handlers[StarletteHTTPException]

    async def json_http_error(request: Request, exc: Exception) -> Response:
        answer = api_http_error(request, exc)
        return answer if isinstance(answer, Response) else await answer

    async def page_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PageError)
        return _error_page(request, exc.status, exc.title, exc.message)

    async def sign_in_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SignInRequired)
        return RedirectResponse(f"/login?next={quote(exc.next_url, safe='')}", status_code=303)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if _wants_json(request):
            return await json_http_error(request, exc)
        if exc.status_code == 404:
            return _error_page(request, 404, *_NOT_FOUND)
        if exc.status_code == 405:
            return _error_page(request, 405, "Method not allowed", "")
        return await json_http_error(request, exc)

    app.add_exception_handler(PageError, page_error)
    app.add_exception_handler(SignInRequired, sign_in_required)
    app.add_exception_handler(StarletteHTTPException, http_error)


_NOT_FOUND = ("Not found", "There is nothing here, or you may not see it.")


def _error_page(request: Request, status: int, title: str, message: str) -> HTMLResponse:
    user = None
    factory = getattr(request.app.state, "sessionmaker", None)
    if factory is not None and "session" in request.scope:
        with factory() as db:
            user = session_user(request, db)
            if user is not None:
                db.expunge(user)
    return render(
        request, "error.html", {"title": title, "message": message}, user=user, status=status
    )
