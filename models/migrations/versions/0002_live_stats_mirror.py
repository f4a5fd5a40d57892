"""live stats mirror: score counters, objection stats

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 08:40:23.372237
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('manager_objection_stats',
    sa.Column('manager_id', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('period', sa.String(length=16), nullable=False),
    sa.Column('raised', sa.Integer(), nullable=False),
    sa.Column('answered', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['manager_id'], ['managers.manager_id'], ),
    sa.PrimaryKeyConstraint('manager_id', 'kind', 'period')
    )
    with op.batch_alter_table('manager_stage_stats', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scored', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('score_sum', sa.Float(), nullable=False, server_default='0'))
        batch_op.drop_column('team_score')
        batch_op.drop_column('gap')



def downgrade() -> None:
    with op.batch_alter_table('manager_stage_stats', schema=None) as batch_op:
        batch_op.add_column(sa.Column('gap', sa.FLOAT(), nullable=True))
        batch_op.add_column(sa.Column('team_score', sa.FLOAT(), nullable=True))
        batch_op.drop_column('score_sum')
        batch_op.drop_column('scored')

    op.drop_table('manager_objection_stats')
