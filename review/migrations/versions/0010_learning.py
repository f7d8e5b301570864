"""ix_review_item_resolved: decided reviews by the time they were decided

The learning loop reads decided reviews in a window of resolution time: the false-positive rate
(`review stats`, and /metrics on every scrape: the last 30 days) and the dataset export
(`--since`).  Without an index each read scans every review ever made; a partial index over
decided rows, ordered by resolved_at, reads only the window.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 03:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

DECIDED = "status = 'decided'"


def upgrade() -> None:
    with op.batch_alter_table('review_item', schema=None) as batch_op:
        batch_op.create_index('ix_review_item_resolved', ['resolved_at'], unique=False,
                              sqlite_where=sa.text(DECIDED), postgresql_where=sa.text(DECIDED))


def downgrade() -> None:
    with op.batch_alter_table('review_item', schema=None) as batch_op:
        batch_op.drop_index('ix_review_item_resolved', sqlite_where=sa.text(DECIDED),
                            postgresql_where=sa.text(DECIDED))
