"""Comparing two billings of one period, customer by customer and line by line.

Pure: each side comes in as plain values (one `CustomerSide` per customer: its currency and
its lines) and the result is a `Report`. `neruba compare` puts what Neruba billed ("ours")
against a baseline ("theirs": a legacy system's CSV or the Stripe mirror); `neruba simulate`
puts a candidate catalog's invoices against the invoices actually issued. The services gather
the sides; nothing here reads a file or a database.

The rules, exactly:

- **Customers** are matched by the key the service gives them (Neruba's external id; a
  baseline's Stripe id is translated before it gets here). A customer on one side only is
  `only_in_<side>`.
- **Lines** are matched by their description, compared case-insensitively with runs of white
  space folded and a trailing " (correction)" dropped, so a correction nets into the line it
  corrects; our carried late usage (an earlier period's) stays a line of its own. A line of
  theirs that names a meter matches our usage line of that meter when its description matches
  nothing. Lines sharing a key are summed on each side.
- **Differences** are ours − theirs, exact Decimals (a missing side counts as 0). A customer
  whose totals differ by no more than the tolerance (major units, inclusive) is `matched`;
  what was tolerated is reported separately. Currencies that differ are `currency_differs`,
  whatever the amounts.
- **Drift** of a customer is the money at stake: 0 when matched, |difference| when the
  amounts differ, the one side's |total| when a customer is on one side only, and |our total|
  when currencies differ (amounts in two currencies do not subtract). Totals, percentiles and
  `--fail-over` are per currency.
- **Reasons** (`compare`), first that applies, per differing line:
  `missing_price_mapping` (a line only one side has; our carried late usage is `late_event`),
  `rounding` (|difference| <= one minor unit), `proration` (our base-fee line is off by
  k × fee / days of its fee period, k a whole number of days 1 <= k < days, within one minor
  unit), `late_event` (our usage quantity exceeds theirs and the events received after the
  period ended account for at least the excess), else `other`. A customer's reason is the
  reason holding the most |difference| among its lines (ties: the order of `REASONS`);
  `missing_customer` and `currency_mismatch` are customer-level reasons.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from neruba_cli.domain.errors import InvalidInput, UsageError
from neruba_cli.domain.invoice import plain_fee_description
from neruba_cli.domain.money import decimal_text, format_amount, quantum
from neruba_cli.domain.stats import nearest_rank, percent_of, percent_text

ZERO = Decimal(0)
CORRECTION_SUFFIX = " (correction)"

MATCHED = "matched"
AMOUNT_DIFFERS = "amount_differs"
CURRENCY_DIFFERS = "currency_differs"
ONLY_OURS = "only_in_ours"  # rendered as only_in_<ours label>
ONLY_THEIRS = "only_in_theirs"
LINE_DIFFERS = "differs"

REASONS = (
    "rounding",
    "proration",
    "late_event",
    "missing_price_mapping",
    "missing_customer",
    "currency_mismatch",
    "other",
)
SIMULATION_REASONS = ("rounding", "price_change", "new_charge", "dropped_charge", "new_customer")
PERCENTILES = (50, 95)
LARGEST = 10  # differences listed in the summary


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Labels:
    """What the two sides are called in statuses, JSON keys and column names."""

    ours: str = "neruba"
    theirs: str = "baseline"

    def status(self, status: str) -> str:
        if status == ONLY_OURS:
            return f"only_in_{self.ours}"
        if status == ONLY_THEIRS:
            return f"only_in_{self.theirs}"
        return status


@dataclass(frozen=True)
class SourceLine:
    """One line as one side states it; lines sharing a key are summed."""

    description: str
    amount: Decimal
    quantity: Decimal | None = None
    meter: str | None = None
    kind: str | None = None  # base_fee | usage | minimum | charge | unitemized; None: unknown
    full_fee: Decimal | None = None  # base_fee: the fee of a whole period
    days: int | None = None  # base_fee: days in its fee period
    service: tuple[datetime, datetime] | None = None  # usage: the window it measures
    late: bool = False  # ours: late usage of an earlier period carried onto this invoice
    source: str | None = None  # an invoice number, a Stripe id, "file.csv:12"


@dataclass(frozen=True)
class CustomerSide:
    customer: str
    currency: str
    lines: tuple[SourceLine, ...]
    documents: tuple[str, ...] = ()
    known: bool = True  # theirs: False when no customer of the project has this id

    @property
    def total(self) -> Decimal:
        return sum((line.amount for line in self.lines), ZERO)


@dataclass(frozen=True)
class Line:
    """The lines of one side sharing a key, summed."""

    key: str
    description: str
    amount: Decimal
    quantity: Decimal | None
    meter: str | None
    kind: str | None
    full_fee: Decimal | None
    days: int | None
    service: tuple[datetime, datetime] | None
    late: bool
    sources: tuple[str, ...]


@dataclass(frozen=True)
class LinePair:
    key: str
    ours: Line | None
    theirs: Line | None

    @property
    def difference(self) -> Decimal:
        return (self.ours.amount if self.ours else ZERO) - (
            self.theirs.amount if self.theirs else ZERO
        )

    @property
    def description(self) -> str:
        line = self.ours or self.theirs
        assert line is not None
        return line.description


@dataclass(frozen=True)
class Pairing:
    """One customer: both sides (either may be missing) and their lines paired."""

    customer: str
    ours: CustomerSide | None
    theirs: CustomerSide | None
    lines: tuple[LinePair, ...]

    @property
    def currency(self) -> str:
        side = self.ours or self.theirs
        assert side is not None
        return side.currency

    @property
    def same_currency(self) -> bool:
        return (
            self.ours is None or self.theirs is None or self.ours.currency == self.theirs.currency
        )


@dataclass(frozen=True)
class LateUsage:
    """Events of a usage line received after its period ended: how many, and their quantity
    as the meter aggregates it (None where a part cannot be split off: max, latest, ...)."""

    events: int
    quantity: Decimal | None

    def explains(self, excess: Decimal) -> bool:
        if self.events <= 0 or excess <= 0:
            return False
        return self.quantity is None or self.quantity >= excess


@dataclass(frozen=True)
class LateQuestion:
    """A usage line whose quantity exceeds the other side's: were the extra events late?"""

    customer: str
    key: str
    meter: str
    start: datetime
    end: datetime
    excess: Decimal


