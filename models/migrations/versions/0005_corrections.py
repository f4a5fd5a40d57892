"""corrections of tags by heads and trainers

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 02:00:00

A new table only (issue 9: learning from the people who use it).
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'corrections',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('call_id', sa.String(length=200), nullable=False),
        sa.Column('segment', sa.Integer(), nullable=False),
        sa.Column('field', sa.String(length=32), nullable=False),
        sa.Column('value', sa.String(length=64), nullable=True),
        sa.Column('previous', sa.String(length=64), nullable=True),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('current', sa.Boolean(), nullable=False),
        sa.Column('username', sa.String(length=100), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['call_id'], ['calls.call_id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_corrections_call_id', 'corrections', ['call_id'])
    op.create_index('ix_corrections_target', 'corrections', ['call_id', 'segment', 'field'])


def downgrade() -> None:
    op.drop_index('ix_corrections_target', table_name='corrections')
    op.drop_index('ix_corrections_call_id', table_name='corrections')
    op.drop_table('corrections')
