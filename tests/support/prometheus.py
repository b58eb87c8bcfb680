"""A strict reader of the Prometheus text exposition format, written from the format's rules
(only label unescaping comes from neruba_cli, and tests/unit/test_prometheus.py round-trips it):
what `neruba stats --prometheus` writes must parse here sample by sample."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from neruba_cli.domain import prometheus

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
_TYPES = {"counter", "gauge", "summary", "histogram", "untyped"}
_SUFFIXED = {
    "_sum": ("summary", "histogram"),
    "_count": ("summary", "histogram"),
    "_bucket": ("histogram",),
}


@dataclass(frozen=True)
class Parsed:
    name: str
    family: str
    labels: dict[str, str]
    value: Decimal


def parse_exposition(text: str) -> tuple[dict[str, str], list[Parsed]]:
    """Read a text exposition strictly: every sample after its family's TYPE line, each family
    in one block, label values unescaped, values parsed. Returns (types, samples)."""
    assert text.endswith("\n"), "the last line ends with a line feed"
    types: dict[str, str] = {}
    helps: set[str] = set()
    finished: set[str] = set()
    current: str | None = None
    samples: list[Parsed] = []
    for number, line in enumerate(text[:-1].split("\n"), start=1):
        where = f"line {number}: {line!r}"
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(_NAME, name) and name not in helps, where
            helps.add(name)
            continue
        if line.startswith("# TYPE "):
            _hash, _type, name, kind = line.split(" ")
            assert re.fullmatch(_NAME, name) and kind in _TYPES, where
            assert name not in types, f"second TYPE for {name}: {where}"
            if current is not None:
                finished.add(current)
            types[name], current = kind, name
            continue
        assert not line.startswith("#") and line.strip(), where
        match = _SAMPLE.match(line)
        assert match, where
        name, label_text, value_text = match.groups()
        family = name
        for suffix in ("_sum", "_count", "_bucket"):
            base = name.removesuffix(suffix)
            if name.endswith(suffix) and types.get(base) in _SUFFIXED[suffix]:
                family = base
        if types.get(family) == "histogram":
            assert name != family, f"a histogram sample without its suffix: {where}"
        assert family in types, f"sample before a TYPE line for its family: {where}"
        assert family == current and family not in finished, f"family split: {where}"
        labels: dict[str, str] = {}
        rest = label_text or ""
        while rest:
            found = _LABEL.match(rest)
            assert found, f"bad labels: {where}"
            label, escaped, _sep = found.groups()
            assert label not in labels and not label.startswith("__"), where
            labels[label] = prometheus.unescape_label_value(escaped)
            rest = rest[found.end() :]
        float(value_text)  # what Prometheus does with it
        samples.append(Parsed(name, family, labels, Decimal(value_text)))
    return types, samples