@dataclass(frozen=True)
class LineResult:
    pair: LinePair
    difference: Decimal
    status: str  # matched | differs | only_in_ours | only_in_theirs
    reason: str | None


@dataclass(frozen=True)
class CustomerResult:
    customer: str
    status: str
    currency: str
    ours: CustomerSide | None
    theirs: CustomerSide | None
    difference: Decimal | None  # ours − theirs; None when the currencies differ
    drift: Decimal
    tolerated: Decimal
    reason: str | None
    lines: tuple[LineResult, ...]

    @property
    def differs(self) -> bool:
        return self.status != MATCHED

    @property
    def differing_lines(self) -> tuple[LineResult, ...]:
        return tuple(line for line in self.lines if line.difference != 0)


@dataclass(frozen=True)
class Threshold:
    """`--fail-over`: an amount in major units (any currency) or a percentage of our total."""

    text: str
    amount: Decimal | None = None
    percent: Decimal | None = None


@dataclass(frozen=True)
class CurrencySummary:
    currency: str
    customers: int
    differences: int
    ours_total: Decimal
    theirs_total: Decimal
    drift: Decimal
    tolerated: Decimal
    p50: Decimal | None
    p95: Decimal | None

    @property
    def net_difference(self) -> Decimal:
        return self.ours_total - self.theirs_total

    @property
    def drift_percent(self) -> Decimal | None:
        return percent_of(self.drift, self.ours_total)

    @property
    def net_percent(self) -> Decimal | None:
        return percent_of(self.net_difference, self.theirs_total)


# --------------------------------------------------------------------------- taxonomy


LineClassifier = Callable[[LinePair, str, "LateUsage | None"], str]


@dataclass(frozen=True)
class Taxonomy:
    """How differences are explained: per line, and for customers on one side only."""

    classify: LineClassifier
    only_ours: str
    only_theirs: str
    currency: str
    order: tuple[str, ...]


