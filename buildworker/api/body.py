"""Request bodies as real clients send them (spec/clients.md).

JSON objects and form-encoded (or multipart) fields alike become one dict; field helpers
then coerce string booleans and lists and raise a 400 naming the field. Unknown keys are
simply never looked at, so misspelled ones (``Note``, ``secrtets``) are ignored.

Size: every body is counted while it streams, whatever its framing (``Content-Length`` or
chunked, JSON, form or multipart with file parts), by FastAPI's own body limit
(``max_body_size=MAX_BODY`` on the app, in buildworker.api.app): the first read past the cap raises a 413
before the rest is read, so a 300 MB chunked upload costs the API one cap of memory at most.
`read_body` checks the same cap itself, so it stays bounded on a route given a larger limit.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartParser

from buildworker.api.errors import ApiError

__all__ = [
    "MAX_BODY",
    "OPENAPI_FORM_OR_JSON",
    "check_text",
    "opt_bool",
    "opt_str",
    "opt_str_list",
    "read_body",
]

#: Largest body the API reads (every route but the worker's log and artifact uploads, which
#: set their own): a 16 KiB manifest, form-encoded or multipart, fits many times.
MAX_BODY = 1024 * 1024
#: Multipart bodies: at most this many parts (fields and files together count toward MAX_BODY).
MAX_PARTS = 256

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0", ""}


def _form_to_dict(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            previous = out[key]
            out[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            out[key] = value
    return out


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError.reason("Invalid JSON provided") from None
    if not isinstance(data, dict):
        raise ApiError.reason("Expected JSON dictionary")
    return data


def _parse_form(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise ApiError.reason("Invalid form body: expected UTF-8 key=value pairs") from None
    return _form_to_dict(pairs)


def _too_large() -> ApiError:
    return ApiError.reason(f"request body too large (at most {MAX_BODY} bytes)", 413)


async def _capped_stream(request: Request) -> AsyncGenerator[bytes, None]:
    """The body's chunks as they arrive; ApiError 413 as soon as they pass MAX_BODY."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise _too_large()
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise _too_large()
        yield chunk


async def _read_capped(request: Request) -> bytes:
    return b"".join([chunk async for chunk in _capped_stream(request)])


async def _read_multipart(request: Request) -> dict[str, Any]:
    """Fields of a multipart body, file parts included, parsed as the capped stream arrives.

    Starlette's streaming parser (python-multipart underneath) is fed chunk by chunk, so a
    file part is counted against MAX_BODY while it is read, not after.
    """
    parser = MultiPartParser(
        request.headers,
        _capped_stream(request),
        max_files=MAX_PARTS,
        max_fields=MAX_PARTS,
        max_part_size=MAX_BODY,
    )
    try:
        form = await parser.parse()
    except (ApiError, HTTPException):
        raise  # the size cap (ours or the framework's): a 413, not a malformed body
    except Exception as exc:  # python-multipart and Starlette raise several unrelated types
        detail = getattr(exc, "message", "") or "malformed multipart data"
        raise ApiError.reason(f"Invalid multipart body: {detail}") from None
    pairs: list[tuple[str, str]] = []
    try:
        for key, value in form.multi_items():
            if isinstance(value, str):
                pairs.append((key, value))
            else:  # an uploaded file (curl -F manifest=@build.yml): at most MAX_BODY bytes
                data = await value.read()
                pairs.append((key, data.decode("utf-8", errors="replace")))
    finally:
        await form.close()
    return _form_to_dict(pairs)


async def read_body(request: Request) -> dict[str, Any]:
    """The request's fields: JSON object, urlencoded or multipart form; {} when empty.

    Raises ApiError 413 as soon as the body passes MAX_BODY, 400 when it does not parse.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _read_multipart(request)
    raw = await _read_capped(request)
    if not raw.strip():
        return {}
    if content_type == "application/json" or content_type.endswith("+json"):
        return _parse_json(raw)
    if content_type == "application/x-www-form-urlencoded":
        return _parse_form(raw)
    # No or another content type: guess from the first byte, as curl users rarely set one.
    if raw.lstrip()[:1] == b"{":
        return _parse_json(raw)
    return _parse_form(raw)


def opt_bool(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False if lowered else default
    raise ApiError.field(name, f"{name} should be a boolean")


def opt_str(body: dict[str, Any], name: str, *, max_length: int | None = None) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]  # a form field sent once but parsed as a list elsewhere
    if not isinstance(value, str):
        raise ApiError.field(name, f"{name} should be a string")
    if max_length is not None and len(value) > max_length:
        raise ApiError.field(name, f"{name} must be at most {max_length} characters")
    check_text(name, value)
    return value


def check_text(name: str, value: str) -> None:
    """Refuse text no database can store: NUL (PostgreSQL) and lone surrogates (not UTF-8)."""
    if "\0" in value:
        raise ApiError.field(name, f"{name} may not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError.field(name, f"{name} is not valid Unicode text") from None


def opt_str_list(body: dict[str, Any], name: str, *, separators: str = ",") -> list[str] | None:
    """A list of strings; a single string is split on `separators` (form fields)."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        items = [value]
        for sep in separators:
            items = [part for item in items for part in item.split(sep)]
        return [item.strip() for item in items if item.strip()]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ApiError.field(name, f"{name} should be a list of strings")
    return list(value)


def _form_or_json(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {"schema": schema},
                "application/x-www-form-urlencoded": {"schema": schema},
            },
        }
    }


#: openapi_extra for routes taking a body: the same fields as JSON or form.
OPENAPI_FORM_OR_JSON = _form_or_json
