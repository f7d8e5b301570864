"""audit chains: the audit log as 16 parallel hash chains instead of one

With one chain, every audited transaction in the system (claims, verdicts, records) queued on
the single head row from its audit event to its commit.  Each transaction now links its events
to a head no other transaction holds (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite, a single
writer, keeps using chain 1).  Existing events are chain 1, unchanged: their hashes still
verify.  More chains: insert more head rows (seq 0, the genesis hash).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

CHAINS = 16
GENESIS = "0" * 64


def upgrade() -> None:
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.add_column(sa.Column('chain', sa.Integer(), server_default='1', nullable=False))
        batch_op.drop_constraint(op.f('pk_audit_event'), type_='primary')
        batch_op.create_primary_key(op.f('pk_audit_event'), ['chain', 'seq'])
    with op.batch_alter_table('audit_head', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_audit_head_single_row'), type_='check')
        batch_op.create_check_constraint(op.f('ck_audit_head_chain_number'), 'id >= 1')
    head = sa.table("audit_head", sa.column("id"), sa.column("seq"), sa.column("hash"))
    op.bulk_insert(head, [{"id": n, "seq": 0, "hash": GENESIS} for n in range(2, CHAINS + 1)])


def downgrade() -> None:
    # only an empty or single-chain log can go back to one chain
    op.execute("DELETE FROM audit_head WHERE id > 1 AND seq = 0")
    with op.batch_alter_table('audit_head', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_audit_head_chain_number'), type_='check')
        batch_op.create_check_constraint(op.f('ck_audit_head_single_row'), 'id = 1')
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('pk_audit_event'), type_='primary')
        batch_op.create_primary_key(op.f('pk_audit_event'), ['seq'])
        batch_op.drop_column('chain')
