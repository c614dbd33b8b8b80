"""Job search with builds.sr.ht's syntax (core.sr.ht ``srht/search.py``, ``buildsrht/search.py``).

A query is shell-quoted terms, all of which must hold:

- a free word (or ``"quoted words"``) matches the note, case-insensitively, anywhere;
- ``status:S`` the status exactly (an unknown status matches nothing, as on sr.ht);
- ``image:X`` a substring of the image, ``tags:X`` a substring of the ``/``-joined tags;
- ``!`` before a term negates it (``!status:failed``; ``!word`` too, which sr.ht lacks).

`parse_query` is pure; `search_clause` turns terms into one SQLAlchemy condition.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, false, func, not_, or_

from buildworker.db.models import JOB_STATUSES, Job

__all__ = ["KEYS", "SearchError", "Term", "parse_query", "search_clause", "tag_prefix_clause"]

KEYS = ("status", "image", "tags")


class SearchError(ValueError):
    """A query that cannot be parsed; the message says why."""


@dataclass(frozen=True)
class Term:
    #: None for a free word
    key: str | None
    value: str
    negated: bool = False


def parse_query(text: str) -> list[Term]:
    """The terms of a search query. Raises SearchError for unbalanced quotes or an
    unknown ``key:``."""
    try:
        words = shlex.split(text or "")
    except ValueError as exc:
        raise SearchError(f"cannot parse the search: {exc}") from None
    terms: list[Term] = []
    for word in words:
        negated = word.startswith("!") and len(word) > 1
        if negated:
            word = word[1:]
        key, sep, value = word.partition(":")
        if sep and key in KEYS:
            terms.append(Term(key, value, negated))
        elif sep and key.isidentifier() and not value.startswith("//"):  # a URL is a word
            known = ", ".join(f"{k}:" for k in KEYS)
            raise SearchError(f"Invalid search key '{key}' (known: {known})")
        else:
            terms.append(Term(None, word, negated))
    return terms


def _contains(column: Any, value: str) -> ColumnElement[bool]:
    return func.lower(func.coalesce(column, "")).contains(value.lower(), autoescape=True)


def _clause(term: Term) -> ColumnElement[bool]:
    if term.key == "status":
        return Job.status == term.value.lower() if term.value.lower() in JOB_STATUSES else false()
    if term.key == "image":
        return _contains(Job.image, term.value)
    if term.key == "tags":
        return _contains(Job.tag_string, term.value)
    return _contains(Job.note, term.value)


def search_clause(terms: list[Term]) -> ColumnElement[bool] | None:
    """One condition for all terms (None when there are none)."""
    if not terms:
        return None
    clauses = [not_(_clause(t)) if t.negated else _clause(t) for t in terms]
    return and_(*clauses) if len(clauses) > 1 else clauses[0]


def tag_prefix_clause(path: tuple[str, ...]) -> ColumnElement[bool]:
    """Jobs whose tags start with ``path`` component by component (``a/b`` matches the tags
    ``a/b`` and ``a/b/c``, not ``a/bc``; sr.ht's prefix ILIKE matched both)."""
    joined = "/".join(path)
    return or_(Job.tag_string == joined, Job.tag_string.startswith(joined + "/", autoescape=True))
