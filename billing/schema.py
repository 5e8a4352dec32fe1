"""The ledger's tables (SQLAlchemy Core), one schema for SQLite and PostgreSQL.

Money is integer fen, PV integer counts, times UTC.  Money rows are never updated in place:
a payment, an invoice event, a refund, a correction is a new row, and a state (an order
paid, an invoice returned) is derived from the rows that exist.  Non-money records that do
change (an enterprise's verification, a site's review) are updated, each change audited.
Alembic migrations in ``billing/migrations`` create exactly these tables.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: ledger times must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if not isinstance(value, datetime):
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Money = sa.BigInteger  # fen
Count = sa.BigInteger  # PV


def _id(name: str = "id") -> sa.Column[str]:
    return sa.Column(name, sa.String(64), primary_key=True)


def _at(name: str, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, UTCDateTime(), nullable=nullable)


partners = sa.Table(
    "partners",
    metadata,
    _id(),
    sa.Column("name", sa.String(200), nullable=False),
    _at("created_at"),
)

enterprises = sa.Table(
    "enterprises",
    metadata,
    _id(),
    sa.Column("id_type", sa.String(16), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("industry", sa.String(64), nullable=False),
    sa.Column("verified", sa.Boolean, nullable=False, default=False),
    sa.Column("partner_id", sa.String(64), sa.ForeignKey("partners.id"), nullable=True),
    sa.Column("flagged_abuse", sa.Boolean, nullable=False, default=False),
    sa.Column("flagged_violation", sa.Boolean, nullable=False, default=False),
    sa.Column("suspended", sa.Boolean, nullable=False, default=False),
    _at("created_at"),
    _at("updated_at"),
    sa.CheckConstraint("id_type IN ('qidian', 'wecom')", name="id_type"),
)

orders = sa.Table(
    "orders",
    metadata,
    _id(),
    sa.Column(
        "enterprise_id", sa.String(64), sa.ForeignKey("enterprises.id"), nullable=False, index=True
    ),
    sa.Column("kind", sa.String(16), nullable=False),  # pv | interop
    sa.Column("sku", sa.String(32), nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("amount_fen", Money, nullable=False),
    sa.Column("voucher_fen", Money, nullable=False, default=0),
    _at("created_at"),
    sa.CheckConstraint("quantity >= 1", name="quantity"),
    sa.CheckConstraint("amount_fen >= 0 AND voucher_fen >= 0", name="money"),
)

order_lines = sa.Table(  # what an order buys, as quoted; the order's amount is their sum
    "order_lines",
    metadata,
    sa.Column("order_id", sa.String(64), sa.ForeignKey("orders.id"), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("item", sa.String(64), nullable=False),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("unit_price_fen", Money, nullable=False),
    sa.Column("amount_fen", Money, nullable=False),
)

payments = sa.Table(
    "payments",
    metadata,
    _id(),
    sa.Column(
        "order_id", sa.String(64), sa.ForeignKey("orders.id"), nullable=False, unique=True
    ),  # an order is paid once
    sa.Column("cash_fen", Money, nullable=False),
    sa.Column("reference", sa.String(128), nullable=False),
    _at("paid_at"),
)

packages = sa.Table(
    "packages",
    metadata,
    _id(),  # the Redis bucket id
    sa.Column("order_id", sa.String(64), sa.ForeignKey("orders.id"), nullable=False, index=True),
    sa.Column(
        "enterprise_id", sa.String(64), sa.ForeignKey("enterprises.id"), nullable=False, index=True
    ),
    sa.Column("position", sa.Integer, nullable=False),  # 0.. within its order
    sa.Column("granted_pv", Count, nullable=False),
    sa.Column("paid_cash_fen", Money, nullable=False),
    _at("paid_at"),
    _at("expires_at"),
)

gifts = sa.Table(
    "gifts",
    metadata,
    _id(),  # the Redis bucket id
    sa.Column(
        "enterprise_id", sa.String(64), sa.ForeignKey("enterprises.id"), nullable=False, index=True
    ),
    sa.Column("order_id", sa.String(64), sa.ForeignKey("orders.id"), nullable=True, index=True),
    sa.Column("granted_pv", Count, nullable=False),
    sa.Column("reason", sa.String(500), nullable=False),
    _at("granted_at"),
    _at("expires_at"),
)

adjustments = sa.Table(
    "adjustments",
    metadata,
    _id(),
    sa.Column(
        "enterprise_id", sa.String(64), sa.ForeignKey("enterprises.id"), nullable=False, index=True
    ),
    sa.Column("bucket_id", sa.String(128), nullable=False, index=True),
    sa.Column("delta_pv", Count, nullable=False),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    _at("created_at"),
)

invoice_events = sa.Table(
    "invoice_events",
    metadata,
    _id(),
    sa.Column("order_id", sa.String(64), sa.ForeignKey("orders.id"), nullable=False, index=True),
    sa.Column("event", sa.String(16), nullable=False),  # issued | returned
    sa.Column("number", sa.String(64), nullable=False),
    _at("created_at"),
)

usage_batches = sa.Table(
    "usage_batches",
    metadata,
    sa.Column("gateway_id", sa.String(128), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("stream_id", sa.String(64), nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("pv", Count, nullable=False),
    _at("recorded_at"),
    sa.Index(None, "recorded_at"),  # purged by age (billing/retention.py)
)

usage = sa.Table(
    "usage",
    metadata,
    sa.Column("enterprise_id", sa.String(64), primary_key=True),
    sa.Column("bucket_id", sa.String(128), primary_key=True),
    sa.Column("hour", UTCDateTime(), primary_key=True),
    sa.Column("pv", Count, nullable=False),
)

reconciliations = sa.Table(
    "reconciliations",
    metadata,
    _id(),
    sa.Column("enterprise_id", sa.String(64), nullable=False, index=True),
    sa.Column("bucket_id", sa.String(128), nullable=False),
    sa.Column("ledger_used", Count, nullable=False),
    sa.Column("redis_used", Count, nullable=False),
    sa.Column("delta_pv", Count, nullable=False),
    sa.Column("reason", sa.String(500), nullable=False),
    _at("created_at"),
)

expirations = sa.Table(
    "expirations",
    metadata,
    sa.Column("bucket_id", sa.String(128), primary_key=True),
    sa.Column("enterprise_id", sa.String(64), nullable=False, index=True),
    sa.Column("cancelled_pv", Count, nullable=False),
    _at("expired_at"),
    _at("recorded_at"),
)

refunds = sa.Table(
    "refunds",
    metadata,
    _id(),
    sa.Column("idempotency_key", sa.String(128), nullable=False, unique=True),
    sa.Column("order_id", sa.String(64), sa.ForeignKey("orders.id"), nullable=False, index=True),
    sa.Column("enterprise_id", sa.String(64), nullable=False, index=True),
    sa.Column("package_ids", sa.JSON, nullable=False),
    # The order's gifts still live when the request was accepted: this refund voids them, so
    # their re-charge is its own (NULL: accepted before migration 0004 — all the gifts).
    sa.Column("voided_gifts", sa.JSON, nullable=True),
    sa.Column("actor", sa.String(128), nullable=False),
    _at("created_at"),
)

refund_lines = sa.Table(
    "refund_lines",
    metadata,
    sa.Column("refund_id", sa.String(64), sa.ForeignKey("refunds.id"), primary_key=True),
    # Unique on its own too: a package is refunded once, whatever the request.
    sa.Column("package_id", sa.String(128), primary_key=True, unique=True),
    sa.Column("paid_cash_fen", Money, nullable=False),
    sa.Column("used_before", Count, nullable=False),
    sa.Column("recharged_pv", Count, nullable=False),
    sa.Column("used_after", Count, nullable=False),
    sa.Column("refund_fen", Money, nullable=False),
)

refund_completions = sa.Table(
    "refund_completions",
    metadata,
    sa.Column("refund_id", sa.String(64), sa.ForeignKey("refunds.id"), primary_key=True),
    sa.Column("total_fen", Money, nullable=False),
    _at("completed_at"),
)

balance_entries = sa.Table(  # the payer's account balance: refunds land here
    "balance_entries",
    metadata,
    _id(),
    sa.Column("enterprise_id", sa.String(64), nullable=False, index=True),
    sa.Column("amount_fen", Money, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("reference", sa.String(64), nullable=False, unique=True),
    _at("created_at"),
)

sites = sa.Table(
    "sites",
    metadata,
    sa.Column("key", sa.String(400), primary_key=True),  # host + path prefix
    sa.Column(
        "enterprise_id", sa.String(64), sa.ForeignKey("enterprises.id"), nullable=False, index=True
    ),
    sa.Column("definition", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("review_note", sa.String(500), nullable=False, default=""),
    _at("updated_at"),
)

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    _id(),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("role", sa.String(128), nullable=False),
    sa.Column("label", sa.String(200), nullable=False, default=""),
    _at("created_at"),
    _at("revoked_at", nullable=True),
)

idempotency_records = sa.Table(
    "idempotency_records",
    metadata,
    sa.Column("actor", sa.String(128), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    _at("created_at"),
    sa.Index(None, "created_at"),  # purged by age (billing/retention.py)
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    _at("at"),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("enterprise_id", sa.String(64), nullable=True, index=True),
    sa.Column("before", sa.JSON, nullable=True),
    sa.Column("after", sa.JSON, nullable=True),
    sa.Column("reason", sa.String(500), nullable=False, default=""),
    sa.Column("request_id", sa.String(64), nullable=False, default=""),
)

# Alerts (docs/rules.md §4, docs/architecture.md §5): settings and channels per enterprise,
# the state per (enterprise, kind, subject) that one conditional UPDATE flips, and the
# transactional outbox — an event and one delivery per channel, each attempt recorded.

alert_settings = sa.Table(
    "alert_settings",
    metadata,
    sa.Column("enterprise_id", sa.String(64), sa.ForeignKey("enterprises.id"), primary_key=True),
    sa.Column("threshold_pv", Count, nullable=False),  # 0: no low-balance alert
    sa.Column("expiry_reminder_days", sa.JSON, nullable=False),
    # Bumped by every change: an evaluator holding an older version flips no state.
    sa.Column("version", sa.Integer, nullable=False),
    _at("next_due_at", nullable=True),  # when a time-driven kind may change next
    _at("updated_at"),
    sa.CheckConstraint("threshold_pv >= 0", name="threshold_pv"),
)

alert_channels = sa.Table(
    "alert_channels",
    metadata,
    _id(),
    sa.Column(
        "enterprise_id", sa.String(64), sa.ForeignKey("enterprises.id"), nullable=False, index=True
    ),
    sa.Column("type", sa.String(16), nullable=False),  # webhook | wecom_robot | wecom_app
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("config", sa.JSON, nullable=False),  # the fields that are not secret
    # The webhook's signing secret, the robot's key or the app's secret: never shown in full.
    sa.Column("secret", sa.String(256), nullable=False),
    sa.Column("previous_secret", sa.String(256), nullable=True),  # during a rotation overlap
    _at("previous_secret_until", nullable=True),
    sa.Column("disabled_reason", sa.String(500), nullable=False, default=""),
    _at("created_at"),
    _at("updated_at"),
)

alert_states = sa.Table(
    "alert_states",
    metadata,
    sa.Column("enterprise_id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(64), primary_key=True),
    sa.Column("subject", sa.String(200), primary_key=True),  # "" for enterprise-wide kinds
    sa.Column("state", sa.String(64), nullable=False),
    sa.Column("observed_ms", sa.BigInteger, nullable=False),  # the observation that set it
    _at("changed_at"),
)

alert_events = sa.Table(
    "alert_events",
    metadata,
    _id(),  # the receiver's de-duplication key: webhook-id
    sa.Column("enterprise_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("subject", sa.String(200), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    _at("occurred_at"),
    _at("created_at"),
    sa.Index(None, "enterprise_id", "occurred_at"),
    sa.Index(None, "kind", "created_at"),  # the relay's are purged by age
)

alert_deliveries = sa.Table(
    "alert_deliveries",
    metadata,
    _id(),
    sa.Column(
        "event_id", sa.String(64), sa.ForeignKey("alert_events.id"), nullable=False, index=True
    ),
    sa.Column("enterprise_id", sa.String(64), nullable=False),
    sa.Column("channel_id", sa.String(64), nullable=False),
    sa.Column("channel_type", sa.String(16), nullable=False),
    sa.Column("target", sa.String(64), nullable=False),  # rate-limit key (a robot's key hash)
    sa.Column("status", sa.String(16), nullable=False),  # pending | sent | failed | disabled
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("schedule_pos", sa.Integer, nullable=False),  # failures since the last (re)start
    _at("next_attempt_at"),
    sa.Column("lease_owner", sa.String(128), nullable=True),
    _at("lease_until", nullable=True),
    sa.Column("last_error", sa.String(500), nullable=False, default=""),
    _at("sent_at", nullable=True),
    _at("created_at"),
    _at("updated_at"),
    sa.Index(None, "status", "next_attempt_at"),
)

alert_attempts = sa.Table(
    "alert_attempts",
    metadata,
    sa.Column("delivery_id", sa.String(64), sa.ForeignKey("alert_deliveries.id"), primary_key=True),
    sa.Column("number", sa.Integer, primary_key=True),
    sa.Column("target", sa.String(64), nullable=False),
    sa.Column("worker", sa.String(128), nullable=False),
    _at("started_at"),
    sa.Column("duration_ms", sa.Integer, nullable=True),  # NULL while in flight
    # sent | retry | failed | disabled | interrupted (its worker died); NULL while in flight
    sa.Column("outcome", sa.String(16), nullable=True),
    sa.Column("status_code", sa.Integer, nullable=True),
    sa.Column("error", sa.String(500), nullable=False, default=""),
    sa.Column("response", sa.String(2000), nullable=False, default=""),  # an excerpt
    sa.Index(None, "target", "started_at"),
)

# The interop and WeCom relay tables (docs/rules.md §1.2) are their package's, on this metadata;
# imported last, so the schema is whole wherever this module is imported.
from billing.interop import tables as _interop_tables  # noqa: E402, F401
