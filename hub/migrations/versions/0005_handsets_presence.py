"""Handsets (customer accounts' hub-issued certificates) and presence codes (the code
path without NFC): hub/schema.py's section for revision 0005.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Time = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "handsets",
        sa.Column("handset_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("public_key", sa.String(64), nullable=False),
        sa.Column("issued_at", Time, nullable=False),
        sa.Column("expires_at", Time, nullable=False),
        sa.Column("replaced_at", Time),
        sa.Column("token_id", sa.String(32)),
        sa.PrimaryKeyConstraint("handset_id", name="pk_handsets"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_handsets_user_id_users"),
    )
    op.create_index("ix_handsets_user_id", "handsets", ["user_id"])
    op.create_table(
        "presence_offers",
        sa.Column("offer_id", sa.String(32), nullable=False),
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("hello", sa.Text, nullable=False),
        sa.Column("received", Time, nullable=False),
        sa.Column("expires", Time, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("user_id", sa.BigInteger),
        sa.Column("handset_id", sa.String(64)),
        sa.Column("claimed_at", Time),
        sa.Column("answer", sa.Text),
        sa.Column("answered_at", Time),
        sa.Column("reason", sa.String(32)),
        sa.Column("confirm", sa.String(64)),
        sa.Column("done_at", Time),
        sa.PrimaryKeyConstraint("offer_id", name="pk_presence_offers"),
        sa.CheckConstraint("state IN ('open', 'claimed', 'answered', 'relayed', 'confirmed', "
                           "'refused')", name="ck_presence_offers_state"),
    )
    op.create_index("ix_presence_offers_code_hash", "presence_offers", ["code_hash"])
    op.create_index("ix_presence_offers_state", "presence_offers", ["state"])
    op.create_index("ix_presence_offers_expires", "presence_offers", ["expires"])


def downgrade() -> None:
    op.drop_index("ix_presence_offers_expires", table_name="presence_offers")
    op.drop_index("ix_presence_offers_state", table_name="presence_offers")
    op.drop_index("ix_presence_offers_code_hash", table_name="presence_offers")
    op.drop_table("presence_offers")
    op.drop_index("ix_handsets_user_id", table_name="handsets")
    op.drop_table("handsets")
