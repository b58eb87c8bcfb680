"""The Prometheus text format writer (domain/prometheus.py), checked by an independent parser
of the format's rules; tests/cli/test_cli_stats.py parses `neruba stats --prometheus` with it."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neruba_cli.domain import prometheus
from neruba_cli.domain.prometheus import Family, Sample
from tests.support.prometheus import Parsed, parse_exposition

# --------------------------------------------------------------------------- properties

label_values = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40
) | st.sampled_from(['"', "\\", "\n", '\\"', "\\n", 'a\\"b\nc', "\\\\n"])


@given(label_values)
def test_label_escaping_round_trips(value: str) -> None:
    escaped = prometheus.escape_label_value(value)
    assert "\n" not in escaped
    assert prometheus.unescape_label_value(escaped) == value
    assert re.fullmatch(r'(?:[^"\\\n]|\\[\\"n])*', escaped)


@given(st.lists(label_values, min_size=1, max_size=3), st.integers(-(10**20), 10**20))
def test_rendered_samples_parse_back(values: list[str], number: int) -> None:
    labels = tuple((f"l{i}", value) for i, value in enumerate(values))
    family = Family(
        "neruba_x", "gauge", 'help with \\ and\nnewline "quoted"', (Sample(labels, number),)
    )
    text = prometheus.render([family])
    assert text.splitlines()[0] == '# HELP neruba_x help with \\\\ and\\nnewline "quoted"'
    types, samples = parse_exposition(text)
    assert types == {"neruba_x": "gauge"}
    assert samples == [Parsed("neruba_x", "neruba_x", dict(labels), Decimal(number))]


@given(st.decimals(allow_nan=False, allow_infinity=False, places=None))
def test_decimal_values_are_plain_and_exact(value: Decimal) -> None:
    text = prometheus.format_value(value)
    assert "E" not in text.upper() or text in ("+Inf", "-Inf")
    assert Decimal(text) == value
    float(text)


@given(st.datetimes(min_value=datetime(1970, 1, 1), timezones=st.just(UTC)))
def test_timestamps_are_exact_to_the_microsecond(moment: datetime) -> None:
    stamp = prometheus.timestamp_seconds(moment)
    back = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(stamp * 1_000_000))
    assert back == moment


def test_special_values_and_refusals() -> None:
    assert prometheus.format_value(Decimal("1E+3")) == "1000"
    assert prometheus.format_value(Decimal("0.10")) == "0.10"
    assert prometheus.format_value(Decimal("-0.000001")) == "-0.000001"
    assert prometheus.format_value(Decimal("Infinity")) == "+Inf"
    assert prometheus.format_value(Decimal("NaN")) == "NaN"
    with pytest.raises(TypeError):
        prometheus.format_value(0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        prometheus.format_value(True)
    with pytest.raises(ValueError, match="metric name"):
        prometheus.render([Family("1bad", "gauge", "x")])
    with pytest.raises(ValueError, match="label name"):
        prometheus.render([Family("ok", "gauge", "x", (Sample((("__x", "v"),), 1),))])
    with pytest.raises(ValueError, match="given twice"):
        prometheus.render([Family("ok", "gauge", "x"), Family("ok", "gauge", "y")])
    with pytest.raises(ValueError, match="suffix"):
        prometheus.render([Family("ok", "gauge", "x", (Sample((), 1, "_sum"),))])
    assert prometheus.render([]) == ""


def test_a_summary_renders_quantiles_sum_and_count() -> None:
    family = Family(
        "lag_seconds",
        "summary",
        "lag",
        (
            Sample((("quantile", "0.5"),), Decimal("1.5")),
            Sample((), Decimal("3.0"), "_sum"),
            Sample((), 2, "_count"),
        ),
    )
    types, samples = parse_exposition(prometheus.render([family]))
    assert types == {"lag_seconds": "summary"}
    assert [(s.name, s.family, s.value) for s in samples] == [
        ("lag_seconds", "lag_seconds", Decimal("1.5")),
        ("lag_seconds_sum", "lag_seconds", Decimal("3.0")),
        ("lag_seconds_count", "lag_seconds", Decimal(2)),
    ]


def test_the_parser_catches_what_the_format_forbids() -> None:
    with pytest.raises(AssertionError, match="before a TYPE"):
        parse_exposition('x{a="b"} 1\n')
    with pytest.raises(AssertionError, match="family split"):
        parse_exposition("# TYPE x gauge\n# TYPE y gauge\ny 1\nx 2\n")
    with pytest.raises(AssertionError, match="bad labels"):
        parse_exposition('# TYPE x gauge\nx{a="b"c"} 1\n')


def test_a_histogram_renders_buckets_sum_and_count() -> None:
    labels = (("route", "/v1/x"),)
    family = Family(
        "latency_seconds",
        "histogram",
        "latency",
        (
            Sample((*labels, ("le", "0.1")), 1, "_bucket"),
            Sample((*labels, ("le", "+Inf")), 2, "_bucket"),
            Sample(labels, Decimal("0.250000"), "_sum"),
            Sample(labels, 2, "_count"),
        ),
    )
    types, samples = parse_exposition(prometheus.render([family]))
    assert types == {"latency_seconds": "histogram"}
    assert [(s.name, s.family, s.labels.get("le"), s.value) for s in samples] == [
        ("latency_seconds_bucket", "latency_seconds", "0.1", Decimal(1)),
        ("latency_seconds_bucket", "latency_seconds", "+Inf", Decimal(2)),
        ("latency_seconds_sum", "latency_seconds", None, Decimal("0.25")),
        ("latency_seconds_count", "latency_seconds", None, Decimal(2)),
    ]
    with pytest.raises(ValueError, match="suffix"):  # a histogram sample has a suffix
        prometheus.render([Family("h", "histogram", "x", (Sample((), 1),))])
    with pytest.raises(AssertionError, match="without its suffix"):
        parse_exposition("# TYPE h histogram\nh 1\n")


def test_merge_makes_one_family_of_each_name() -> None:
    a = Family("events_total", "counter", "events", (Sample((("project", "a"),), 1),))
    b = Family("events_total", "counter", "events", (Sample((("project", "b"),), 2),))
    up = Family("up", "gauge", "up", (Sample((), 1),))
    merged = prometheus.merge([a, up, b])
    assert [f.name for f in merged] == ["events_total", "up"]
    assert [s.value for s in merged[0].samples] == [1, 2]
    _types, samples = parse_exposition(prometheus.render(merged))
    assert [s.labels.get("project") for s in samples] == ["a", "b", None]
    with pytest.raises(ValueError, match="given as counter and gauge"):
        prometheus.merge([a, Family("events_total", "gauge", "events")])
