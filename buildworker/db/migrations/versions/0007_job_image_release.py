"""jobs.image_release, jobs.image_digest: which image a job ran on

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 15:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: jobs submitted before this revision were routed by `image` as written, and
    # no worker reported a digest for them.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("image_release", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("image_digest", sa.String(length=80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("image_digest")
        batch.drop_column("image_release")
