"""the statistics mirror is rewritten by period: index (manager_id, period)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 10:00:00

Each statistics update now replaces only the periods it touched (all time, a week, a month) in
manager_stage_stats and manager_objection_stats; without this index the delete read every row of the
manager (all their weeks and months), a cost that grew with their history.
"""
from alembic import op


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_manager_stage_stats_period", "manager_stage_stats", ["manager_id", "period"])
    op.create_index("ix_manager_objection_stats_period", "manager_objection_stats", ["manager_id", "period"])


def downgrade() -> None:
    op.drop_index("ix_manager_objection_stats_period", table_name="manager_objection_stats")
    op.drop_index("ix_manager_stage_stats_period", table_name="manager_stage_stats")
