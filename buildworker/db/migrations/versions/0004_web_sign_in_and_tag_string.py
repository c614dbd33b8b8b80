"""web: users.password_hash for sign-in, jobs.tag_string for tag pages and search

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-01 21:40:00.000000
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("password_hash", sa.String(length=256), nullable=True))
    op.add_column("jobs", sa.Column("tag_string", sa.Text(), nullable=False, server_default=""))
    # Existing jobs: the "/"-joined form of their tags list.
    jobs = sa.table("jobs", sa.column("id", sa.Integer()), sa.column("tags", sa.JSON()))
    connection = op.get_bind()
    for job_id, tags in connection.execute(sa.select(jobs.c.id, jobs.c.tags)).all():
        if isinstance(tags, str):  # SQLite through a plain table() may hand back the text
            tags = json.loads(tags)
        if tags:
            connection.execute(
                sa.text("UPDATE jobs SET tag_string = :joined WHERE id = :id"),
                {"joined": "/".join(tags), "id": job_id},
            )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("tag_string")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("password_hash")
