"""The ledger tables of WeCom interop accounts and of the event relay (migration 0006).

They live on `billing.schema.metadata`, which imports this module at its end, so the schema
is one whole wherever it is used.  Interop orders are ordinary ``orders`` (kind ``interop``,
SKU ``wecom_interop``, quantity = accounts); what else they need is here.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from billing.schema import UTCDateTime, metadata


def _at(name: str, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, UTCDateTime(), nullable=nullable)


def _enterprise(index: bool = True) -> sa.Column[str]:
    return sa.Column(
        "enterprise_id", sa.String(64), sa.ForeignKey("enterprises.id"), nullable=False, index=index
    )


interop_orders = sa.Table(  # the terms of an interop order, as quoted
    "interop_orders",
    metadata,
    sa.Column("order_id", sa.String(64), sa.ForeignKey("orders.id"), primary_key=True),
    sa.Column("accounts", sa.Integer, nullable=False),
    sa.Column("years", sa.Integer, nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),  # graduated | volume
    sa.CheckConstraint("accounts >= 1 AND years >= 1", name="terms"),
)

licence_batches = sa.Table(  # one per paid interop order
    "licence_batches",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    _enterprise(),
    sa.Column(
        "order_id", sa.String(64), sa.ForeignKey("orders.id"), nullable=False, unique=True
    ),  # an order books one batch, however often its payment is confirmed
    sa.Column("accounts", sa.Integer, nullable=False),
    sa.Column("years", sa.Integer, nullable=False),
    _at("valid_from"),
    _at("valid_until"),
)

interop_state = sa.Table(  # per enterprise, created on first use
    "interop_state",
    metadata,
    sa.Column("enterprise_id", sa.String(64), sa.ForeignKey("enterprises.id"), primary_key=True),
    # Ops' overrides of the trial (NULL: registration + 3 months, the trial_accounts setting).
    _at("trial_ends_at", nullable=True),
    sa.Column("trial_accounts", sa.Integer, nullable=True),
    # Every period end up to here has taken its accounts away (`billing.interop.accounts`).
    _at("settled_through", nullable=True),
    _at("updated_at"),
)

interop_members = sa.Table(  # an account assigned to a member; never deleted
    "interop_members",
    metadata,
    # The assignment order: the members assigned last lose their accounts first.
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    _enterprise(),
    sa.Column("userid", sa.String(64), nullable=False),
    _at("assigned_at"),
    sa.Column("assigned_by", sa.String(128), nullable=False),
    _at("released_at", nullable=True),
    sa.Column("release_reason", sa.String(16), nullable=True),  # freed | expired | reduced
    sa.Index(
        "uq_interop_members_holding",
        "enterprise_id",
        "userid",
        unique=True,
        sqlite_where=sa.text("released_at IS NULL"),
        postgresql_where=sa.text("released_at IS NULL"),
    ),
)

wecom_settings = sa.Table(  # the callback's secrets and the customer's relay target
    "wecom_settings",
    metadata,
    sa.Column("enterprise_id", sa.String(64), sa.ForeignKey("enterprises.id"), primary_key=True),
    sa.Column("token", sa.String(64), nullable=False),
    sa.Column("encoding_aes_key", sa.String(43), nullable=False),
    sa.Column("corp_id", sa.String(64), nullable=False),
    sa.Column("relay_url", sa.String(2048), nullable=False),
    # Signs the relay's Standard Webhooks deliveries; shown once, when made.
    sa.Column("relay_secret", sa.String(64), nullable=False),
    _at("updated_at"),
)

wecom_events = sa.Table(  # every authenticated callback, with what became of it
    "wecom_events",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    _enterprise(index=False),  # the index below leads with it
    _at("received_at"),
    sa.Column("msg_key", sa.String(80), nullable=False),  # MsgId, or the content's hash
    sa.Column("msg_type", sa.String(64), nullable=False),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("change_type", sa.String(64), nullable=False),
    sa.Column("userid", sa.String(64), nullable=True),
    sa.Column("result", sa.String(24), nullable=False),  # relayed | dropped_inactive | duplicate
    sa.Column("message", sa.Text, nullable=False),  # the decrypted XML
    sa.Index("ix_wecom_events_enterprise_id_received_at", "enterprise_id", "received_at"),
    sa.Index(None, "received_at"),  # purged by age (billing/retention.py)
)

wecom_event_keys = sa.Table(  # a message seen: a retry within 24 h is a duplicate
    "wecom_event_keys",
    metadata,
    sa.Column("enterprise_id", sa.String(64), primary_key=True),
    sa.Column("msg_key", sa.String(80), primary_key=True),
    _at("first_seen_at"),
    sa.Index(None, "first_seen_at"),  # purged by age (billing/retention.py)
)
