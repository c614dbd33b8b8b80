"""Lists in SQL agree with the API's access rule, and search has builds.sr.ht's syntax.
On SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session

from buildworker.api.access import can_read
from buildworker.db.engine import make_engine, make_sessionmaker
from buildworker.db.migrate import upgrade
from buildworker.db.models import Job, User
from buildworker.web.queries import list_jobs, newest_finished_status
from buildworker.web.search import SearchError, Term, parse_query


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> Iterator[Session]:
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    upgrade(url)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        yield session
    engine.dispose()


def add_job(db: Session, owner: User, **fields: object) -> Job:
    values: dict[str, object] = {
        "manifest": "image: debian/bookworm\n",
        "image": "debian/bookworm",
        "arch": "amd64",
        "status": "success",
        "tags": [],
        "access_read": ["*"],
        "access_write": [],
    }
    values.update(fields)
    job = Job(owner_id=owner.id, **values)
    db.add(job)
    db.flush()
    return job


def users(db: Session, *names: str) -> list[User]:
    made = [User(username=name) for name in names]
    db.add_all(made)
    db.flush()
    return made


def test_the_sql_access_rule_is_can_read(db: Session) -> None:
    alice, bob, carol, bob_ = users(db, "alice", "bob", "carol", "bob_x")
    lists = [["*"], [], ["bob"], ["Bob"], ["carol", "bob_x"], ["bo_"], ["*", "carol"]]
    writes = [[], ["bob"], ["carol"]]
    for read, write in itertools.product(lists, writes):
        add_job(db, alice, access_read=read, access_write=write)
    add_job(db, bob, access_read=[])
    db.commit()
    everything = db.query(Job).all()
    for viewer in (None, alice, bob, carol, bob_):
        listed = {job.id for job in list_jobs(db, viewer=viewer, owner=None, per_page=1000).jobs}
        expected = {job.id for job in everything if can_read(job, viewer)}
        assert listed == expected, viewer and viewer.username


def ids(db: Session, query: str, viewer: User, **kwargs: object) -> list[int]:
    page = list_jobs(db, viewer=viewer, owner=viewer, terms=parse_query(query), **kwargs)  # type: ignore[arg-type]
    return [job.id for job in page.jobs]


def test_search_and_tag_pages_return_the_right_jobs(db: Session) -> None:
    (alice,) = users(db, "alice")
    a = add_job(db, alice, note="Fix the frobnicator", tags=["proj", "main"]).id
    b = add_job(db, alice, note="release 1.2", tags=["proj", "release"], status="failed").id
    c = add_job(db, alice, note="100% done_ok", image="alpine/edge", tags=["proja"]).id
    d = add_job(db, alice, note=None, status="running", tags=["proj", "main", "docs"]).id
    db.commit()
    assert ids(db, "frobnicator", alice) == [a]
    assert ids(db, "FROB", alice) == [a]  # case-insensitive
    assert ids(db, "status:failed", alice) == [b]
    assert ids(db, "!status:success", alice) == [d, b]
    assert ids(db, "image:alpine", alice) == [c]
    assert ids(db, "tags:main", alice) == [d, a]
    assert ids(db, "tags:proj !tags:main", alice) == [c, b]
    assert ids(db, '"release 1.2"', alice) == [b]
    assert ids(db, "100%", alice) == [c] and ids(db, "e_o", alice) == [c]  # no wildcards
    assert ids(db, "!frob", alice) == [d, c, b]  # a note-less job is "not frob"
    assert ids(db, "status:bogus", alice) == []
    # Tag pages: whole components from the start
    assert ids(db, "", alice, tag_path=("proj",)) == [d, b, a]
    assert ids(db, "", alice, tag_path=("proj", "main")) == [d, a]
    assert ids(db, "", alice, tag_path=("proja",)) == [c]
    assert ids(db, "", alice, tag_path=("pro",)) == []


def test_pages_of_a_long_list(db: Session) -> None:
    (alice,) = users(db, "alice")
    made = [add_job(db, alice).id for _ in range(7)]
    db.commit()
    first = list_jobs(db, viewer=alice, owner=alice, per_page=3)
    last = list_jobs(db, viewer=alice, owner=alice, per_page=3, page=3)
    beyond = list_jobs(db, viewer=alice, owner=alice, per_page=3, page=99)
    assert [j.id for j in first.jobs] == made[::-1][:3] and first.pages == 3 and first.total == 7
    assert [j.id for j in last.jobs] == [made[0]] and beyond.page == 3


def test_badge_status_is_the_newest_finished_public_job_under_the_tag(db: Session) -> None:
    (alice,) = users(db, "alice")
    assert newest_finished_status(db, alice, ("proj",)) is None
    add_job(db, alice, tags=["proj"], status="success")
    add_job(db, alice, tags=["other"], status="failed")
    add_job(db, alice, tags=["proj"], status="running")
    add_job(db, alice, tags=["proj"], status="failed", access_read=[])  # private: not counted
    db.commit()
    assert newest_finished_status(db, alice, ("proj",)) == "success"
    assert newest_finished_status(db, alice, ("other",)) == "failed"
    assert newest_finished_status(db, alice, ()) == "failed"


def test_parse_query_follows_sr_ht() -> None:
    assert parse_query('a "b c" status:failed !image:alpine') == [
        Term(None, "a"),
        Term(None, "b c"),
        Term("status", "failed"),
        Term("image", "alpine", negated=True),
    ]
    assert parse_query("") == [] and parse_query("!") == [Term(None, "!")]
    with pytest.raises(SearchError, match="Invalid search key 'colour'"):
        parse_query("colour:red")
    with pytest.raises(SearchError, match="cannot parse"):
        parse_query('"unbalanced')
    assert parse_query("http://x") == [Term(None, "http://x")]  # not a key: a word