def classify_line(pair: LinePair, currency: str, late: LateUsage | None) -> str:
    """`compare`'s probable reason for one differing line (see the module docstring)."""
    ours, theirs = pair.ours, pair.theirs
    if ours is not None and ours.late:
        return "late_event"
    if ours is None or theirs is None:
        present = ours or theirs
        if present is not None and present.kind == "unitemized":
            return "other"
        return "missing_price_mapping"
    difference = ours.amount - theirs.amount
    minor = quantum(currency)
    if abs(difference) <= minor:
        return "rounding"
    if ours.kind == "base_fee" and is_proration(difference, ours.full_fee, ours.days, minor):
        return "proration"
    if (
        ours.kind == "usage"
        and ours.quantity is not None
        and theirs.quantity is not None
        and late is not None
        and late.explains(ours.quantity - theirs.quantity)
    ):
        return "late_event"
    return "other"


def is_proration(
    difference: Decimal, fee: Decimal | None, days: int | None, minor: Decimal
) -> bool:
    """True when |difference| is k days' worth of `fee` (k = 1 .. days − 1), give or take one
    minor unit of rounding. The nearest k is clamped into that range before the tolerance is
    applied: on a small fee, rounding can make 27 days of 28 look like the whole fee."""
    if fee is None or days is None or fee == 0 or days < 2:
        return False
    daily = abs(fee) / days
    nearest = int((abs(difference) / daily).to_integral_value())
    k = min(max(nearest, 1), days - 1)
    return abs(abs(difference) - k * daily) <= minor


def classify_simulated(pair: LinePair, currency: str, late: LateUsage | None) -> str:
    """`simulate`'s reason for one line: the candidate prices it differently, adds it or
    drops it (or only rounds it differently)."""
    if pair.theirs is None:
        return "new_charge"
    if pair.ours is None:
        return "dropped_charge"
    if abs(pair.difference) <= quantum(currency):
        return "rounding"
    return "price_change"


COMPARE_TAXONOMY = Taxonomy(
    classify_line, "missing_customer", "missing_customer", "currency_mismatch", REASONS
)
SIMULATE_TAXONOMY = Taxonomy(
    classify_simulated, "new_customer", "dropped_charge", "currency_mismatch", SIMULATION_REASONS
)


# --------------------------------------------------------------------------- invoice lines


def invoice_lines(lines: Iterable[Mapping[str, Any]], source: str) -> list[SourceLine]:
    """The lines of a Neruba invoice document (`content["lines"]`) as comparable values."""
    result = []
    for line in lines:
        kind = line.get("kind")
        quantity = line.get("quantity")
        full_fee, days = (None, None)
        description = str(line.get("description") or line.get("meter") or kind or "")
        if kind == "base_fee":
            full_fee, days = _fee_evidence(line)
        service = _window(line.get("service")) if kind == "usage" else None
        result.append(
            SourceLine(
                description=description,
                amount=Decimal(line["amount"]),
                quantity=None if quantity is None else Decimal(quantity),
                meter=line.get("meter"),
                kind=kind,
                full_fee=full_fee,
                days=days,
                service=service,
                late=line.get("late_from") is not None,
                source=source,
            )
        )
    return result


def _fee_evidence(line: Mapping[str, Any]) -> tuple[Decimal | None, int | None]:
    """A base fee line's whole-period fee (amount / proration fraction) and its period's days."""
    window = _window(line.get("fee_period"))
    days = None
    if window is not None:
        days = round((window[1] - window[0]).total_seconds() / 86400)
    numerator, _, denominator = str(line.get("proration") or "1").partition("/")
    try:
        fraction_num, fraction_den = Decimal(numerator), Decimal(denominator or "1")
        exact = Decimal(str(line.get("amount_exact") or line["amount"]))
    except InvalidOperation:
        return None, days
    if fraction_num == 0:
        return None, days
    return exact * fraction_den / fraction_num, days


def _window(value: Any) -> tuple[datetime, datetime] | None:
    if not isinstance(value, Mapping) or not value.get("start") or not value.get("end"):
        return None
    try:
        start = datetime.fromisoformat(str(value["start"]).replace("Z", "+00:00"))
        end = datetime.fromisoformat(str(value["end"]).replace("Z", "+00:00"))
    except ValueError:
        return None
    return start, end


# --------------------------------------------------------------------------- matching


