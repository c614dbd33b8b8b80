"""Persistence: SQLAlchemy models, engine factory, Alembic migrations, the outbox."""
