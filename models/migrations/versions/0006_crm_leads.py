"""CRM leads and deals joined to calls by phone

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 02:00:00

New tables crm_leads, crm_lead_events, crm_lead_phones, crm_lead_calls (issue 12), and calls.client_phone:
the client number in E.164, filled here for the calls already stored (region CALLQA_PHONE_REGION, default RU).
"""
import os

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('calls') as batch:
        batch.add_column(sa.Column('client_phone', sa.String(length=32), nullable=True))
        batch.create_index('ix_calls_client_phone', ['client_phone'])
    from pipeline.phones import normalize_phone
    region = os.environ.get('CALLQA_PHONE_REGION') or 'RU'
    conn = op.get_bind()
    calls = sa.table('calls', sa.column('call_id', sa.String), sa.column('client_number', sa.String),
                     sa.column('client_phone', sa.String))
    for call_id, number in conn.execute(sa.select(calls.c.call_id, calls.c.client_number)
                                        .where(calls.c.client_number.is_not(None))).all():
        phone = normalize_phone(number, region)
        if phone:
            conn.execute(calls.update().where(calls.c.call_id == call_id).values(client_phone=phone))
    op.create_table(
        'crm_leads',
        sa.Column('lead_key', sa.String(length=250), nullable=False),
        sa.Column('crm', sa.String(length=16), nullable=False),
        sa.Column('lead_id', sa.String(length=200), nullable=False),
        sa.Column('source', sa.String(length=200), nullable=True),
        sa.Column('temperature', sa.String(length=8), nullable=True),
        sa.Column('manager_id', sa.String(length=200), nullable=True),
        sa.Column('manager_name', sa.String(length=200), nullable=True),
        sa.Column('team_id', sa.String(length=200), nullable=True),
        sa.Column('title', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('lead_key'),
    )
    op.create_index('ix_crm_leads_manager_id', 'crm_leads', ['manager_id'])
    op.create_index('ix_crm_leads_team_id', 'crm_leads', ['team_id'])
    op.create_index('ix_crm_leads_created_at', 'crm_leads', ['created_at'])
    op.create_table(
        'crm_lead_events',
        sa.Column('event_id', sa.String(length=300), nullable=False),
        sa.Column('lead_key', sa.String(length=250), nullable=False),
        sa.Column('type', sa.String(length=32), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('data', sa.JSON(), nullable=False),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('event_id'),
    )
    op.create_index('ix_crm_lead_events_lead_key', 'crm_lead_events', ['lead_key'])
    op.create_table(
        'crm_lead_phones',
        sa.Column('lead_key', sa.String(length=250), nullable=False),
        sa.Column('phone', sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint('lead_key', 'phone'),
    )
    op.create_index('ix_crm_lead_phones_phone', 'crm_lead_phones', ['phone'])
    op.create_table(
        'crm_lead_calls',
        sa.Column('call_id', sa.String(length=200), nullable=False),
        sa.Column('lead_key', sa.String(length=250), nullable=False),
        sa.Column('phone', sa.String(length=32), nullable=False),
        sa.Column('linked_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['call_id'], ['calls.call_id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('call_id'),
    )
    op.create_index('ix_crm_lead_calls_lead_key', 'crm_lead_calls', ['lead_key'])
    op.create_index('ix_crm_lead_calls_phone', 'crm_lead_calls', ['phone'])


def downgrade() -> None:
    for table, indexes in (('crm_lead_calls', ('ix_crm_lead_calls_phone', 'ix_crm_lead_calls_lead_key')),
                           ('crm_lead_phones', ('ix_crm_lead_phones_phone',)),
                           ('crm_lead_events', ('ix_crm_lead_events_lead_key',)),
                           ('crm_leads', ('ix_crm_leads_created_at', 'ix_crm_leads_team_id',
                                          'ix_crm_leads_manager_id'))):
        for ix in indexes:
            op.drop_index(ix, table_name=table)
        op.drop_table(table)
    with op.batch_alter_table('calls') as batch:
        batch.drop_index('ix_calls_client_phone')
        batch.drop_column('client_phone')
