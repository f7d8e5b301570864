"""principals: the credential behind each verdict, and API keys bound to a reviewer

Revision ID: 0013
Revises: 0011
Create Date: 2026-12-06 04:30:00

- verdict.credential (String(128)): the door a verdict came through (`key:<id>`, `oidc:<hash>`,
  `os:<user>@<host>`, `labelstudio:<id>`); rows from before it get `direct:<reviewer id>`, the
  credential in-process callers get by default.  UNIQUE(item_id, credential): one credential
  can never supply two verdicts of one item, whatever names it gives.
- verdict.via_delegate: the verdict came through a credential acting for the reviewer.
- api_key.reviewer_id: the reviewer a key belongs to (NULL: a service or delegate key).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('verdict', schema=None) as batch_op:
        batch_op.add_column(sa.Column('credential', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('via_delegate', sa.Boolean(), nullable=True))
    op.execute("UPDATE verdict SET credential = 'direct:' || reviewer_id, via_delegate = false")
    with op.batch_alter_table('verdict', schema=None) as batch_op:
        batch_op.alter_column('credential', existing_type=sa.String(length=128), nullable=False)
        batch_op.alter_column('via_delegate', existing_type=sa.Boolean(), nullable=False)
        batch_op.create_unique_constraint(op.f('uq_verdict_item_credential'),
                                          ['item_id', 'credential'])
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reviewer_id', sa.String(length=64), nullable=True))
        batch_op.create_foreign_key(op.f('fk_api_key_reviewer_id_reviewer'), 'reviewer',
                                    ['reviewer_id'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('fk_api_key_reviewer_id_reviewer'), type_='foreignkey')
        batch_op.drop_column('reviewer_id')
    with op.batch_alter_table('verdict', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('uq_verdict_item_credential'), type_='unique')
        batch_op.drop_column('via_delegate')
        batch_op.drop_column('credential')
