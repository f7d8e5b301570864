"""PDQ hash banks: content gains its PDQ hash and quality; bank entries become rows with an
id, a kind (sha256 | pdq), provenance, expiry, scope, state and a change sequence; matches
are recorded (flood protection, confirm / mark false)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 04:20:00

The old `bank_entry` table (primary key bank + sha256) is copied into `bank_hash` (an integer
id, which the PDQ index names entries by) and dropped; the downgrade copies the sha256 entries
back (PDQ entries have nowhere to go and are dropped).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import review.schema

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('content', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pdq', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('pdq_quality', sa.Integer(), nullable=True))
    op.create_table(
        'bank_hash',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('bank', sa.String(length=24), nullable=False),
        sa.Column('kind', sa.String(length=8), nullable=False),
        sa.Column('value', sa.String(length=64), nullable=False),
        sa.Column('quality', sa.Integer(), nullable=True),
        sa.Column('scope_account', sa.String(length=128), nullable=False),
        sa.Column('state', sa.String(length=12), nullable=False),
        sa.Column('source', sa.String(length=128), nullable=False),
        sa.Column('reason', sa.String(length=500), nullable=False),
        sa.Column('added_by', sa.String(length=128), nullable=False),
        sa.Column('added_at', review.schema.UTCDateTime(), nullable=False),
        sa.Column('expires_at', review.schema.UTCDateTime(), nullable=True),
        sa.Column('origin_item_id', sa.Integer(), nullable=True),
        sa.Column('seq', sa.BigInteger(), nullable=False),
        sa.CheckConstraint("bank IN ('cleared_benign', 'violating')", name=op.f('ck_bank_hash_bank')),
        sa.CheckConstraint("kind IN ('pdq', 'sha256')", name=op.f('ck_bank_hash_kind')),
        sa.CheckConstraint("state IN ('active', 'demoted', 'quarantined', 'removed')", name=op.f('ck_bank_hash_state')),
        sa.CheckConstraint('length(value) = 64', name=op.f('ck_bank_hash_value_len')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_bank_hash')),
        sa.UniqueConstraint('bank', 'kind', 'value', 'scope_account', name='uq_bank_hash_entry'),
    )
    with op.batch_alter_table('bank_hash', schema=None) as batch_op:
        batch_op.create_index('ix_bank_hash_kind_value', ['kind', 'value'], unique=False)
        batch_op.create_index(batch_op.f('ix_bank_hash_seq'), ['seq'], unique=False)
    op.create_table(
        'bank_counter',
        sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('value', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_bank_counter')),
    )
    op.create_table(
        'bank_match',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('entry_id', sa.Integer(), nullable=False),
        sa.Column('decision_id', sa.String(length=36), nullable=False),
        sa.Column('account_id', sa.String(length=128), nullable=False),
        sa.Column('distance', sa.Integer(), nullable=False),
        sa.Column('matched_at', review.schema.UTCDateTime(), nullable=False),
        sa.Column('verdict', sa.String(length=12), nullable=True),
        sa.Column('judged_by', sa.String(length=128), nullable=True),
        sa.CheckConstraint("verdict IS NULL OR verdict IN ('confirmed', 'false')", name=op.f('ck_bank_match_verdict')),
        sa.ForeignKeyConstraint(['decision_id'], ['decision.id'], name=op.f('fk_bank_match_decision_id_decision')),
        sa.ForeignKeyConstraint(['entry_id'], ['bank_hash.id'], name=op.f('fk_bank_match_entry_id_bank_hash')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_bank_match')),
    )
    with op.batch_alter_table('bank_match', schema=None) as batch_op:
        batch_op.create_index('ix_bank_match_entry_at', ['entry_id', 'matched_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_bank_match_decision_id'), ['decision_id'], unique=False)

    bind = op.get_bind()
    old = bind.execute(sa.text(
        "SELECT bank, sha256, source, note, created_at FROM bank_entry "
        "ORDER BY created_at, bank, sha256")).all()
    if old:
        bind.execute(sa.text(
            "INSERT INTO bank_hash (bank, kind, value, quality, scope_account, state, source, "
            "reason, added_by, added_at, expires_at, origin_item_id, seq) VALUES (:bank, "
            "'sha256', :value, NULL, '', 'active', :source, :reason, :added_by, :added_at, "
            "NULL, NULL, :seq)"),
            [{"bank": r[0], "value": r[1], "source": r[2], "reason": r[3],
              "added_by": "unrecorded (before migration 0012)", "added_at": r[4], "seq": n}
             for n, r in enumerate(old, 1)])
    bind.execute(sa.text("INSERT INTO bank_counter (id, value) VALUES (1, :n)"), {"n": len(old)})
    with op.batch_alter_table('bank_entry', schema=None) as batch_op:
        batch_op.drop_index('ix_bank_entry_sha256')
    op.drop_table('bank_entry')


def downgrade() -> None:
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
    bind = op.get_bind()
    rows = bind.execute(sa.text(
        "SELECT bank, value, min(source), min(reason), min(added_at) FROM bank_hash "
        "WHERE kind = 'sha256' AND state = 'active' GROUP BY bank, value")).all()
    if rows:
        bind.execute(sa.text(
            "INSERT INTO bank_entry (bank, sha256, source, note, created_at) "
            "VALUES (:bank, :sha, :source, :note, :at)"),
            [{"bank": r[0], "sha": r[1], "source": r[2], "note": r[3], "at": r[4]} for r in rows])
    op.drop_table('bank_match')
    op.drop_table('bank_counter')
    op.drop_table('bank_hash')
    # in place (SQLite 3.35+ drops a column itself): a batch rebuild of `content` cannot drop
    # the old table while uploads point at it
    op.drop_column('content', 'pdq_quality')
    op.drop_column('content', 'pdq')
