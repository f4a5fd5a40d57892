"""call_steps.uncertain: steps shown only by the learned tagger's unsure turns

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 05:00:00

A step present only through turns under the model's probability threshold is kept on the call page
but left out of the manager's statistics (issue 9). The flag is stored with the step so that
statistics recomputed from SQL (``callqa report``, a replay check) leave out the same steps as the
live table.
"""
import sqlalchemy as sa
from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("call_steps") as batch:
        batch.add_column(sa.Column("uncertain", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("call_steps") as batch:
        batch.drop_column("uncertain")
