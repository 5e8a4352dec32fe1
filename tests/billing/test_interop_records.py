"""The row classes of `billing.interop.records` hold their tables column for column, and the
interop tables are part of the one schema the migrations create."""

from __future__ import annotations

import dataclasses

import pytest
import sqlalchemy as sa

from billing.interop import records, tables
from billing.schema import metadata

PAIRS = [
    (records.InteropOrderRow, tables.interop_orders),
    (records.LicenceBatchRow, tables.licence_batches),
    (records.InteropStateRow, tables.interop_state),
    (records.MemberRow, tables.interop_members),
    (records.WeComSettingsRow, tables.wecom_settings),
    (records.WeComEventRow, tables.wecom_events),
]


@pytest.mark.parametrize(("row_class", "table"), PAIRS, ids=[t.name for _, t in PAIRS])
def test_a_row_class_has_its_tables_columns_in_order(row_class: type, table: sa.Table):
    assert [f.name for f in dataclasses.fields(row_class)] == [c.name for c in table.columns]


def test_the_interop_tables_are_on_the_ledger_schema():
    for _, table in PAIRS:
        assert metadata.tables[table.name] is table
    assert metadata.tables["wecom_event_keys"] is tables.wecom_event_keys
