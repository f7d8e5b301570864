"""labelstudio_annotation: what was judged, so an edited annotation is judged again

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 04:30:00

Adds exactly the columns of review.schema.LabelStudioAnnotation that let the sync see an
annotation edited after it was judged: the sha256 of the result it judged, and the refusal
code and time of the last edit judged.  (The poller's cursor is named sync state, in the
existing labelstudio_sync table.)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import review.schema

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('labelstudio_annotation') as batch:
        batch.add_column(sa.Column('result_sha256', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('edit_code', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('edited_at', review.schema.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('labelstudio_annotation') as batch:
        batch.drop_column('edited_at')
        batch.drop_column('edit_code')
        batch.drop_column('result_sha256')
