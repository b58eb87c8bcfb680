"""The Prometheus text exposition format (version 0.0.4), written exactly.

What the format asks, and what this module guarantees:

- Each metric family is one block: `# HELP`, then `# TYPE`, then all its samples, so every
  sample follows the TYPE line of its family and no family is split.
- Metric names match `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names `[a-zA-Z_][a-zA-Z0-9_]*` and may
  not start with `__` (reserved); anything else is a programming error (ValueError).
- Label values escape backslash, double quote and line feed (`\\\\`, `\\"`, `\\n`); HELP text
  escapes backslash and line feed. Everything else, any Unicode included, is written as is.
- Values are written from ints and Decimals in plain decimal notation, never through a float:
  money converted from minor units stays exactly what the ledger holds (Prometheus parses
  it as a float when it scrapes; that is its business, the file says the exact amount).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal

MetricType = Literal["counter", "gauge", "summary", "histogram", "untyped"]
# The suffixes a sample of a family may carry, by the family's type.
SUFFIXES: dict[str, tuple[str, ...]] = {
    "summary": ("", "_sum", "_count"),
    "histogram": ("_bucket", "_sum", "_count"),
}

METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class Sample:
    labels: tuple[tuple[str, str], ...]
    value: int | Decimal
    suffix: str = ""  # summaries: "_sum", "_count"; histograms: "_bucket" too


@dataclass(frozen=True)
class Family:
    name: str
    type: MetricType
    help: str
    samples: tuple[Sample, ...] = field(default_factory=tuple)


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def unescape_label_value(escaped: str) -> str:
    """The inverse of escape_label_value (what a scraper reads back)."""
    out: list[str] = []
    chars = iter(escaped)
    for char in chars:
        if char != "\\":
            out.append(char)
            continue
        following = next(chars, "")
        out.append({"n": "\n", "\\": "\\", '"': '"'}.get(following, "\\" + following))
    return "".join(out)


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: int | Decimal) -> str:
    """Plain decimal notation, exact: `Decimal("1E+3")` is `1000`, `Decimal("0.10")` stays
    `0.10` (a currency's precision is information, and parses the same)."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise TypeError(f"metric values are ints or Decimals, not {type(value).__name__}")
    if isinstance(value, int):
        return str(value)
    if value.is_nan():
        return "NaN"
    if value.is_infinite():
        return "+Inf" if value > 0 else "-Inf"
    return format(value, "f")


def timestamp_seconds(moment: datetime) -> Decimal:
    """Seconds since the Unix epoch, exactly to the microsecond."""
    return Decimal((moment - _EPOCH) // _MICROSECOND).scaleb(-6)


def seconds(delta: timedelta) -> Decimal:
    return Decimal(delta // _MICROSECOND).scaleb(-6)


def render(families: Iterable[Family]) -> str:
    lines: list[str] = []
    seen: set[str] = set()
    for family in families:
        _check_name(family.name, seen)
        lines.append(f"# HELP {family.name} {escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for sample in family.samples:
            lines.append(_sample_line(family, sample))
    return "\n".join(lines) + "\n" if lines else ""


def _check_name(name: str, seen: set[str]) -> None:
    if not METRIC_NAME.match(name):
        raise ValueError(f"{name!r} is not a valid metric name")
    if name in seen:
        raise ValueError(f"metric family {name} given twice")
    seen.add(name)


def merge(families: Iterable[Family]) -> list[Family]:
    """Families of the same name made one (their samples in the order given), first seen
    first: the figures of several projects, or of several processes, in one exposition."""
    merged: dict[str, Family] = {}
    for family in families:
        seen = merged.get(family.name)
        if seen is None:
            merged[family.name] = family
        elif seen.type != family.type:
            raise ValueError(f"metric family {family.name} given as {seen.type} and {family.type}")
        else:
            merged[family.name] = Family(
                seen.name, seen.type, seen.help, seen.samples + family.samples
            )
    return list(merged.values())


def _sample_line(family: Family, sample: Sample) -> str:
    if sample.suffix not in SUFFIXES.get(family.type, ("",)):
        raise ValueError(f"suffix {sample.suffix!r} on a {family.type} ({family.name})")
    return f"{family.name}{sample.suffix}{_labels(sample.labels)} {format_value(sample.value)}"


def _labels(labels: Sequence[tuple[str, str]]) -> str:
    if not labels:
        return ""
    names = [name for name, _value in labels]
    if len(set(names)) != len(names):
        raise ValueError(f"label given twice in {names}")
    for name in names:
        if not LABEL_NAME.match(name) or name.startswith("__"):
            raise ValueError(f"{name!r} is not a valid label name")
    inner = ",".join(f'{name}="{escape_label_value(value)}"' for name, value in labels)
    return "{" + inner + "}"
