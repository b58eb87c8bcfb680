"""The pure comparison: matching, the reason taxonomy, tolerance, drift, percentiles, the
--fail-over threshold and the HTML report (domain/compare.py, domain/stats.py,
domain/report_html.py)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from neruba_cli.domain import compare as cmp
from neruba_cli.domain import report_html
from neruba_cli.domain.errors import InvalidInput, UsageError
from neruba_cli.domain.stats import nearest_rank, percent_of, percent_text

D = Decimal
OCT = (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))


def line(description: str, amount: str, **extra: object) -> cmp.SourceLine:
    return cmp.SourceLine(description=description, amount=D(amount), **extra)  # type: ignore[arg-type]


def side(customer: str, *lines: cmp.SourceLine, currency: str = "USD") -> cmp.CustomerSide:
    return cmp.CustomerSide(customer, currency, tuple(lines), (f"doc-{customer}",))


def fee(amount: str, full: str = "49", days: int = 31) -> cmp.SourceLine:
    return line("Pro base fee (in arrears)", amount, kind="base_fee", full_fee=D(full), days=days)


def usage(meter: str, amount: str, quantity: str) -> cmp.SourceLine:
    return line(meter, amount, kind="usage", meter=meter, quantity=D(quantity), service=OCT)


def assess_one(
    ours: cmp.CustomerSide | None,
    theirs: cmp.CustomerSide | None,
    tolerance: str = "0.01",
    late: dict[tuple[str, str], cmp.LateUsage] | None = None,
) -> cmp.CustomerResult:
    (result,) = cmp.assess(
        cmp.match([ours] if ours else [], [theirs] if theirs else []),
        tolerance=D(tolerance),
        late=late,
    )
    return result


# --------------------------------------------------------------------------- matching


def test_line_keys_fold_case_space_and_corrections() -> None:
    assert cmp.line_key("  Pro  Base fee\t(in advance) ") == "pro base fee (in advance)"
    assert cmp.line_key("tokens (correction)") == "tokens"
    assert cmp.line_key("tokens (correction) (correction)") == "tokens"
    assert cmp.line_key(None) == ""


def test_lines_match_by_description_then_by_meter_and_corrections_net_in() -> None:
    ours = [
        fee("49.00"),
        usage("api_calls", "12.00", "1200"),
        line(
            "api_calls (correction)",
            "1.00",
            kind="usage",
            meter="api_calls",
            quantity=D(100),
            service=OCT,
        ),
        line("Setup", "25.00", kind="charge"),
    ]
    theirs = [
        line("PRO base fee (in arrears)", "49.00"),
        line("API requests", "13.00", meter="api_calls", quantity=D(1300)),
        line("Support plan", "10.00"),
    ]
    pairs = {p.key: p for p in cmp.pair_lines(ours, theirs)}
    assert list(pairs) == ["pro base fee (in arrears)", "api_calls", "setup", "support plan"]
    api = pairs["api_calls"]
    assert api.ours is not None and api.theirs is not None
    assert (api.ours.amount, api.ours.quantity, api.theirs.amount) == (D("13.00"), D(1300), D(13))
    assert api.difference == 0 and api.description == "api_calls"
    assert pairs["setup"].theirs is None and pairs["setup"].difference == D("25.00")
    assert pairs["support plan"].ours is None and pairs["support plan"].difference == D("-10.00")


def test_customers_pair_by_key_and_a_customer_may_appear_once() -> None:
    pairings = cmp.match(
        [side("a", fee("1")), side("b", fee("2"))], [side("b", fee("2")), side("c", fee("3"))]
    )
    assert [(p.customer, p.ours is not None, p.theirs is not None) for p in pairings] == [
        ("a", True, False),
        ("b", True, True),
        ("c", False, True),
    ]
    with pytest.raises(ValueError, match="appears twice"):
        cmp.match([side("a"), side("a")], [])


# --------------------------------------------------------------------------- taxonomy


def test_rounding_is_one_minor_unit_per_line_in_each_currency() -> None:
    usd = assess_one(
        side("c", fee("49.00"), usage("m", "1.00", "1")),
        side("c", fee("49.01"), line("m", "1.01")),
        tolerance="0",
    )
    assert usd.status == "amount_differs" and usd.reason == "rounding"
    assert usd.difference == D("-0.02") and usd.drift == D("0.02")
    assert [r.reason for r in usd.differing_lines] == ["rounding", "rounding"]
    jpy = assess_one(
        side("c", line("x", "100", kind="charge"), currency="JPY"),
        side("c", line("x", "101"), currency="JPY"),
        tolerance="0",
    )
    assert jpy.reason == "rounding"
    kwd = assess_one(
        side("c", line("x", "1.000", kind="charge"), currency="KWD"),
        side("c", line("x", "1.002"), currency="KWD"),
        tolerance="0",
    )
    assert kwd.reason == "other"  # two fils is not a rounding


def test_proration_is_a_whole_number_of_days_of_the_fee() -> None:
    two_days_short = (D(49) * 29 / 31).quantize(D("0.01"))
    result = assess_one(
        side("c", fee("49.00")), side("c", line("Pro base fee (in arrears)", str(two_days_short)))
    )
    assert result.reason == "proration" and result.difference == D("49.00") - two_days_short
    odd = assess_one(side("c", fee("49.00")), side("c", line("Pro base fee (in arrears)", "47.00")))
    assert odd.reason == "other"
    assert not cmp.is_proration(D("49.00"), D(49), 31, D("0.01"))  # the whole period: not k < days
    assert not cmp.is_proration(D("1.58"), None, 31, D("0.01"))


@given(
    st.integers(min_value=1, max_value=100_000).map(lambda cents: D(cents) / 100),
    st.integers(min_value=28, max_value=31),
    st.data(),
)
def test_any_whole_days_of_a_fee_is_proration(
    fee_amount: Decimal, days: int, data: st.DataObject
) -> None:
    k = data.draw(st.integers(min_value=1, max_value=days - 1))
    difference = (fee_amount * k / days).quantize(D("0.01"), rounding=ROUND_HALF_EVEN)
    assume(difference > D("0.01"))
    assert cmp.is_proration(difference, fee_amount, days, D("0.01"))
    assert cmp.is_proration(-difference, fee_amount, days, D("0.01"))


def test_rounding_can_make_most_days_of_a_small_fee_look_like_all_of_it() -> None:
    # 21 days of a 0.02 fee over 28 is 0.015, which rounds to the whole 0.02
    assert cmp.is_proration(D("0.02"), D("0.02"), 28, D("0.01"))
    assert not cmp.is_proration(D("0.05"), D("0.02"), 28, D("0.01"))  # more than the fee


def test_late_events_explain_extra_usage_only_when_they_cover_the_excess() -> None:
    ours = side("c", usage("api_calls", "15.00", "1500"))
    theirs = side("c", line("api_calls", "12.00", meter="api_calls", quantity=D(1200)))
    pairings = cmp.match([ours], [theirs])
    (question,) = cmp.late_questions(pairings)
    assert (question.customer, question.key, question.meter, question.excess) == (
        "c",
        "api_calls",
        "api_calls",
        D(300),
    )
    assert (question.start, question.end) == OCT

    def reason(late: cmp.LateUsage) -> str | None:
        return assess_one(ours, theirs, late={("c", "api_calls"): late}).reason

    assert reason(cmp.LateUsage(300, D(300))) == "late_event"
    assert reason(cmp.LateUsage(5, None)) == "late_event"  # e.g. a max meter: any late event
    assert reason(cmp.LateUsage(299, D(299))) == "other"
    assert reason(cmp.LateUsage(0, D(0))) == "other"
    assert assess_one(ours, theirs).reason == "other"  # nobody asked the events
    fewer = side("c", line("api_calls", "18.00", meter="api_calls", quantity=D(1800)))
    assert cmp.late_questions(cmp.match([ours], [fewer])) == []  # ours is below theirs


def test_carried_late_usage_and_one_sided_lines() -> None:
    carried = line("Late usage from ACME-000001: tokens", "3.00", kind="usage", late=True)
    result = assess_one(
        side("c", fee("49.00"), carried, line("Setup", "20.00", kind="charge")),
        side("c", fee("49.00"), line("Support", "5.00")),
    )
    reasons = {r.pair.description: (r.status, r.reason) for r in result.differing_lines}
    assert reasons == {
        "Late usage from ACME-000001: tokens": ("only_in_ours", "late_event"),
        "Setup": ("only_in_ours", "missing_price_mapping"),
        "Support": ("only_in_theirs", "missing_price_mapping"),
    }
    assert result.reason == "missing_price_mapping"  # 25.00 of 28.00 is unmapped
    unitemized = assess_one(
        side("c", fee("49.00")), side("c", fee("49.00"), line("(rest)", "1.00", kind="unitemized"))
    )
    assert unitemized.reason == "other"


def test_the_dominant_reason_weighs_money_and_breaks_ties_by_taxonomy_order() -> None:
    def result(reason: str, amount: str) -> cmp.LineResult:
        pair = cmp.LinePair("k", None, None)
        return cmp.LineResult(pair, D(amount), "differs", reason)

    assert (
        cmp.dominant_reason([result("other", "5"), result("rounding", "0.01")], cmp.REASONS)
        == "other"
    )
    assert (
        cmp.dominant_reason([result("other", "2"), result("proration", "-2")], cmp.REASONS)
        == "proration"
    )
    assert cmp.dominant_reason([], cmp.REASONS) is None


# --------------------------------------------------------------------------- tolerance, drift


def test_tolerance_is_inclusive_and_what_it_hides_is_reported() -> None:
    inside = assess_one(side("c", fee("49.00")), side("c", fee("48.99")), tolerance="0.01")
    assert (inside.status, inside.drift, inside.tolerated, inside.reason) == (
        "matched",
        0,
        D("0.01"),
        None,
    )
    assert [r.reason for r in inside.differing_lines] == ["rounding"]  # still in lines.csv
    outside = assess_one(side("c", fee("49.00")), side("c", fee("48.98")), tolerance="0.01")
    assert (outside.status, outside.drift, outside.tolerated) == ("amount_differs", D("0.02"), 0)
    with pytest.raises(InvalidInput, match="negative"):
        cmp.assess([], tolerance=D("-1"))


def test_one_sided_and_currency_mismatched_customers() -> None:
    missing = assess_one(side("c", fee("49.00")), None)
    assert (missing.status, missing.reason, missing.difference, missing.drift) == (
        "only_in_ours",
        "missing_customer",
        D("49.00"),
        D("49.00"),
    )
    extra = assess_one(None, side("c", line("x", "10.00")))
    assert (extra.status, extra.difference, extra.drift) == ("only_in_theirs", D("-10.00"), D(10))
    currency = assess_one(side("c", fee("49.00")), side("c", fee("49.00"), currency="EUR"))
    assert (currency.status, currency.reason, currency.difference) == (
        "currency_differs",
        "currency_mismatch",
        None,
    )
    assert currency.drift == D("49.00") and currency.lines == ()


customer_amounts = st.lists(
    st.tuples(
        st.integers(min_value=-5_000, max_value=50_000),
        st.one_of(st.none(), st.integers(min_value=-5_000, max_value=50_000)),
    ),
    min_size=1,
    max_size=40,
)


@given(customer_amounts, st.integers(min_value=0, max_value=300))
def test_drift_totals_add_up_and_tolerance_decides_matching(
    amounts: list[tuple[int, int | None]], tolerance_cents: int
) -> None:
    tolerance = D(tolerance_cents) / 100
    ours, theirs = [], []
    for n, (mine, other) in enumerate(amounts):
        ours.append(side(f"c{n}", fee(str(D(mine) / 100))))
        if other is not None:
            theirs.append(side(f"c{n}", fee(str(D(other) / 100))))
    results = cmp.assess(cmp.match(ours, theirs), tolerance=tolerance)
    summary = cmp.summarize(results)["USD"]
    for result in results:
        assert result.drift >= 0 and result.difference is not None
        if result.theirs is None:
            assert result.status == "only_in_ours" and result.drift == abs(result.difference)
        elif abs(result.difference) <= tolerance:
            assert result.status == "matched" and result.drift == 0
        else:
            assert result.status == "amount_differs" and result.drift == abs(result.difference)
        assert sum((r.difference for r in result.lines), D(0)) == result.difference
    assert summary.drift == sum((r.drift for r in results), D(0))
    assert summary.net_difference == sum((r.difference or 0 for r in results), D(0))
    assert summary.tolerated == sum((r.tolerated for r in results), D(0))
    assert summary.p50 == nearest_rank([r.drift for r in results], 50)
    assert summary.p95 == nearest_rank([r.drift for r in results], 95)
    drifts = [r.drift for r in results]
    assert drifts[: len([r for r in results if r.differs])] == sorted(
        (r.drift for r in results if r.differs), reverse=True
    )


# --------------------------------------------------------------------------- percentiles


def test_nearest_rank_examples() -> None:
    values = [D(n) for n in range(1, 21)]
    assert nearest_rank(values, 50) == 10 and nearest_rank(values, 95) == 19
    assert nearest_rank(values, 100) == 20 and nearest_rank(values, 0) == 1
    assert nearest_rank([D(7)], 95) == 7 and nearest_rank([], 50) is None
    with pytest.raises(ValueError):
        nearest_rank(values, 101)


@given(
    st.lists(st.decimals(min_value=-(10**6), max_value=10**6, places=2), min_size=1, max_size=60),
    st.integers(min_value=1, max_value=100),
)
def test_nearest_rank_is_the_textbook_definition(values: list[Decimal], percent: int) -> None:
    result = nearest_rank(values, percent)
    assert result in values
    rank = math.ceil(percent * len(values) / 100)
    assert sum(1 for v in values if v <= result) >= rank  # at least P % are at or below it
    assert sum(1 for v in values if v < result) < rank  # and it is the smallest such value
    assert nearest_rank(values, min(percent + 1, 100)) >= result  # monotone in P


def test_percentages() -> None:
    assert percent_of(D(1), D(-4)) == 25 and percent_of(D(1), D(0)) is None
    assert percent_text(D("12.345")) == "12.34" and percent_text(None) is None


def test_carried_late_usage_never_nets_into_this_periods_line() -> None:
    sep = (datetime(2026, 9, 1, tzinfo=UTC), datetime(2026, 10, 1, tzinfo=UTC))
    carried = line(
        "tokens (correction)",
        "3.00",
        kind="usage",
        meter="tokens",
        quantity=D(300),
        service=sep,
        late=True,
    )
    ours = side("c", usage("tokens", "10.00", "1000"), carried)
    (pairing,) = cmp.match([ours], [side("c", usage("tokens", "10.00", "1000"))])
    by_late = {pair.ours.late: pair for pair in pairing.lines if pair.ours}
    assert by_late[False].ours is not None and by_late[False].ours.service == OCT
    assert by_late[True].ours is not None and by_late[True].ours.service == sep
    assert by_late[True].theirs is None
    result = assess_one(ours, side("c", usage("tokens", "10.00", "1000")))
    assert [(r.status, r.reason, r.difference) for r in result.differing_lines] == [
        ("only_in_ours", "late_event", D("3.00"))
    ]
    assert result.reason == "late_event"


def test_line_rows_are_largest_first_within_each_currency() -> None:
    results = cmp.assess(
        cmp.match(
            [
                side("a", line("x", "1.00"), line("y", "9.00")),
                side("b", line("x", "5.00"), currency="EUR"),
                side("c", line("x", "100.00")),
            ],
            [
                side("a", line("x", "0.00"), line("y", "0.00")),
                side("b", line("x", "0.00"), currency="EUR"),
                side("c", line("x", "50.00")),
            ],
        ),
        tolerance=D(0),
    )
    report = cmp.Report("compare", "2026-10", "file.csv", cmp.Labels(), D(0), tuple(results))
    rows = [(r["currency"], r["customer"], r["difference"]) for r in report.line_dicts()]
    assert rows == [
        ("EUR", "b", "5.00"),
        ("USD", "c", "50.00"),
        ("USD", "a", "9.00"),
        ("USD", "a", "1.00"),
    ]


# --------------------------------------------------------------------------- --fail-over


def test_fail_over_amounts_and_percentages() -> None:
    assert cmp.parse_threshold("25.00") == cmp.Threshold("25.00", D("25.00"), None)
    assert cmp.parse_threshold(" 2% ") == cmp.Threshold("2%", None, D(2))
    for bad in ("abc", "-1", "%", "NaN", "Infinity", "-2%"):
        with pytest.raises(UsageError, match="--fail-over"):
            cmp.parse_threshold(bad)
    results = cmp.assess(
        cmp.match(
            [side("a", fee("100.00")), side("b", fee("100.00"))],
            [side("a", fee("97.00")), side("b", fee("100.00"))],
        ),
        tolerance=D("0.01"),
    )
    summaries = cmp.summarize(results)  # drift 3.00 of 200.00: 1.5 %
    assert cmp.exceeds(cmp.parse_threshold("2.99"), summaries, 1)
    assert not cmp.exceeds(cmp.parse_threshold("3"), summaries, 1)
    assert cmp.exceeds(cmp.parse_threshold("1.49%"), summaries, 1)
    assert not cmp.exceeds(cmp.parse_threshold("1.5%"), summaries, 1)
    assert cmp.exceeds(cmp.parse_threshold("0"), {}, 1)  # 0: any reported difference
    assert not cmp.exceeds(cmp.parse_threshold("0%"), {}, 0)
    only_theirs = cmp.summarize(cmp.assess(cmp.match([], [side("x", fee("5"))]), tolerance=D(0)))
    assert cmp.exceeds(cmp.parse_threshold("50%"), only_theirs, 1)  # a share of nothing


# --------------------------------------------------------------------------- invoice lines


def test_invoice_lines_carry_fee_and_usage_evidence() -> None:
    document = [
        {
            "kind": "base_fee",
            "description": "Pro base fee (in arrears)",
            "amount": "26.87",
            "amount_exact": "26.870967741935",
            "proration": "17/31",
            "fee_period": {"start": "2026-10-01T00:00:00Z", "end": "2026-11-01T00:00:00Z"},
        },
        {
            "kind": "usage",
            "description": "api_calls",
            "meter": "api_calls",
            "quantity": "300",
            "amount": "3.00",
            "service": {"start": "2026-10-15T00:00:00Z", "end": "2026-11-01T00:00:00Z"},
        },
        {
            "kind": "usage",
            "description": "Late usage from X-1: api_calls",
            "meter": "api_calls",
            "quantity": "5",
            "amount": "0.05",
            "late_from": "X-1",
            "service": None,
        },
    ]
    fee_line, usage_line, late_line = cmp.invoice_lines(document, "ACME-000001")
    assert fee_line.days == 31 and fee_line.full_fee is not None
    assert abs(fee_line.full_fee - 49) < D("1e-9")
    assert usage_line.service == (datetime(2026, 10, 15, tzinfo=UTC), OCT[1])
    assert usage_line.quantity == 300 and usage_line.source == "ACME-000001"
    assert late_line.late and not usage_line.late and late_line.service is None


# --------------------------------------------------------------------------- reports


def sample_report() -> cmp.Report:
    ours = [side("<b>evil</b>", fee("49.00")), side("c2", fee("10.00")), side("c3", fee("5.00"))]
    theirs = [side("c2", fee("9.00")), side("c3", fee("5.00")), side("ghost", line("x", "1.50"))]
    results = cmp.assess(cmp.match(ours, theirs), tolerance=D("0.01"))
    return cmp.Report(
        "compare",
        "2026-10",
        "legacy.csv",
        cmp.Labels(),
        D("0.01"),
        tuple(results),
        cmp.parse_threshold("0"),
        ("a note",),
    )


def test_summary_counts_rates_money_and_the_largest_first() -> None:
    summary = sample_report().summary()
    assert (summary["customers"], summary["matched"], summary["differences"]) == (4, 1, 3)
    assert summary["match_rate"] == "25.00" and summary["fail_over_exceeded"] is True
    assert summary["statuses"] == {
        "matched": 1,
        "amount_differs": 1,
        "currency_differs": 0,
        "only_in_neruba": 1,
        "only_in_baseline": 1,
    }
    usd = summary["currencies"]["USD"]
    assert (usd["neruba_total"], usd["baseline_total"], usd["drift"]) == ("64.00", "15.50", "51.50")
    assert (usd["p50_drift"], usd["p95_drift"], usd["drift_percent"]) == ("1.00", "49.00", "80.47")
    assert [item["customer"] for item in summary["largest"]] == ["<b>evil</b>", "ghost", "c2"]
    assert summary["notes"] == ["a note"]


def test_html_is_self_contained_escaped_and_shows_the_numbers() -> None:
    report = sample_report()
    html = report_html.render(report.summary(), report.customer_dicts(), report.line_dicts())
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html and "<script" not in html
    assert "&lt;b&gt;evil&lt;/b&gt;" in html and "<b>evil</b>" not in html
    assert "http" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    for text in ("25.00%", "51.50", "80.47%", "+49.00", "-1.50", "missing_customer"):
        assert text in html, text
    assert html.count("<rect") == 3 + 3  # three bars and the legend's three swatches