def line_key(text: str | None) -> str:
    """The matching key of a description or meter code; a base fee's days are left out
    (`invoice.plain_fee_description`), so this period's and the next period's fee are one
    line, as in a biller's export that names no days."""
    folded = plain_fee_description(" ".join((text or "").casefold().split()))
    while folded.endswith(CORRECTION_SUFFIX):
        folded = folded[: -len(CORRECTION_SUFFIX)].rstrip()
    return folded


def own_key(line: SourceLine) -> str:
    return line_key(line.description) or line_key(line.meter)


LATE_KEY_SUFFIX = " (late)"


def our_key(line: SourceLine) -> str:
    """Our line's key: its own, kept apart for carried late usage, which bills an earlier
    period and must not net into this period's line of the same description."""
    key = own_key(line)
    return key + LATE_KEY_SUFFIX if line.late else key


def group_lines(
    lines: Iterable[SourceLine], key_of: Callable[[SourceLine], str]
) -> dict[str, Line]:
    """Sum the lines sharing a key, keeping the first line's description and details."""
    grouped: dict[str, list[SourceLine]] = {}
    for line in lines:
        grouped.setdefault(key_of(line), []).append(line)
    result: dict[str, Line] = {}
    for key, members in grouped.items():
        first = members[0]
        quantities = [m.quantity for m in members]
        fee = next((m for m in members if m.kind == "base_fee" and m.full_fee is not None), None)
        windows = [m.service for m in members if m.service is not None]
        # A usage window spans only the lines of one period: our carried late lines are keyed
        # apart from this period's (`our_key`), and late lines of different periods have no
        # single window at all.
        service = None
        if windows and not any(m.late for m in members):
            service = (min(w[0] for w in windows), max(w[1] for w in windows))
        elif len(set(windows)) == 1:
            service = windows[0]
        result[key] = Line(
            key=key,
            description=first.description.removesuffix(CORRECTION_SUFFIX),
            amount=sum((m.amount for m in members), ZERO),
            quantity=(
                None
                if any(q is None for q in quantities)
                else sum((q for q in quantities if q is not None), ZERO)
            ),
            meter=first.meter,
            kind=first.kind,
            full_fee=None if fee is None else fee.full_fee,
            days=None if fee is None else fee.days,
            service=service,
            late=all(m.late for m in members),
            sources=tuple(dict.fromkeys(m.source for m in members if m.source)),
        )
    return result


def pair_lines(ours: Sequence[SourceLine], theirs: Sequence[SourceLine]) -> tuple[LinePair, ...]:
    """Our lines keyed by description; theirs by description when it names one of ours, else
    by meter (our usage line of that meter), else by their own description."""
    mine = group_lines(ours, our_key)
    usage_by_meter: dict[str, str] = {}
    for key, line in mine.items():
        if line.kind == "usage" and line.meter and not line.late:
            usage_by_meter.setdefault(line_key(line.meter), key)

    def their_key(line: SourceLine) -> str:
        description = line_key(line.description)
        if description and description in mine:
            return description
        meter = line_key(line.meter)
        if meter:
            if meter in usage_by_meter:
                return usage_by_meter[meter]
            if meter in mine or not description:
                return meter
        return description

    other = group_lines(theirs, their_key)
    keys = [*mine, *(key for key in other if key not in mine)]
    return tuple(LinePair(key, mine.get(key), other.get(key)) for key in keys)


def match(ours: Sequence[CustomerSide], theirs: Sequence[CustomerSide]) -> list[Pairing]:
    """Pair the two sides' customers (each side has at most one entry per customer)."""
    mine = _by_customer(ours, "ours")
    other = _by_customer(theirs, "theirs")
    pairings = []
    for customer in sorted(set(mine) | set(other)):
        a, b = mine.get(customer), other.get(customer)
        lines = pair_lines(a.lines if a else (), b.lines if b else ())
        pairings.append(Pairing(customer, a, b, lines))
    return pairings


def _by_customer(sides: Sequence[CustomerSide], which: str) -> dict[str, CustomerSide]:
    found: dict[str, CustomerSide] = {}
    for side in sides:
        if side.customer in found:
            raise ValueError(f"{which}: customer {side.customer!r} appears twice")
        found[side.customer] = side
    return found


