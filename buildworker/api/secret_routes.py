"""The secrets API: create (`POST /api/secrets`), list metadata, delete.

(Named ``secret_routes``, not ``secrets``, so it is never mistaken for the standard
library's `secrets` that buildworker.api.auth imports for its tokens.)

Secret material is encrypted with Fernet under `[api] secret-key` before it reaches the
database and is never returned by the public API; only the internal claim of a job that
holds the lease gets it back (buildworker.api.internal).
"""

from __future__ import annotations

import base64
import binascii
import uuid as uuidlib
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from buildworker.api.body import OPENAPI_FORM_OR_JSON, opt_str, read_body
from buildworker.api.crypto import SecretBox, SecretsDisabled
from buildworker.api.deps import SessionDep, current_user, get_config
from buildworker.api.errors import ApiError
from buildworker.api.pagination import paginate
from buildworker.api.serialize import format_time
from buildworker.db.models import Secret, User
from buildworker.secret_types import SECRET_TYPES

__all__ = ["decrypt_secret", "router", "secret_dict"]

log = structlog.get_logger()
router = APIRouter(prefix="/api", tags=["secrets"])

ReadUser = Annotated[User, Depends(current_user("secrets:read"))]
WriteUser = Annotated[User, Depends(current_user("secrets:write"))]
Body = Annotated[dict[str, Any], Depends(read_body)]

#: Largest secret accepted, as builds.sr.ht's `secret` column.
MAX_SECRET_SIZE = 16384
MAX_PATH = 512

SECRET_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "name": {"type": "string", "minLength": 3, "maxLength": 512},
        "type": {"type": "string", "enum": list(SECRET_TYPES)},
        "data": {"type": "string", "description": "the secret as text"},
        "data_b64": {"type": "string", "description": "the secret as base64 (binary files)"},
        "encoding": {"type": "string", "enum": ["text", "base64"], "default": "text"},
        "path": {"type": "string", "description": "plaintext_file: where in the guest"},
        "mode": {
            "description": "plaintext_file: octal string such as '600', or an integer",
            "oneOf": [{"type": "string"}, {"type": "integer"}],
        },
    },
}


def secret_dict(secret: Secret) -> dict[str, Any]:
    return {
        "uuid": secret.uuid,
        "name": secret.name,
        "type": secret.type,
        "path": secret.path,
        "mode": secret.mode,
        "created": format_time(secret.created),
    }


def decrypt_secret(box: SecretBox, secret: Secret) -> bytes:
    """The plaintext of a stored secret (for the internal claim)."""
    return box.decrypt(secret.data)


def _box(request: Request) -> SecretBox:
    box: SecretBox = request.app.state.secret_box
    if not box.enabled:
        raise ApiError.reason(
            "secrets are disabled on this server: [api] secret-key is not set", 503
        )
    return box


def _data(body: dict[str, Any], secret_type: str) -> bytes:
    encoded = body.get("data_b64")
    field = "data_b64"
    if encoded is None and str(body.get("encoding", "text")).lower() == "base64":
        encoded, field = body.get("data"), "data"
    if encoded is not None:
        if not isinstance(encoded, str):
            raise ApiError.field(field, f"{field} should be a base64 string")
        try:
            data = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ApiError.field(field, f"{field} is not valid base64") from None
    else:
        text = body.get("data")
        if text is None:
            raise ApiError.field("data", "data is required")
        if not isinstance(text, str):
            raise ApiError.field("data", "data should be a string")
        # As builds.sr.ht's form: CRLF to LF, and keys end with a newline (ssh insists).
        text = text.replace("\r\n", "\n")
        if secret_type != "plaintext_file" and not text.endswith("\n"):
            text += "\n"
        data = text.encode("utf-8", "surrogatepass")
    if not data.strip():
        raise ApiError.field(field if encoded is not None else "data", "the secret is empty")
    if len(data) > MAX_SECRET_SIZE:
        raise ApiError.field("data", f"secrets are limited to {MAX_SECRET_SIZE} bytes")
    return data


