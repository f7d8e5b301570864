"""api_rate_bucket: buckets named by text, so reviewers' bearer tokens are limited as keys are

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08 10:00:00

The bucket's key becomes `bucket` (String(128), the primary key): `key:<id>` for an API key,
`oidc:<reviewer>` for a reviewer's OpenID Connect tokens (pipeline.apikeys).  No foreign key
to api_key any more: a bucket need not be a key's.  Creates exactly review.schema.ApiRateBucket
(a test compares the migrated schema with the metadata), UNLOGGED on PostgreSQL as in 0011.

The table is rebuilt, not altered (a primary key's type cannot change in place on SQLite), and
its few rows (one per key that has made a request) are carried over as `key:<id>`, so no key
gets a fresh burst from the upgrade.  The downgrade carries the key buckets back and drops the
token buckets (0014 has nowhere to keep them; they start full, as after a crash).
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

_KEY_BUCKET = re.compile(r"key:([0-9]+)")


def _unlogged() -> list[str]:
    return ["UNLOGGED"] if op.get_bind().dialect.name == "postgresql" else []


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT key_id, tokens, at FROM api_rate_bucket")).all()
    op.drop_table('api_rate_bucket')
    table = op.create_table('api_rate_bucket',
    sa.Column('bucket', sa.String(length=128), nullable=False),
    sa.Column('tokens', sa.Double(), nullable=False),
    sa.Column('at', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('bucket', name=op.f('pk_api_rate_bucket')),
    prefixes=_unlogged(),
    )
    if rows:
        op.bulk_insert(table, [{"bucket": f"key:{key_id}", "tokens": tokens, "at": at}
                               for key_id, tokens, at in rows])


def downgrade() -> None:
    bind = op.get_bind()
    keys: set[int] = set(bind.execute(sa.text("SELECT id FROM api_key")).scalars())
    rows: list[dict[str, object]] = []
    for bucket, tokens, at in bind.execute(
            sa.text("SELECT bucket, tokens, at FROM api_rate_bucket")).all():
        m = _KEY_BUCKET.fullmatch(str(bucket))
        if m is not None and int(m.group(1)) in keys:
            rows.append({"key_id": int(m.group(1)), "tokens": tokens, "at": at})
    op.drop_table('api_rate_bucket')
    table = op.create_table('api_rate_bucket',
    sa.Column('key_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('tokens', sa.Double(), nullable=False),
    sa.Column('at', sa.Double(), nullable=False),
    sa.ForeignKeyConstraint(['key_id'], ['api_key.id'], name=op.f('fk_api_rate_bucket_key_id_api_key')),
    sa.PrimaryKeyConstraint('key_id', name=op.f('pk_api_rate_bucket')),
    prefixes=_unlogged(),
    )
    if rows:
        op.bulk_insert(table, rows)
