"""Handset consent: each content version names its merchant (the phone's per-merchant
consent needs one on every item), and opens reported by handsets are counted once per
(handset, counter) however often a phone re-sends its signed open record.

Refusals need no table: ``refused`` is a funnel stage (hub.schema.FUNNEL_STAGES), kept
in ``funnel_daily``/``funnel_totals`` like the others.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Time = sa.Float(precision=53)


def upgrade() -> None:
    with op.batch_alter_table("content_versions") as batch:
        batch.add_column(sa.Column("merchant", sa.String(64), nullable=False,
                                   server_default=""))
    op.create_table(
        "handset_opens",
        sa.Column("handset_id", sa.String(64), nullable=False),
        sa.Column("counter", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("item_key", sa.String(64), nullable=False),
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("received", Time, nullable=False),
        sa.PrimaryKeyConstraint("handset_id", "counter", name="pk_handset_opens"),
    )


def downgrade() -> None:
    op.drop_table("handset_opens")
    with op.batch_alter_table("content_versions") as batch:
        batch.drop_column("merchant")