def late_questions(pairings: Sequence[Pairing]) -> list[LateQuestion]:
    """The usage lines whose explanation may be late events: our quantity above theirs and
    the amounts more than a rounding apart."""
    questions = []
    for pairing in pairings:
        if pairing.ours is None or pairing.theirs is None or not pairing.same_currency:
            continue
        minor = quantum(pairing.currency)
        for pair in pairing.lines:
            ours, theirs = pair.ours, pair.theirs
            if (
                ours is None
                or theirs is None
                or ours.kind != "usage"
                or not ours.meter
                or ours.service is None
                or ours.quantity is None
                or theirs.quantity is None
                or ours.quantity <= theirs.quantity
                or abs(pair.difference) <= minor
            ):
                continue
            start, end = ours.service
            excess = ours.quantity - theirs.quantity
            questions.append(
                LateQuestion(pairing.customer, pair.key, ours.meter, start, end, excess)
            )
    return questions


# --------------------------------------------------------------------------- assessing


def assess(
    pairings: Sequence[Pairing],
    *,
    tolerance: Decimal,
    taxonomy: Taxonomy = COMPARE_TAXONOMY,
    late: Mapping[tuple[str, str], LateUsage] | None = None,
) -> list[CustomerResult]:
    """Every customer's status, difference, drift and reason; largest drift first."""
    if tolerance < 0:
        raise InvalidInput("--tolerance must not be negative")
    evidence = late or {}
    results = [_assess(p, tolerance, taxonomy, evidence) for p in pairings]
    return sorted(results, key=lambda r: (not r.differs, -r.drift, r.customer))


def _assess(
    pairing: Pairing,
    tolerance: Decimal,
    taxonomy: Taxonomy,
    late: Mapping[tuple[str, str], LateUsage],
) -> CustomerResult:
    ours, theirs, currency = pairing.ours, pairing.theirs, pairing.currency
    if not pairing.same_currency:
        assert ours is not None
        return CustomerResult(
            pairing.customer,
            CURRENCY_DIFFERS,
            currency,
            ours,
            theirs,
            None,
            abs(ours.total),
            ZERO,
            taxonomy.currency,
            (),
        )
    lines = tuple(_line_result(pairing, pair, taxonomy, late) for pair in pairing.lines)
    if ours is None or theirs is None:
        present = ours or theirs
        assert present is not None
        status = ONLY_THEIRS if ours is None else ONLY_OURS
        reason = taxonomy.only_theirs if ours is None else taxonomy.only_ours
        difference = present.total if ours is not None else -present.total
        return CustomerResult(
            pairing.customer,
            status,
            currency,
            ours,
            theirs,
            difference,
            abs(present.total),
            ZERO,
            reason,
            lines,
        )
    difference = ours.total - theirs.total
    if abs(difference) <= tolerance:
        return CustomerResult(
            pairing.customer,
            MATCHED,
            currency,
            ours,
            theirs,
            difference,
            ZERO,
            abs(difference),
            None,
            lines,
        )
    return CustomerResult(
        pairing.customer,
        AMOUNT_DIFFERS,
        currency,
        ours,
        theirs,
        difference,
        abs(difference),
        ZERO,
        dominant_reason(lines, taxonomy.order),
        lines,
    )


def _line_result(
    pairing: Pairing,
    pair: LinePair,
    taxonomy: Taxonomy,
    late: Mapping[tuple[str, str], LateUsage],
) -> LineResult:
    difference = pair.difference
    if pair.ours is None:
        status = ONLY_THEIRS
    elif pair.theirs is None:
        status = ONLY_OURS
    else:
        status = MATCHED if difference == 0 else LINE_DIFFERS
    if difference == 0:
        return LineResult(pair, difference, MATCHED if status == LINE_DIFFERS else status, None)
    evidence = late.get((pairing.customer, pair.key))
    return LineResult(pair, difference, status, taxonomy.classify(pair, pairing.currency, evidence))