def _mode(value: Any) -> int:
    if isinstance(value, bool) or value is None:
        raise ApiError.field("mode", "mode is required for plaintext_file (octal, e.g. '600')")
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        try:
            mode = int(text, 8)
        except ValueError:
            raise ApiError.field(
                "mode", f"mode should be octal such as '600' (got {value!r})"
            ) from None
    elif isinstance(value, int):
        mode = value
    else:
        raise ApiError.field("mode", "mode should be an octal string such as '600'")
    if not 0 <= mode <= 0o777:
        raise ApiError.field(
            "mode", "mode must be between 0 and 777 (octal); send it as a string such as '600'"
        )
    return mode


def _name(session: Session, body: dict[str, Any], owner_id: int) -> str | None:
    name = opt_str(body, "name")
    if name is None or name == "":
        return None
    if not 3 <= len(name) <= 512:
        raise ApiError.field("name", "Secret names must be between 3 and 512 chars")
    try:
        uuidlib.UUID(name)
    except ValueError:
        pass
    else:
        raise ApiError.field("name", "a secret name may not look like a UUID")
    taken = session.scalars(
        select(Secret.id).where(Secret.owner_id == owner_id, Secret.name == name)
    ).first()
    if taken is not None:
        raise ApiError.field("name", f"you already have a secret named {name!r}")
    return name


@router.post(
    "/secrets",
    summary="Store a secret (returns its uuid; the material is never returned)",
    openapi_extra=OPENAPI_FORM_OR_JSON(SECRET_BODY_SCHEMA),
)
def create_secret(
    request: Request, user: WriteUser, body: Body, session: SessionDep
) -> dict[str, Any]:
    secret_type = body.get("type")
    if secret_type is None:
        raise ApiError.field("type", "type is required")
    if secret_type not in SECRET_TYPES:
        raise ApiError.field("type", f"type must be one of {', '.join(SECRET_TYPES)}")
    name = _name(session, body, user.id)
    data = _data(body, secret_type)
    path: str | None = None
    mode: int | None = None
    if secret_type == "plaintext_file":
        path = opt_str(body, "path", max_length=MAX_PATH)
        if not path or not path.strip():
            raise ApiError.field("path", "path is required for plaintext_file")
        if "\n" in path or "\0" in path:
            raise ApiError.field("path", "path may not contain newlines or NUL")
        mode = _mode(body.get("mode"))
    box = _box(request)
    try:
        ciphertext = box.encrypt(data)
    except SecretsDisabled as exc:  # pragma: no cover - _box checked it
        raise ApiError.reason(str(exc), 503) from None
    secret = Secret(
        owner_id=user.id,
        uuid=str(uuidlib.uuid4()),
        name=name,
        type=secret_type,
        data=ciphertext,
        path=path,
        mode=mode,
    )
    session.add(secret)
    session.commit()
    log.info("secret_created", uuid=secret.uuid, owner=user.username, type=secret_type)
    return secret_dict(secret)


@router.get("/secrets", summary="List your secrets (metadata only, paginated)")
def list_secrets(request: Request, user: ReadUser, session: SessionDep) -> dict[str, Any]:
    config = get_config(request)
    return paginate(
        session,
        request,
        select(Secret).where(Secret.owner_id == user.id),
        Secret.id,
        secret_dict,
        config.api.results_per_page,
    )


def _load(session: Session, user: User, secret_uuid: str) -> Secret:
    try:
        normal = str(uuidlib.UUID(secret_uuid))
    except ValueError:
        raise ApiError.not_found() from None
    secret = session.scalars(
        select(Secret).where(Secret.owner_id == user.id, Secret.uuid == normal)
    ).first()
    if secret is None:
        raise ApiError.not_found()
    return secret


@router.get("/secrets/{secret_uuid}", summary="Get a secret's metadata")
def get_secret(secret_uuid: str, user: ReadUser, session: SessionDep) -> dict[str, Any]:
    return secret_dict(_load(session, user, secret_uuid))


@router.delete("/secrets/{secret_uuid}", summary="Delete a secret")
def delete_secret(secret_uuid: str, user: WriteUser, session: SessionDep) -> dict[str, Any]:
    secret = _load(session, user, secret_uuid)
    session.delete(secret)
    session.commit()
    log.info("secret_deleted", uuid=secret_uuid, owner=user.username)
    return {}
