"""The chart's default render, compared with a golden snapshot: unintended changes show.

tests/deploy/golden/default.yaml is what ``helm template shop helm/pvgate -n pvgate -f
tests/deploy/values/defaults.yaml`` prints (one ``# Source:`` document per template).  After
an intended change to the chart (or to the dashboard or rules it ships), update it and
review the diff:

    PVGATE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/deploy/test_golden.py
    git diff tests/deploy/golden/

The same variable also rewrites the gateway.config / billing.config parts of
helm/pvgate/values.schema.json from pvgate's settings dataclasses (test_chart.py checks them).
"""

from __future__ import annotations

import difflib
import json
import os

from tests.deploy import chart
from tests.deploy.settings_schema import config_schemas, strip_descriptions

UPDATE = os.environ.get("PVGATE_UPDATE_GOLDEN") == "1"


def test_default_render_matches_the_golden_snapshot():
    rendered = chart.snapshot(chart.render_file("defaults"))
    if UPDATE:
        chart.GOLDEN.write_text(rendered)
    golden = chart.GOLDEN.read_text() if chart.GOLDEN.exists() else ""
    if rendered != golden:
        diff = difflib.unified_diff(
            golden.splitlines(), rendered.splitlines(), "golden", "rendered", lineterm="", n=2
        )
        raise AssertionError(
            "the default render changed; if intended, run with PVGATE_UPDATE_GOLDEN=1:\n"
            + "\n".join(list(diff)[:200])
        )


def test_update_the_config_schemas_when_asked():
    """With PVGATE_UPDATE_GOLDEN=1: values.schema.json's config parts from the settings."""
    path = chart.CHART_DIR / "values.schema.json"
    schema = json.loads(path.read_text())
    expected = config_schemas()
    for component in ("gateway", "billing"):
        found = schema["properties"][component]["properties"]["config"]
        if UPDATE and strip_descriptions(found) != expected[component]:
            description = found.get("description")
            schema["properties"][component]["properties"]["config"] = {
                **expected[component],
                **({"description": description} if description else {}),
            }
    if UPDATE:
        path.write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n")
        chart.chart.cache_clear()