def dominant_reason(lines: Sequence[LineResult], order: Sequence[str]) -> str | None:
    """The reason holding the most |difference|; ties go to the earlier reason in `order`."""
    weight: dict[str, Decimal] = {}
    for line in lines:
        if line.reason is not None:
            weight[line.reason] = weight.get(line.reason, ZERO) + abs(line.difference)
    if not weight:
        return None
    rank = {reason: index for index, reason in enumerate(order)}
    return min(weight, key=lambda reason: (-weight[reason], rank.get(reason, len(rank)), reason))


# --------------------------------------------------------------------------- summary


def summarize(results: Sequence[CustomerResult]) -> dict[str, CurrencySummary]:
    """Per currency: totals, drift, what was tolerated and the drift percentiles."""
    currencies = sorted(
        {r.currency for r in results}
        | {r.ours.currency for r in results if r.ours}
        | {r.theirs.currency for r in results if r.theirs}
    )
    summaries = {}
    for currency in currencies:
        members = [r for r in results if r.currency == currency]
        drifts = [r.drift for r in members]
        p50, p95 = (nearest_rank(drifts, p) for p in PERCENTILES)
        summaries[currency] = CurrencySummary(
            currency=currency,
            customers=len(members),
            differences=sum(1 for r in members if r.differs),
            ours_total=sum(
                (r.ours.total for r in results if r.ours and r.ours.currency == currency), ZERO
            ),
            theirs_total=sum(
                (r.theirs.total for r in results if r.theirs and r.theirs.currency == currency),
                ZERO,
            ),
            drift=sum(drifts, ZERO),
            tolerated=sum((r.tolerated for r in members), ZERO),
            p50=p50,
            p95=p95,
        )
    return summaries


def parse_threshold(text: str) -> Threshold:
    """`--fail-over 25.00` (an amount) or `--fail-over 2%` (of our total), not negative."""
    raw = text.strip()
    is_percent = raw.endswith("%")
    number = raw[:-1].strip() if is_percent else raw
    try:
        value = Decimal(number)
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or value < 0:
        raise UsageError(
            f"--fail-over: {text!r} is not an amount or a percentage",
            hint="e.g. --fail-over 25.00 or --fail-over 2%",
        )
    return Threshold(raw, None if is_percent else value, value if is_percent else None)


def exceeds(
    threshold: Threshold, summaries: Mapping[str, CurrencySummary], differences: int
) -> bool:
    """Whether drift exceeds the threshold in any currency. `0` and `0%` fail on any reported
    difference, drift or not; a percentage of a zero total is exceeded by any drift."""
    if differences and (threshold.amount == 0 or threshold.percent == 0):
        return True
    for summary in summaries.values():
        if threshold.amount is not None and summary.drift > threshold.amount:
            return True
        if threshold.percent is not None and summary.drift > 0:
            share = summary.drift_percent
            if share is None or share > threshold.percent:
                return True
    return False


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class Report:
    kind: str  # compare | simulate
    period: str
    baseline: str  # what theirs is: a file name, "stripe", "issued invoices"
    labels: Labels
    tolerance: Decimal
    results: tuple[CustomerResult, ...]
    threshold: Threshold | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    catalog: str | None = None  # simulate: the candidate catalog file

    @property
    def summaries(self) -> dict[str, CurrencySummary]:
        return summarize(self.results)

    @property
    def differences(self) -> list[CustomerResult]:
        return [r for r in self.results if r.differs]

    @property
    def fail_over_exceeded(self) -> bool:
        if self.threshold is None:
            return False
        return exceeds(self.threshold, self.summaries, len(self.differences))

    def summary(self) -> dict[str, Any]:
        """summary.json: counts, match rate, per-currency money and the largest differences."""
        labels = self.labels
        compared = len(self.results)
        matched = compared - len(self.differences)
        statuses = {
            labels.status(s): 0
            for s in (MATCHED, AMOUNT_DIFFERS, CURRENCY_DIFFERS, ONLY_OURS, ONLY_THEIRS)
        }
        for result in self.results:
            statuses[labels.status(result.status)] += 1
        reasons: dict[str, int] = {}
        for result in self.differences:
            if result.reason is not None:
                reasons[result.reason] = reasons.get(result.reason, 0) + 1
        catalog = {} if self.catalog is None else {"catalog": self.catalog}
        return {
            "kind": self.kind,
            "period": self.period,
            **catalog,
            "baseline": self.baseline,
            "sides": [labels.ours, labels.theirs],
            "tolerance": decimal_text(self.tolerance),
            "fail_over": None if self.threshold is None else self.threshold.text,
            "fail_over_exceeded": self.fail_over_exceeded,
            "customers": compared,
            "matched": matched,
            "differences": compared - matched,
            "match_rate": percent_text(percent_of(Decimal(matched), Decimal(compared))),
            "statuses": statuses,
            "reasons": dict(sorted(reasons.items(), key=lambda item: (-item[1], item[0]))),
            "currencies": {
                code: currency_dict(summary, labels) for code, summary in self.summaries.items()
            },
            "largest": [_brief(r, labels) for r in self.differences[:LARGEST]],
            "notes": list(self.notes),
        }

    def customer_dicts(self, *, differing_only: bool = False) -> list[dict[str, Any]]:
        chosen = self.differences if differing_only else list(self.results)
        return [customer_dict(result, self.labels) for result in chosen]

    def line_dicts(self) -> list[dict[str, Any]]:
        """Every line that differs, of every customer (tolerated ones too): by currency, then
        largest |difference| first."""
        found = [(result, line) for result in self.results for line in result.differing_lines]
        # Largest first within a currency: amounts of two currencies are never ranked together.
        found.sort(
            key=lambda item: (
                item[0].currency,
                -abs(item[1].difference),
                item[0].customer,
                item[1].pair.description,
            )
        )
        rows = []
        for result, line in found:
            row = line_dict(line, result.currency, self.labels)
            row["customer"] = result.customer
            row["customer_status"] = self.labels.status(result.status)
            rows.append(row)
        return rows


