"""retention: the ages that billing purges by are indexed

Revision ID: 0007_retention
Revises: 0006_interop
Create Date: 2026-12-01 09:40:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0007_retention"
down_revision = "0006_interop"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # billing/retention.py deletes by these columns every minute (docs/architecture.md §9).
    op.create_index(
        op.f("ix_idempotency_records_created_at"), "idempotency_records", ["created_at"]
    )
    op.create_index(op.f("ix_usage_batches_recorded_at"), "usage_batches", ["recorded_at"])
    op.create_index(op.f("ix_wecom_events_received_at"), "wecom_events", ["received_at"])
    op.create_index(
        op.f("ix_wecom_event_keys_first_seen_at"), "wecom_event_keys", ["first_seen_at"]
    )
    op.create_index(op.f("ix_alert_events_kind_created_at"), "alert_events", ["kind", "created_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_alert_events_kind_created_at"), table_name="alert_events")
    op.drop_index(op.f("ix_wecom_event_keys_first_seen_at"), table_name="wecom_event_keys")
    op.drop_index(op.f("ix_wecom_events_received_at"), table_name="wecom_events")
    op.drop_index(op.f("ix_usage_batches_recorded_at"), table_name="usage_batches")
    op.drop_index(op.f("ix_idempotency_records_created_at"), table_name="idempotency_records")
