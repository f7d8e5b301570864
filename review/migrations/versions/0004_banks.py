"""hash banks: violating (imported) and cleared_benign (fed by people's benign verdicts)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 19:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import review.schema

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'bank_entry',
        sa.Column('bank', sa.String(length=24), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('source', sa.String(length=128), nullable=False),
        sa.Column('note', sa.String(length=500), nullable=False),
        sa.Column('created_at', review.schema.UTCDateTime(), nullable=False),
        sa.CheckConstraint("bank IN ('cleared_benign', 'violating')", name=op.f('ck_bank_entry_bank')),
        sa.CheckConstraint('length(sha256) = 64', name=op.f('ck_bank_entry_sha256_len')),
        sa.PrimaryKeyConstraint('bank', 'sha256', name=op.f('pk_bank_entry')),
    )
    with op.batch_alter_table('bank_entry', schema=None) as batch_op:
        batch_op.create_index('ix_bank_entry_sha256', ['sha256'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('bank_entry', schema=None) as batch_op:
        batch_op.drop_index('ix_bank_entry_sha256')
    op.drop_table('bank_entry')
