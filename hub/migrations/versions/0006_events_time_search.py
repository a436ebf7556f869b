"""Events: no index on ``received``; time filters find their ``pos`` bounds by a binary
search over the primary key instead (hub/db.py ``_pos_bound``). The index cost the
ingest's writer about a tenth of its rate (docs/performance.md, "Hub ingest").

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""
from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_events_received", table_name="events")


def downgrade() -> None:
    op.create_index("ix_events_received", "events", ["received"])
