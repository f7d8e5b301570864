"""principals: the credential behind each verdict, and API keys bound to a reviewer

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 04:30:00

- verdict.credential (String(128)): the door a verdict came through (`key:<id>`, `oidc:<hash>`,
  `os:<user>@<host>`, `labelstudio:<id>`); rows from before it get `direct:<reviewer id>`, the
  credential in-process callers get by default.  A unique index on (item_id, credential): one
  credential can never supply two verdicts of one item, whatever names it gives.
- verdict.via_delegate: the verdict came through a credential acting for the reviewer.
- api_key.reviewer_id: the reviewer a key belongs to (NULL: a service or delegate key).

No table is rebuilt.  On SQLite a rebuild (Alembic's batch mode: copy, drop the old table,
rename) cannot work once rows of `action` point at `verdict`: with the foreign keys enforced,
dropping the old table orphans them (deferred, the orphans are still counted at COMMIT, since
the copy went into another table), renaming rewrites the children's references, and PRAGMA
foreign_keys cannot change inside the migration's transaction.  So the columns are added in
place (SQLite adds a NOT NULL column only with a DEFAULT: '' and false, which lookfirst never
relies on; every verdict names its credential), and the uniqueness is a unique index, on both
databases.  SQLite 3.35 or newer drops the columns again on downgrade.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

BACKFILL = "UPDATE verdict SET credential = 'direct:' || reviewer_id"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE verdict ADD COLUMN credential VARCHAR(128) NOT NULL DEFAULT ''")
        op.execute("ALTER TABLE verdict ADD COLUMN via_delegate BOOLEAN NOT NULL DEFAULT 0")
        op.execute(BACKFILL)
        op.execute("ALTER TABLE api_key ADD COLUMN reviewer_id VARCHAR(64) CONSTRAINT "
                   "fk_api_key_reviewer_id_reviewer REFERENCES reviewer (id)")
    else:
        op.add_column('verdict', sa.Column('credential', sa.String(length=128), nullable=True))
        op.add_column('verdict', sa.Column('via_delegate', sa.Boolean(), nullable=True))
        op.execute(BACKFILL + ", via_delegate = false")
        op.alter_column('verdict', 'credential', existing_type=sa.String(length=128),
                        nullable=False)
        op.alter_column('verdict', 'via_delegate', existing_type=sa.Boolean(), nullable=False)
        op.add_column('api_key', sa.Column('reviewer_id', sa.String(length=64), nullable=True))
        op.create_foreign_key(op.f('fk_api_key_reviewer_id_reviewer'), 'api_key', 'reviewer',
                              ['reviewer_id'], ['id'])
    op.create_index('uq_verdict_item_credential', 'verdict', ['item_id', 'credential'],
                    unique=True)


def downgrade() -> None:
    op.drop_index('uq_verdict_item_credential', table_name='verdict')
    if op.get_bind().dialect.name == "sqlite":
        for table, column in (('api_key', 'reviewer_id'), ('verdict', 'via_delegate'),
                              ('verdict', 'credential')):
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        return
    op.drop_constraint(op.f('fk_api_key_reviewer_id_reviewer'), 'api_key', type_='foreignkey')
    op.drop_column('api_key', 'reviewer_id')
    op.drop_column('verdict', 'via_delegate')
    op.drop_column('verdict', 'credential')
