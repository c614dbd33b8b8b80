"""Run the Alembic migrations programmatically: `upgrade(url)` brings a database to head.

The API calls it at start; `buildworker admin` before touching the database. The
migration scripts live in buildworker/db/migrations (shipped as package data).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine

from buildworker.db.engine import make_engine

__all__ = ["MIGRATIONS", "alembic_config", "upgrade"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: PostgreSQL advisory lock key held while migrating ("bw" + "mig" in ASCII, arbitrary).
MIGRATION_LOCK = 0x62776D6967


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # "%" is interpolation syntax in Alembic's ConfigParser; URLs may contain it.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, *, engine: Engine | None = None, revision: str = "head") -> None:
    """Migrate the database at `url` to `revision` (idempotent)."""
    cfg = alembic_config(url)
    own = engine is None
    engine = engine or make_engine(url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Several API processes may start at once: one migrates, the others wait
                # for its commit and then find nothing to do.
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)
    finally:
        if own:
            engine.dispose()
