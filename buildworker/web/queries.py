"""The job lists of the pages: whose jobs, which the viewer may read, search, pages.

Access is the API's (`buildworker.api.access.readable_by`, the SQL twin of `can_read`);
search is builds.sr.ht's syntax (`buildworker.web.search`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from buildworker.api.access import readable_by
from buildworker.db.models import Job, User
from buildworker.web.badge import BADGE_STATUSES
from buildworker.web.search import Term, search_clause, tag_prefix_clause

__all__ = ["PER_PAGE", "JobPage", "list_jobs", "newest_finished_status"]

#: Jobs per page of a list.
PER_PAGE = 25


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    total: int
    page: int
    pages: int


def _conditions(
    viewer: User | None,
    owner: User | None,
    terms: list[Term],
    tag_path: tuple[str, ...],
) -> list[ColumnElement[bool]]:
    conditions = [readable_by(viewer)]
    if owner is not None:
        conditions.append(Job.owner_id == owner.id)
    if tag_path:
        conditions.append(tag_prefix_clause(tag_path))
    found = search_clause(terms)
    if found is not None:
        conditions.append(found)
    return conditions


def list_jobs(
    db: Session,
    *,
    viewer: User | None,
    owner: User | None,
    terms: list[Term] | None = None,
    tag_path: tuple[str, ...] = (),
    page: int = 1,
    per_page: int = PER_PAGE,
) -> JobPage:
    """One page (1-based) of the jobs ``viewer`` may read, newest first; ``owner`` None
    means everyone's."""
    conditions = _conditions(viewer, owner, terms or [], tag_path)
    total = db.scalar(select(func.count()).select_from(Job).where(*conditions)) or 0
    pages = max(1, -(-total // per_page))
    page = min(max(1, page), pages)
    jobs = list(
        db.scalars(
            select(Job)
            .where(*conditions)
            .order_by(Job.id.desc())
            .offset((page - 1) * per_page)
            .limit(per_page)
        )
    )
    return JobPage(jobs, total, page, pages)


def newest_finished_status(db: Session, owner: User, tag_path: tuple[str, ...]) -> str | None:
    """Status of the owner's newest public job under ``tag_path`` that succeeded, failed or
    timed out (what a badge shows); None if there is none. Badges are fetched anonymously
    (READMEs embed them), so only public jobs count."""
    conditions = [readable_by(None), Job.owner_id == owner.id, Job.status.in_(BADGE_STATUSES)]
    if tag_path:
        conditions.append(tag_prefix_clause(tag_path))
    return db.scalar(select(Job.status).where(*conditions).order_by(Job.id.desc()).limit(1))
