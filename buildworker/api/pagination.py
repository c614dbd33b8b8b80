"""sr.ht's paginated responses: ``?start=<id>`` (inclusive), newest first.

``{"next": "<id of the first item of the next page>" | null, "results": [...],
"total": <count before the start filter>, "results_per_page": N}``, as
core.sr.ht's ``paginated_response``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request
from sqlalchemy import Select, func
from sqlalchemy.orm import InstrumentedAttribute, Session

from buildworker.api.errors import ApiError

__all__ = ["MAX_ID", "paginate", "parse_start"]

#: Largest id an INTEGER column holds; larger `start` values mean "from the newest".
MAX_ID = 2**31 - 1


def parse_start(request: Request) -> int | None:
    raw = request.query_params.get("start")
    if raw is None or raw.strip() == "":
        return None
    try:
        start = int(raw.strip())
    except ValueError:
        raise ApiError.field("start", "start should be an integer (an id)") from None
    if start == -1:
        return None
    return min(start, MAX_ID) if start >= 0 else 0


def paginate(
    session: Session,
    request: Request,
    query: Select[Any],
    id_column: InstrumentedAttribute[int],
    serialize: Callable[[Any], dict[str, Any]],
    per_page: int,
) -> dict[str, Any]:
    start = parse_start(request)
    total = session.scalar(
        query.with_only_columns(func.count(), maintain_column_froms=True).order_by(None)
    )
    if start is not None:
        query = query.where(id_column <= start)
    rows = list(session.scalars(query.order_by(id_column.desc()).limit(per_page + 1)))
    next_id: str | None = None
    if len(rows) > per_page:
        next_id = str(getattr(rows[per_page], id_column.key))
        rows = rows[:per_page]
    return {
        "next": next_id,
        "results": [serialize(row) for row in rows],
        "total": total or 0,
        "results_per_page": per_page,
    }
