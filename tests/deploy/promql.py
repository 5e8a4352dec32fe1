"""The metric names a PromQL expression reads, and the expressions of the dashboard and rules.

`metric_names` blanks out what holds no metric name — string literals, label matchers
``{…}``, ranges ``[…]``, the label lists of ``by``/``without``/``on``/``ignoring``/
``group_left``/``group_right`` and Grafana's ``$variables`` — then takes each remaining
identifier: one followed by ``(`` must be a PromQL function or aggregation (a misspelt
function fails too), a keyword is skipped, anything else is a metric name.  `resolve` maps
``_bucket``/``_sum``/``_count`` to their histogram's family using what a live ``/metrics``
declares (`exposition`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# fmt: off
FUNCTIONS = frozenset(
    [
        "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
        "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
        "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
        "delta", "deriv", "double_exponential_smoothing", "exp", "floor", "histogram_avg",
        "histogram_count", "histogram_fraction", "histogram_quantile", "histogram_stddev",
        "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta", "increase", "info",
        "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2",
        "mad_over_time", "max_over_time", "min_over_time", "minute", "month", "pi",
        "predict_linear", "present_over_time", "quantile_over_time", "rad", "rate", "resets",
        "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_by_label", "sort_by_label_desc",
        "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan",
        "tanh", "time", "timestamp", "vector", "year",
    ]
)
AGGREGATIONS = frozenset(
    [
        "avg", "bottomk", "count", "count_values", "group", "limit_ratio", "limitk", "max", "min",
        "quantile", "stddev", "stdvar", "sum", "topk",
    ]
)
KEYWORDS = frozenset(
    [
        "and", "atan2", "bool", "by", "end", "group_left", "group_right", "ignoring", "inf", "nan",
        "offset", "on", "or", "start", "unless", "without",
    ]
)
# fmt: on
# Rate-like functions take counters (or a histogram's _bucket/_sum/_count series).
COUNTER_FUNCTIONS = frozenset({"rate", "irate", "increase", "resets"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$[A-Za-z_]\w*")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


class PromQLError(ValueError):
    """An expression names a function PromQL does not have."""


def _blanked(expr: str) -> str:
    text = _STRING.sub('""', expr)
    text = _GRAFANA_VARIABLE.sub("0", text)
    text = _MATCHERS.sub("{}", text)
    text = _RANGE.sub("[]", text)
    return _LABEL_LIST.sub(" ", text)


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` reads."""
    text = _blanked(expr)
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        start, token = match.start(), match.group()
        if start and (text[start - 1].isalnum() or text[start - 1] in "._"):
            continue  # the exponent or unit of a number (1e3, 5m)
        rest = text[match.end() :].lstrip()
        if rest.startswith("("):
            if token not in FUNCTIONS | AGGREGATIONS:
                raise PromQLError(f"unknown function {token!r} in {expr!r}")
        elif token not in KEYWORDS:
            names.add(token)
    return names


def counter_arguments(expr: str) -> set[str]:
    """The metric names given straight to rate(), irate(), increase() or resets()."""
    text = _blanked(expr)
    pattern = r"\b(" + "|".join(COUNTER_FUNCTIONS) + r")\s*\(\s*([A-Za-z_:][A-Za-z0-9_:]*)"
    return {m.group(2) for m in re.finditer(pattern, text)}


def pvgate_mentions(expr: str) -> set[str]:
    """Every pvgate_* identifier in ``expr`` outside strings: each must be a metric name found."""
    return set(re.findall(r"\bpvgate_[A-Za-z0-9_:]*", _STRING.sub('""', expr)))


@dataclass
class Exposition:
    """What one ``/metrics`` text declares: ``# TYPE`` of each family, and sample names."""

    types: dict[str, str] = field(default_factory=dict)
    samples: set[str] = field(default_factory=set)

    def family(self, name: str) -> str | None:
        """The family ``name`` belongs to here (itself, or its histogram's), or None."""
        if name in self.types:
            return name
        for suffix in HISTOGRAM_SUFFIXES:
            base = name.removesuffix(suffix)
            if base != name and self.types.get(base) in ("histogram", "summary"):
                return base
        return name if name in self.samples else None  # a sample of no declared type

    def is_counter_like(self, name: str) -> bool:
        family = self.family(name)
        if family is None:
            return False
        return self.types.get(family) == "counter" or family != name


def exposition(text: str) -> Exposition:
    found = Exposition()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            found.types[name] = kind.strip()
        elif line and not line.startswith("#"):
            found.samples.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return found


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable of a dashboard."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        query = query.get("query", "") if isinstance(query, dict) else query
        match = re.fullmatch(r"\s*(label_values|query_result)\((.*)\)\s*", query, re.DOTALL)
        if match is None:
            raise PromQLError(f"variable {variable['name']}: unexpected query {query!r}")
        expr = match.group(2)
        if match.group(1) == "label_values":
            expr = expr.rsplit(",", 1)[0] if "," in expr else expr
        yield f"variable {variable['name']!r}", expr


def rule_queries(rules: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield f"rule {rule.get('alert') or rule.get('record')}", str(rule["expr"])


def grafana_to_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables set to plain values (for promtool)."""
    for variable, value in (
        ("$__rate_interval", "5m"),
        ("$__interval", "1m"),
        ("$__range", "1h"),
        ("$namespace", ".*"),
        ("$topn", "10"),
    ):
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable left in {expr!r}"
    return expr
