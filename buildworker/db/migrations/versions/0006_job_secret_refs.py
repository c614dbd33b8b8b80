"""jobs.secret_refs: the manifest's secret references, parsed once at submit

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 19:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: jobs submitted before this revision have none; the claim parses those.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("secret_refs", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("secret_refs")
