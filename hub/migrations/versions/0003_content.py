"""Content: files by sha256, items with immutable versions, campaigns, targeting, node
groups, the
manifest last published to each node, and the funnel's daily counts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Time = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "content_files",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("media_type", sa.String(100), nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.PrimaryKeyConstraint("sha256", name="pk_content_files"),
    )
    op.create_table(
        "campaigns",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("schedule", sa.Text, nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("updated_at", Time, nullable=False),
        sa.Column("retired_at", Time),
        sa.PrimaryKeyConstraint("key", name="pk_campaigns"),
    )
    op.create_table(
        "campaign_targets",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("target_type", sa.String(8), nullable=False),
        sa.Column("value", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("key", "target_type", "value", name="pk_campaign_targets"),
        sa.ForeignKeyConstraint(["key"], ["campaigns.key"],
                                name="fk_campaign_targets_key_campaigns"),
        sa.CheckConstraint("target_type IN ('all', 'zone', 'group', 'node')",
                           name="ck_campaign_targets_target_type"),
    )
    op.create_index("ix_campaign_targets_target_type_value", "campaign_targets",
                    ["target_type", "value"])
    op.create_table(
        "content_items",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("current", sa.Integer, nullable=False),
        sa.Column("schedule", sa.Text, nullable=False),
        sa.Column("campaign", sa.String(64)),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("updated_at", Time, nullable=False),
        sa.Column("retired_at", Time),
        sa.PrimaryKeyConstraint("key", name="pk_content_items"),
        sa.ForeignKeyConstraint(["campaign"], ["campaigns.key"],
                                name="fk_content_items_campaign_campaigns"),
        sa.CheckConstraint("kind IN ('article', 'coupon', 'media', 'ticket', 'goods')",
                           name="ck_content_items_kind"),
    )
    op.create_index("ix_content_items_campaign", "content_items", ["campaign"])
    op.create_table(
        "content_versions",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("price_cents", sa.Integer, nullable=False),
        sa.Column("file_sha256", sa.String(64)),
        sa.Column("file_name", sa.String(255)),
        sa.Column("created_by", sa.String(80), nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.PrimaryKeyConstraint("key", "version", name="pk_content_versions"),
        sa.ForeignKeyConstraint(["key"], ["content_items.key"],
                                name="fk_content_versions_key_content_items"),
        sa.ForeignKeyConstraint(["file_sha256"], ["content_files.sha256"],
                                name="fk_content_versions_file_sha256_content_files"),
    )
    op.create_index("ix_content_versions_file_sha256", "content_versions", ["file_sha256"])
    op.create_table(
        "content_targets",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("target_type", sa.String(8), nullable=False),
        sa.Column("value", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("key", "target_type", "value", name="pk_content_targets"),
        sa.ForeignKeyConstraint(["key"], ["content_items.key"],
                                name="fk_content_targets_key_content_items"),
        sa.CheckConstraint("target_type IN ('all', 'zone', 'group', 'node')",
                           name="ck_content_targets_target_type"),
    )
    op.create_index("ix_content_targets_target_type_value", "content_targets",
                    ["target_type", "value"])
    op.create_table(
        "node_groups",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("name", "node_id", name="pk_node_groups"),
    )
    op.create_index("ix_node_groups_node_id", "node_groups", ["node_id"])
    op.create_table(
        "manifests",
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("serial", sa.BigInteger, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("items", sa.Integer, nullable=False),
        sa.Column("expires", sa.BigInteger, nullable=False),
        sa.Column("published_at", Time, nullable=False),
        sa.PrimaryKeyConstraint("node_id", name="pk_manifests"),
    )
    op.create_table(
        "funnel_daily",
        sa.Column("item_key", sa.String(64), nullable=False),
        sa.Column("day", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("n", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("item_key", "day", "node_id", "stage",
                                name="pk_funnel_daily"),
    )
    op.create_table(
        "funnel_totals",
        sa.Column("item_key", sa.String(64), nullable=False),
        sa.Column("day", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("n", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("item_key", "day", "stage", name="pk_funnel_totals"),
    )


def downgrade() -> None:
    op.drop_table("funnel_totals")
    op.drop_table("funnel_daily")
    op.drop_table("manifests")
    op.drop_table("node_groups")
    op.drop_table("content_targets")
    op.drop_table("content_versions")
    op.drop_table("content_items")
    op.drop_table("campaign_targets")
    op.drop_table("campaigns")
    op.drop_table("content_files")
