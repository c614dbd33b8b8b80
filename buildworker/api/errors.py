"""sr.ht's error form, and the exception handlers that keep every failure in it.

Every error body is ``{"errors": [{"field": ..., "reason": ...}]}`` (``field`` omitted when
no single field is at fault). Unknown paths are a JSON 404, malformed input a 400 naming
the field; an unexpected exception is logged and answered 500 in the same form, which the
schemathesis test treats as a failure.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY

__all__ = ["ApiError", "error_body", "install_handlers"]

log = structlog.get_logger()


def error_body(errors: list[dict[str, str]]) -> dict[str, Any]:
    return {"errors": errors}


class ApiError(Exception):
    """An error answered in sr.ht's form; raise it from any route or dependency."""

    def __init__(
        self,
        status: int,
        errors: list[dict[str, str]],
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__("; ".join(e.get("reason", "") for e in errors))
        self.status = status
        self.errors = errors
        self.headers = headers

    @classmethod
    def field(cls, field: str, reason: str, status: int = 400) -> ApiError:
        return cls(status, [{"field": field, "reason": reason}])

    @classmethod
    def reason(cls, reason: str, status: int = 400) -> ApiError:
        return cls(status, [{"reason": reason}])

    @classmethod
    def not_found(cls) -> ApiError:
        return cls(404, [{"reason": "404 not found"}])


def _http_reason(status: int, detail: Any) -> str:
    if status == 404:
        return "404 not found"
    if status == 405:
        return "405 method not allowed"
    return str(detail) if detail else f"{status} error"


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(error_body(exc.errors), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    reason = _http_reason(exc.status_code, exc.detail)
    limit = request.scope.get(MAX_BODY_SIZE_SCOPE_KEY)
    if exc.status_code == 413 and isinstance(limit, int):
        # FastAPI's body limit (max_body_size) stopped reading: say what the cap is.
        reason = f"request body too large (at most {limit} bytes)"
    return JSONResponse(
        error_body([{"reason": reason}]),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


def _loc_field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    # A path parameter that is not a number names a resource that cannot exist: 404, as
    # sr.ht's int converter answers.
    if any(err.get("loc", ("",))[0] == "path" for err in errors):
        return JSONResponse(error_body([{"reason": "404 not found"}]), status_code=404)
    body = [
        {"field": _loc_field(err.get("loc", ())), "reason": str(err.get("msg"))} for err in errors
    ]
    return JSONResponse(error_body(body), status_code=400)


async def _database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    log.error("database_unavailable", error=str(exc))
    return JSONResponse(
        error_body([{"reason": "the database is unavailable; retry later"}]),
        status_code=503,
        headers={"Retry-After": "5"},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled_error", path=request.url.path, method=request.method)
    return JSONResponse(error_body([{"reason": "internal server error"}]), status_code=500)


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)
