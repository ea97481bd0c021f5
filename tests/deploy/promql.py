"""Which metric names a PromQL expression reads, and which names an exposition exports."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

# Parts of an expression that hold no metric names: strings, label matchers,
# range/subquery brackets and the label lists of grouping and matching modifiers.
_NOT_NAMES = re.compile(
    r'"(?:\\.|[^"\\])*"'
    r"|'(?:\\.|[^'\\])*'"
    r"|\{[^}]*\}"
    r"|\[[^\]]*\]"
    r"|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
)
_IDENTIFIER = re.compile(r"(?<![\w:.$])[A-Za-z_:][\w:]*")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right", "inf", "nan"})
_SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
}


def metric_names(expression: str) -> set[str]:
    """Metric names an expression selects (function names and keywords excluded)."""
    stripped = _NOT_NAMES.sub(" ", expression)
    names = set()
    for match in _IDENTIFIER.finditer(stripped):
        followed_by = stripped[match.end():].lstrip()[:1]
        if followed_by != "(" and match.group().lower() not in _KEYWORDS:
            names.add(match.group())
    return names


def exported_series_names(exposition: str) -> set[str]:
    """Every series name an exposition can carry, by family type: a labelled family
    exports its names even before its first child exists."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in _SERIES_SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names
