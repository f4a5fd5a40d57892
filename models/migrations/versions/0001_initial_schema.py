"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-27 08:28:01.911100
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('managers',
    sa.Column('manager_id', sa.String(length=200), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('team_id', sa.String(length=200), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('manager_id')
    )
    with op.batch_alter_table('managers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_managers_team_id'), ['team_id'], unique=False)

    op.create_table('calls',
    sa.Column('call_id', sa.String(length=200), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('manager_id', sa.String(length=200), nullable=False),
    sa.Column('team_id', sa.String(length=200), nullable=True),
    sa.Column('direction', sa.String(length=16), nullable=False),
    sa.Column('client_number', sa.String(length=64), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('duration_s', sa.Float(), nullable=True),
    sa.Column('recording_url', sa.Text(), nullable=False),
    sa.Column('language', sa.String(length=8), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('failed_stage', sa.String(length=16), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('furthest_step', sa.String(length=32), nullable=True),
    sa.Column('metrics', sa.JSON(), nullable=True),
    sa.Column('asr', sa.JSON(), nullable=True),
    sa.Column('lead', sa.JSON(), nullable=True),
    sa.Column('event', sa.JSON(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['manager_id'], ['managers.manager_id'], ),
    sa.PrimaryKeyConstraint('call_id')
    )
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_calls_manager_id'), ['manager_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_calls_started_at'), ['started_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_calls_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_calls_team_id'), ['team_id'], unique=False)

    op.create_table('manager_stage_stats',
    sa.Column('manager_id', sa.String(length=200), nullable=False),
    sa.Column('step', sa.String(length=32), nullable=False),
    sa.Column('period', sa.String(length=16), nullable=False),
    sa.Column('calls', sa.Integer(), nullable=False),
    sa.Column('occurred', sa.Integer(), nullable=False),
    sa.Column('quality_passed', sa.Integer(), nullable=False),
    sa.Column('reached_next', sa.Integer(), nullable=False),
    sa.Column('share', sa.Float(), nullable=False),
    sa.Column('pass_rate', sa.Float(), nullable=True),
    sa.Column('conversion', sa.Float(), nullable=True),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('team_score', sa.Float(), nullable=True),
    sa.Column('gap', sa.Float(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['manager_id'], ['managers.manager_id'], ),
    sa.PrimaryKeyConstraint('manager_id', 'step', 'period')
    )
    op.create_table('call_steps',
    sa.Column('call_id', sa.String(length=200), nullable=False),
    sa.Column('step', sa.String(length=32), nullable=False),
    sa.Column('present', sa.Boolean(), nullable=False),
    sa.Column('first_at', sa.Float(), nullable=True),
    sa.Column('quality', sa.String(length=16), nullable=True),
    sa.Column('reasons', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['call_id'], ['calls.call_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('call_id', 'step')
    )
    op.create_table('flags',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('call_id', sa.String(length=200), nullable=False),
    sa.Column('idx', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('at', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['call_id'], ['calls.call_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('call_id', 'idx')
    )
    with op.batch_alter_table('flags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_flags_call_id'), ['call_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_flags_code'), ['code'], unique=False)

    op.create_table('objections',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('call_id', sa.String(length=200), nullable=False),
    sa.Column('idx', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('answered', sa.Boolean(), nullable=False),
    sa.Column('at', sa.Float(), nullable=True),
    sa.Column('answer', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['call_id'], ['calls.call_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('call_id', 'idx')
    )
    with op.batch_alter_table('objections', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_objections_call_id'), ['call_id'], unique=False)

    op.create_table('reviews',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('call_id', sa.String(length=200), nullable=False),
    sa.Column('flag_code', sa.String(length=64), nullable=False),
    sa.Column('verdict', sa.String(length=16), nullable=False),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('reviewer', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['call_id'], ['calls.call_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('call_id', 'flag_code')
    )
    with op.batch_alter_table('reviews', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reviews_call_id'), ['call_id'], unique=False)

    op.create_table('segments',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('call_id', sa.String(length=200), nullable=False),
    sa.Column('idx', sa.Integer(), nullable=False),
    sa.Column('speaker', sa.String(length=16), nullable=False),
    sa.Column('start', sa.Float(), nullable=False),
    sa.Column('end', sa.Float(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('avg_logprob', sa.Float(), nullable=True),
    sa.Column('step', sa.String(length=32), nullable=True),
    sa.Column('evidence', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['call_id'], ['calls.call_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('call_id', 'idx')
    )
    with op.batch_alter_table('segments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_segments_call_id'), ['call_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('segments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_segments_call_id'))

    op.drop_table('segments')
    with op.batch_alter_table('reviews', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reviews_call_id'))

    op.drop_table('reviews')
    with op.batch_alter_table('objections', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_objections_call_id'))

    op.drop_table('objections')
    with op.batch_alter_table('flags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_flags_code'))
        batch_op.drop_index(batch_op.f('ix_flags_call_id'))

    op.drop_table('flags')
    op.drop_table('call_steps')
    op.drop_table('manager_stage_stats')
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_calls_team_id'))
        batch_op.drop_index(batch_op.f('ix_calls_status'))
        batch_op.drop_index(batch_op.f('ix_calls_started_at'))
        batch_op.drop_index(batch_op.f('ix_calls_manager_id'))

    op.drop_table('calls')
    with op.batch_alter_table('managers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_managers_team_id'))

    op.drop_table('managers')
