"""The row classes of `billing.rows` hold their tables column for column."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from billing import rows, schema

PAIRS = [
    (rows.EnterpriseRow, schema.enterprises),
    (rows.OrderRow, schema.orders),
    (rows.OrderLineRow, schema.order_lines),
    (rows.PaymentRow, schema.payments),
    (rows.PackageRow, schema.packages),
    (rows.GiftRow, schema.gifts),
    (rows.AdjustmentRow, schema.adjustments),
    (rows.RefundRequestRow, schema.refunds),
    (rows.RefundLineRow, schema.refund_lines),
    (rows.SiteRow, schema.sites),
]


@pytest.mark.parametrize(("row_class", "table"), PAIRS, ids=[t.name for _, t in PAIRS])
def test_a_row_class_has_its_tables_columns_in_order(row_class: type, table: sa.Table):
    assert [f.name for f in dataclasses.fields(row_class)] == [c.name for c in table.columns]


def test_from_row_ignores_other_columns_and_freezes_json_lists():
    at = datetime(2027, 1, 1, tzinfo=UTC)
    request = rows.RefundRequestRow.from_row(
        {
            "id": "ref_1",
            "idempotency_key": "k",
            "order_id": "ord_1",
            "enterprise_id": "e1",
            "package_ids": ["ord_1.p000"],
            "voided_gifts": None,  # accepted before migration 0004
            "actor": "ops",
            "created_at": at,
            "joined": "ignored",
        }
    )
    assert (request.package_ids, request.voided_gifts) == (("ord_1.p000",), None)
    site = rows.SiteRow.from_row(
        {
            "key": "a.test",
            "enterprise_id": "e1",
            "definition": {
                "host": "a.test",
                "path_prefix": "",
                "origin": "http://127.0.0.1:9",
                "include": ["/*"],
                "exclude": [],
            },
            "status": "pending",
            "review_note": "",
            "updated_at": at,
        }
    )
    assert (site.definition.include, site.definition.exclude) == (("/*",), ())
    with pytest.raises(dataclasses.FrozenInstanceError):
        site.status = "approved"  # type: ignore[misc]