def money(value: Decimal | None, currency: str) -> str | None:
    """Major units at the currency's precision, or every digit when a baseline had more."""
    if value is None:
        return None
    if value == value.quantize(quantum(currency)):
        return format_amount(value, currency)
    return decimal_text(value)


def currency_dict(summary: CurrencySummary, labels: Labels) -> dict[str, Any]:
    code = summary.currency
    return {
        "customers": summary.customers,
        "differences": summary.differences,
        f"{labels.ours}_total": money(summary.ours_total, code),
        f"{labels.theirs}_total": money(summary.theirs_total, code),
        "net_difference": money(summary.net_difference, code),
        "net_difference_percent": percent_text(summary.net_percent),
        "drift": money(summary.drift, code),
        "drift_percent": percent_text(summary.drift_percent),
        "tolerated": money(summary.tolerated, code),
        "p50_drift": money(summary.p50, code),
        "p95_drift": money(summary.p95, code),
    }


def _side_dict(side: CustomerSide | None) -> dict[str, Any] | None:
    if side is None:
        return None
    return {
        "total": money(side.total, side.currency),
        "currency": side.currency,
        "documents": list(side.documents),
        "known": side.known,
    }


def _brief(result: CustomerResult, labels: Labels) -> dict[str, Any]:
    return {
        "customer": result.customer,
        "status": labels.status(result.status),
        "reason": result.reason,
        "currency": result.currency,
        "difference": money(result.difference, result.currency),
        "drift": money(result.drift, result.currency),
    }


def customer_dict(result: CustomerResult, labels: Labels) -> dict[str, Any]:
    return {
        **_brief(result, labels),
        labels.ours: _side_dict(result.ours),
        labels.theirs: _side_dict(result.theirs),
        "tolerated": money(result.tolerated, result.currency),
        "lines": [line_dict(line, result.currency, labels) for line in result.differing_lines],
    }


def line_dict(line: LineResult, currency: str, labels: Labels) -> dict[str, Any]:
    pair = line.pair
    shown = pair.ours or pair.theirs
    assert shown is not None

    def side(value: Line | None) -> dict[str, Any] | None:
        if value is None:
            return None
        return {
            "amount": money(value.amount, currency),
            "quantity": None if value.quantity is None else decimal_text(value.quantity),
            "sources": list(value.sources),
        }

    return {
        "line": pair.description,
        "kind": shown.kind,
        "meter": shown.meter,
        "status": labels.status(line.status),
        "reason": line.reason,
        labels.ours: side(pair.ours),
        labels.theirs: side(pair.theirs),
        "difference": money(line.difference, currency),
        "currency": currency,
    }
