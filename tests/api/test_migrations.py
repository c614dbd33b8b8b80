"""The Alembic migrations build exactly the schema the models declare, on both backends."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from buildworker.db.engine import make_engine
from buildworker.db.migrate import alembic_config, upgrade
from buildworker.db.models import Base


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_match_the_models(request: pytest.FixtureRequest, backend: str) -> None:
    url: str = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    # Given a database migrated to head (twice: upgrade is idempotent)
    upgrade(url)
    upgrade(url)
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            # Then alembic finds nothing to change between the models and the database
            diff = compare_metadata(context, Base.metadata)
            assert diff == [], diff
            tables = set(inspect(connection).get_table_names())
        assert set(Base.metadata.tables) <= tables
    finally:
        engine.dispose()


def test_downgrade_to_base_and_back(sqlite_url: str) -> None:
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    cfg = alembic_config(sqlite_url)
    try:
        with engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.downgrade(cfg, "base")
        with engine.connect() as connection:
            assert set(inspect(connection).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as connection:
            assert "jobs" in inspect(connection).get_table_names()
    finally:
        engine.dispose()


def test_concurrent_upgrades_on_postgresql_do_not_collide(pg_url: str) -> None:
    import concurrent.futures

    # When four API processes start at once on an empty database
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: upgrade(pg_url), range(4)))
    # Then every one of them succeeded and the schema is complete
    assert results == [None] * 4
    engine = make_engine(pg_url)
    try:
        with engine.connect() as connection:
            assert set(Base.metadata.tables) <= set(inspect(connection).get_table_names())
    finally:
        engine.dispose()
