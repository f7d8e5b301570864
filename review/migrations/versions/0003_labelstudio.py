"""label studio sync: projects, tasks, reviewer mapping, judged annotations, sync state

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 19:00:00

Creates exactly the LabelStudio* tables of review.schema (a test compares the migrated schema
with the metadata).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import review.schema

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('labelstudio_project',
    sa.Column('queue', sa.String(length=64), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('config_sha256', sa.String(length=64), nullable=False),
    sa.Column('maximum_annotations', sa.Integer(), nullable=False),
    sa.Column('created_at', review.schema.UTCDateTime(), nullable=False),
    sa.Column('updated_at', review.schema.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('queue', name=op.f('pk_labelstudio_project')),
    sa.UniqueConstraint('project_id', name=op.f('uq_labelstudio_project_project_id'))
    )
    op.create_table('labelstudio_sync',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('value', sa.JSON(), nullable=False),
    sa.Column('updated_at', review.schema.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_labelstudio_sync'))
    )
    op.create_table('labelstudio_reviewer',
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('reviewer_id', sa.String(length=64), nullable=False),
    sa.Column('ls_user_id', sa.Integer(), nullable=True),
    sa.Column('created_at', review.schema.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['reviewer_id'], ['reviewer.id'], name=op.f('fk_labelstudio_reviewer_reviewer_id_reviewer')),
    sa.PrimaryKeyConstraint('email', name=op.f('pk_labelstudio_reviewer')),
    sa.UniqueConstraint('ls_user_id', name=op.f('uq_labelstudio_reviewer_ls_user_id'))
    )
    op.create_table('labelstudio_task',
    sa.Column('item_id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('created_at', review.schema.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['item_id'], ['review_item.id'], name=op.f('fk_labelstudio_task_item_id_review_item')),
    sa.PrimaryKeyConstraint('item_id', name=op.f('pk_labelstudio_task')),
    sa.UniqueConstraint('task_id', name=op.f('uq_labelstudio_task_task_id'))
    )
    op.create_table('labelstudio_annotation',
    sa.Column('annotation_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('item_id', sa.Integer(), nullable=False),
    sa.Column('ls_user_id', sa.Integer(), nullable=True),
    sa.Column('reviewer_id', sa.String(length=128), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=True),
    sa.Column('verdict_id', sa.Integer(), nullable=True),
    sa.Column('via', sa.String(length=16), nullable=False),
    sa.Column('created_at', review.schema.UTCDateTime(), nullable=False),
    sa.CheckConstraint("status IN ('recorded', 'refused')", name=op.f('ck_labelstudio_annotation_status')),
    sa.ForeignKeyConstraint(['item_id'], ['review_item.id'], name=op.f('fk_labelstudio_annotation_item_id_review_item')),
    sa.ForeignKeyConstraint(['verdict_id'], ['verdict.id'], name=op.f('fk_labelstudio_annotation_verdict_id_verdict')),
    sa.PrimaryKeyConstraint('annotation_id', name=op.f('pk_labelstudio_annotation'))
    )
    with op.batch_alter_table('labelstudio_annotation', schema=None) as batch_op:
        batch_op.create_index('ix_labelstudio_annotation_item', ['item_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('labelstudio_annotation', schema=None) as batch_op:
        batch_op.drop_index('ix_labelstudio_annotation_item')

    op.drop_table('labelstudio_annotation')
    op.drop_table('labelstudio_task')
    op.drop_table('labelstudio_reviewer')
    op.drop_table('labelstudio_sync')
    op.drop_table('labelstudio_project')
