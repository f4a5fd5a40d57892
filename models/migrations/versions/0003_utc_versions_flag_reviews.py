"""instants in UTC, call versions, verdicts per flag, team in the stats mirror, outbox

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 22:10:00

- SQLite had stored started_at with its UTC offset dropped: it is recomputed from the stored event
  (calls that failed before tagging keep what they have: their event was never stored).
- reviews: one verdict per flag (code + moment), history kept (current); the old one-per-code rows
  are attached to the first flag of that code.
- manager_stage_stats gains team_id in its key and score_sq; it is a mirror of the worker's live table
  and is refilled as managers' calls arrive, so it is recreated empty here.
"""
from datetime import datetime, timezone
import json

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def _utc(text):
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    dt = dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)
    return dt


def _instant(v):
    # raw SQLite rows hand back text
    return _utc(v) if isinstance(v, str) else v


def upgrade() -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    with op.batch_alter_table('managers') as b:
        b.add_column(sa.Column('team_since', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('calls') as b:
        b.add_column(sa.Column('published_at', sa.DateTime(timezone=True), nullable=True))
        b.add_column(sa.Column('tagged_at', sa.DateTime(timezone=True), nullable=True))
        b.add_column(sa.Column('revision', sa.Integer(), nullable=False, server_default='0'))

    if sqlite:
        for call_id, event in bind.execute(sa.text("SELECT call_id, event FROM calls WHERE event IS NOT NULL")).all():
            ev = json.loads(event) if isinstance(event, str) else event
            if ev and ev.get("started_at"):
                bind.execute(sa.text("UPDATE calls SET started_at = :t WHERE call_id = :c"),
                             {"t": _utc(ev["started_at"]).strftime("%Y-%m-%d %H:%M:%S.%f"), "c": call_id})

    old = bind.execute(sa.text("SELECT id, call_id, flag_code, verdict, comment, reviewer, created_at FROM reviews")).all()
    first_at = {}
    for call_id, code, at in bind.execute(sa.text("SELECT call_id, code, at FROM flags ORDER BY call_id, idx")).all():
        first_at.setdefault((call_id, code), at)
    op.drop_table('reviews')
    reviews = op.create_table(
        'reviews',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('call_id', sa.String(length=200), nullable=False),
        sa.Column('flag_code', sa.String(length=64), nullable=False),
        sa.Column('flag_at', sa.Float(), nullable=True),
        sa.Column('current', sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column('verdict', sa.String(length=16), nullable=False),
        sa.Column('comment', sa.Text(), nullable=True),
        sa.Column('reviewer', sa.String(length=200), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['call_id'], ['calls.call_id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_reviews_call_id', 'reviews', ['call_id'])
    op.create_index('ix_reviews_flag', 'reviews', ['call_id', 'flag_code', 'flag_at'])
    if old:
        op.bulk_insert(reviews, [dict(id=r.id, call_id=r.call_id, flag_code=r.flag_code,
                                      flag_at=first_at.get((r.call_id, r.flag_code)), current=True,
                                      verdict=r.verdict, comment=r.comment, reviewer=r.reviewer,
                                      created_at=_instant(r.created_at)) for r in old])

    op.drop_table('manager_stage_stats')
    op.create_table(
        'manager_stage_stats',
        sa.Column('manager_id', sa.String(length=200), nullable=False),
        sa.Column('team_id', sa.String(length=200), nullable=False),
        sa.Column('step', sa.String(length=32), nullable=False),
        sa.Column('period', sa.String(length=16), nullable=False),
        sa.Column('calls', sa.Integer(), nullable=False),
        sa.Column('occurred', sa.Integer(), nullable=False),
        sa.Column('quality_passed', sa.Integer(), nullable=False),
        sa.Column('reached_next', sa.Integer(), nullable=False),
        sa.Column('scored', sa.Integer(), nullable=False),
        sa.Column('score_sum', sa.Float(), nullable=False),
        sa.Column('score_sq', sa.Float(), nullable=False),
        sa.Column('share', sa.Float(), nullable=False),
        sa.Column('pass_rate', sa.Float(), nullable=True),
        sa.Column('conversion', sa.Float(), nullable=True),
        sa.Column('score', sa.Float(), nullable=True),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['manager_id'], ['managers.manager_id']),
        sa.PrimaryKeyConstraint('manager_id', 'team_id', 'step', 'period'),
    )

    op.create_table(
        'outbox',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('key', sa.String(length=200), nullable=False),
        sa.Column('value', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_outbox_sent_at', 'outbox', ['sent_at'])


def downgrade() -> None:
    raise NotImplementedError("0003 cannot be undone: restore the database from a backup")
