"""Account pages: sign in and out, personal access tokens, secrets, (soon) SSH keys.

Tokens go through `buildworker.api.accounts` (what `buildworker admin token` uses), secrets
through the secrets API's own create and delete, so both keep one set of rules.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

import structlog
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select

from buildworker.api import secret_routes as secrets_api
from buildworker.api.accounts import AccountError, create_token, list_tokens
from buildworker.api.auth import KNOWN_SCOPES
from buildworker.api.deps import SessionDep
from buildworker.api.errors import ApiError
from buildworker.db.models import Secret, Token, User
from buildworker.secret_types import SECRET_TYPES
from buildworker.web.common import (
    PageError,
    ViewerDep,
    flash,
    redirect,
    render,
    require_csrf,
    require_user,
)
from buildworker.web.passwords import check_password
from buildworker.web.session import sign_in, sign_out

__all__ = ["router", "safe_next"]

log = structlog.get_logger()
router = APIRouter(include_in_schema=False)


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only (no open redirect)."""
    if not target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    if "\\" in target:
        return "/"
    return target


# --- sign in / out ---------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, viewer: ViewerDep) -> Response:
    target = safe_next(request.query_params.get("next"))
    if viewer is not None:
        return redirect(target)
    return render(
        request, "login.html", {"title": "Sign in", "next": target, "error": None}, user=None
    )


@router.post("/login")
def login(
    request: Request,
    db: SessionDep,
    csrf: Annotated[str, Form()] = "",
    username: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    require_csrf(request, csrf)
    target = safe_next(next)
    name = username.strip().removeprefix("~").lower()
    user = db.scalars(select(User).where(User.username == name)).first() if name else None
    if user is None or not check_password(user, password):
        log.info("web_sign_in_refused", username=name[:64])
        context = {
            "title": "Sign in",
            "next": target,
            "error": "Wrong username or password.",
            "username": username,
        }
        return render(request, "login.html", context, user=None, status=401)
    sign_in(request, user)
    log.info("web_signed_in", username=user.username)
    return redirect(target)


@router.post("/logout")
def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    require_csrf(request, csrf)
    sign_out(request)
    return redirect("/")


# --- tokens ------------------------------------------------------------------------------------


def _tokens_page(
    request: Request, db: Any, user: User, *, created: str | None = None, error: str | None = None
) -> HTMLResponse:
    context = {
        "title": "Personal access tokens",
        "tokens": list_tokens(db, user),
        "scopes": ("*", *KNOWN_SCOPES),
        "created": created,
        "error": error,
    }
    return render(request, "tokens.html", context, user=user, status=400 if error else 200)


@router.get("/tokens", response_class=HTMLResponse)
def tokens(request: Request, db: SessionDep, viewer: ViewerDep) -> HTMLResponse:
    return _tokens_page(request, db, require_user(request, viewer))


@router.post("/tokens")
def token_create(
    request: Request,
    db: SessionDep,
    viewer: ViewerDep,
    csrf: Annotated[str, Form()] = "",
    name: Annotated[str, Form()] = "",
    scopes: Annotated[list[str] | None, Form()] = None,
) -> Response:
    require_csrf(request, csrf)
    user = require_user(request, viewer)
    if len(name) > 256:
        return _tokens_page(request, db, user, error="name: at most 256 characters")
    try:
        made = create_token(db, user, scopes or [], name.strip() or None)
    except AccountError as exc:
        db.rollback()
        return _tokens_page(request, db, user, error=f"scopes: {exc}")
    db.commit()
    log.info("web_token_created", username=user.username, token_id=made.id)
    # Shown once, on this answer only: it is not stored anywhere but as its hash.
    return _tokens_page(request, db, user, created=made.token)


@router.post("/tokens/{token_id}/revoke")
def token_revoke(
    request: Request,
    token_id: int,
    db: SessionDep,
    viewer: ViewerDep,
    csrf: Annotated[str, Form()] = "",
) -> Response:
    require_csrf(request, csrf)
    user = require_user(request, viewer)
    token = db.get(Token, token_id)
    if token is None or token.user_id != user.id:
        raise PageError.not_found()
    token.revoked = True
    db.commit()
    flash(request, f"Token {token.name or token.id} revoked.")
    return redirect("/tokens")


# --- secrets -----------------------------------------------------------------------------------


def _secrets_page(
    request: Request,
    db: Any,
    user: User,
    *,
    errors: list[dict[str, str]] | None = None,
    form: dict[str, str] | None = None,
    status: int = 200,
) -> HTMLResponse:
    rows = db.scalars(select(Secret).where(Secret.owner_id == user.id).order_by(Secret.id))
    context = {
        "title": "Secrets",
        "secrets": list(rows),
        "types": SECRET_TYPES,
        "errors": errors or [],
        "form": form or {"type": "ssh_key", "name": "", "path": "", "mode": "600"},
        "enabled": request.app.state.secret_box.enabled,
    }
    return render(request, "secrets.html", context, user=user, status=status)


@router.get("/secrets", response_class=HTMLResponse)
def secrets(request: Request, db: SessionDep, viewer: ViewerDep) -> HTMLResponse:
    return _secrets_page(request, db, require_user(request, viewer))


@router.post("/secrets")
def secret_create(
    request: Request,
    db: SessionDep,
    viewer: ViewerDep,
    csrf: Annotated[str, Form()] = "",
    name: Annotated[str, Form()] = "",
    type: Annotated[str, Form()] = "",
    data: Annotated[str, Form()] = "",
    path: Annotated[str, Form()] = "",
    mode: Annotated[str, Form()] = "",
    file: Annotated[UploadFile | None, File()] = None,
) -> Response:
    require_csrf(request, csrf)
    user = require_user(request, viewer)
    body: dict[str, Any] = {"type": type, "name": name}
    upload = file.file.read(secrets_api.MAX_SECRET_SIZE + 1) if file is not None else b""
    if upload:
        import base64

        body["data_b64"] = base64.b64encode(upload).decode()
    else:
        body["data"] = data
    if type == "plaintext_file":
        body["path"] = path
        body["mode"] = mode
    form = {"type": type, "name": name, "path": path, "mode": mode}
    try:
        made = secrets_api.create_secret(request, user, body, db)
    except ApiError as exc:
        db.rollback()
        return _secrets_page(request, db, user, errors=exc.errors, form=form, status=exc.status)
    flash(request, f"Secret {made['name'] or made['uuid']} added: use {made['uuid']} in manifests.")
    return redirect("/secrets")


@router.post("/secrets/{secret_uuid}/delete")
def secret_delete(
    request: Request,
    secret_uuid: str,
    db: SessionDep,
    viewer: ViewerDep,
    csrf: Annotated[str, Form()] = "",
) -> Response:
    require_csrf(request, csrf)
    user = require_user(request, viewer)
    try:
        secrets_api.delete_secret(secret_uuid, user, db)
    except ApiError:
        raise PageError.not_found() from None
    flash(request, "Secret deleted.")
    return redirect("/secrets")


# --- SSH keys ----------------------------------------------------------------------------------


@router.get("/ssh-keys", response_class=HTMLResponse)
def ssh_keys(request: Request, viewer: ViewerDep) -> HTMLResponse:
    """SSH KEYS PAGE GOES HERE: the "ssh" branch (issue 12) adds the keys table and
    ``/api/user/ssh-keys``; this page lists, adds and deletes through them once it lands.
    Until then it says so, so the account menu's link opens something a person can read."""
    user = require_user(request, viewer)
    return render(request, "ssh_keys.html", {"title": "SSH keys"}, user=user)
