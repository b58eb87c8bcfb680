"""The rating engine: one charge plus one period's usage in, an exact amount and its breakdown out.

Pure functions over `Decimal`; no I/O. DESIGN.md "Pricing semantics" is the authority; where it is
silent, these are our rules (the catalog loader validates with friendly paths first, the checks
here are a backstop and raise `InvalidInput`):

Tiers
    Bounds (`up_to`) are inclusive, positive and strictly ascending; only the last is `None`
    (inf). A quantity q is in tier i when up_to[i-1] < q <= up_to[i], fractions included (5.001
    is past up_to = 5). q = 0 is in the first tier.
graduated
    Each tier prices the units inside it at its `unit_amount`; a tier's `flat_amount` is charged
    once when q enters the tier (q > its lower bound). q = 0 enters only the first tier, whose
    flat fee is charged unless `flat_fee_at_zero` is false. The breakdown lists the tiers entered.
volume
    All units at the `unit_amount` of the tier containing q, plus that tier's `flat_amount`
    (at q = 0 the first tier's, unless `flat_fee_at_zero` is false). The breakdown is that tier.
graduated_percentage
    Graduated over the cumulative value, each tier charging `rate` percent plus its flat amount.
free_units
    On every model but `percentage` it is a quantity: billable = max(q - free_units, 0), and
    tiers (and the zero rule above) apply to the billable quantity. On `percentage` it is a
    number of events (below); 0, the default, means no event limit.
package
    packages = ceil(billable / package_size), at least `min_packages`; amount = packages x
    `package_amount`.
percentage
    Transactions are `usage.transactions` in event order, else `(usage.quantity,)`, else none
    when the quantity is 0. Fee per paying event: v x rate / 100 + `fixed_amount`, clamped to
    [`per_transaction_min`, `per_transaction_max`] when set. `free_units` (events) and
    `free_amount` (value) are ONE allowance consumed in event order: an event is fully free while
    it is within the first `free_units` events and the cumulative value including it stays
    <= `free_amount` (each condition only when set); it pays nothing at all. The allowance ends
    at the first event that is not fully free: if that event is the one crossing `free_amount`
    while still within `free_units`, it pays the rate on its excess over `free_amount` plus the
    fixed fee (clamped like any paying event); every later event pays in full. Negative values
    (refunds) are rated like any other value.
prorated (per_unit, graduated and volume charges on a recurring sum or unique_count meter)
    `usage.prorated` is the units weighted by the share of the period each existed
    (domain/prorated_usage.py; the full quantity when not given: units present all period).
    per_unit prices the prorated units; graduated runs the prorated units through the tiers
    (a tier's flat amount in full once they enter it); volume picks the tier from the
    unprorated quantity and prices the prorated units at its `unit_amount`, plus its flat
    amount in full. `free_units` comes off both. The rating's `quantity` is then the prorated
    units and `unprorated_quantity` the full quantity.
min_amount / max_amount
    amount = min(uncapped, max_amount); minimum_topup = max(min_amount - amount, 0), shown as
    its own "minimum" line. Both must be >= 0 and min_amount <= max_amount.
Exactness
    Everything runs in a 50-digit context that traps `Inexact`: an amount that cannot be held
    exactly is refused (`InvalidInput`) rather than silently rounded. `price_lines` rounds each
    line once to the currency's minor unit; totals are sums of rounded lines (the caller's job).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DecimalException,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    localcontext,
)
from typing import Any, Literal

from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.money import RoundingMode, decimal_text, round_to_minor

ZERO = Decimal(0)
ONE = Decimal(1)
HUNDRED = Decimal(100)

ChargeModel = Literal[
    "per_unit", "graduated", "volume", "package", "percentage", "graduated_percentage"
]
PRORATED_MODELS: tuple[ChargeModel, ...] = ("per_unit", "graduated", "volume")
MODELS: tuple[ChargeModel, ...] = (
    "per_unit",
    "graduated",
    "volume",
    "package",
    "percentage",
    "graduated_percentage",
)

# 50 digits hold any product of a 12-place unit price and a realistic quantity; trapping Inexact
# turns "needs more digits" into an error instead of a silently rounded bill.
_EXACT = Context(
    prec=50,
    rounding=ROUND_HALF_EVEN,
    traps=[Inexact, InvalidOperation, DivisionByZero, Overflow],
)
# Rounding to the minor unit is meant to be inexact: a wide context without the Inexact trap, so
# the caller's context (whatever it traps or its precision) cannot change a line's amount.
_ROUNDING = Context(prec=50, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, Overflow])


@dataclass(frozen=True)
class Tier:
    up_to: Decimal | None  # None means inf; bounds inclusive, ascending
    unit_amount: Decimal = ZERO  # graduated / volume
    flat_amount: Decimal = ZERO
    rate: Decimal = ZERO  # graduated_percentage: percent


@dataclass(frozen=True)
class Charge:
    meter: str
    model: ChargeModel
    unit_amount: Decimal | None = None  # per_unit
    tiers: tuple[Tier, ...] = ()  # graduated, volume, graduated_percentage
    package_size: Decimal | None = None  # package
    package_amount: Decimal | None = None
    min_packages: int = 0
    rate: Decimal | None = None  # percentage (percent, "2.5" = 2.5 %)
    fixed_amount: Decimal = ZERO  # percentage: per transaction
    per_transaction_min: Decimal | None = None
    per_transaction_max: Decimal | None = None
    free_amount: Decimal | None = None  # percentage
    free_units: Decimal = ZERO  # any model (see the module docstring)
    min_amount: Decimal | None = None  # any model: period minimum, its own line
    max_amount: Decimal | None = None  # any model: cap
    flat_fee_at_zero: bool = True  # tiered models
    group_by: tuple[str, ...] = ()  # properties whose values split the usage (domain/grouping.py)
    groups: tuple[ChargeGroup, ...] = ()  # groups with their own price, in catalog order
    prorated: bool = False  # per_unit, graduated, volume on a recurring meter (see above)


@dataclass(frozen=True)
class ChargeGroup:
    """A group of a grouped charge with its own price: `values` names every `group_by`
    property (sorted by name); `charge` is the charge that prices it (the charge's own
    parameters with the group's on top); `params` are the parameters the group sets."""

    values: tuple[tuple[str, str], ...]
    charge: Charge
    params: tuple[str, ...] = ()


@dataclass(frozen=True)
class Usage:
    quantity: Decimal  # the meter's aggregated value for the period
    transactions: tuple[Decimal, ...] | None = None  # per-event values in event order
    prorated: Decimal | None = None  # prorated charges: units × the share of the period held


@dataclass(frozen=True)
class TierLine:
    index: int  # 0-based tier index
    lower: Decimal  # exclusive lower bound (0 for the first tier)
    up_to: Decimal | None
    quantity: Decimal  # units priced in this tier (0 if only the flat fee applies)
    unit_amount: Decimal
    rate: Decimal
    flat_amount: Decimal  # flat fee actually charged for this tier (0 if not charged)
    amount: Decimal  # exact: quantity*unit_amount (or *rate/100) + flat_amount


@dataclass(frozen=True)
class Rating:
    meter: str
    model: ChargeModel
    quantity: Decimal  # usage.quantity as given
    billable_quantity: Decimal  # after free units (percentage: values that paid the rate)
    amount: Decimal  # exact, after the max_amount cap, before the minimum top-up
    uncapped_amount: Decimal  # exact, before the cap
    minimum_topup: Decimal  # exact, >= 0
    tiers: tuple[TierLine, ...]  # breakdown for explain (tiered models; empty otherwise)
    transactions: int  # percentage models: number of transactions; others 0
    free_transactions: int  # percentage: fully free transactions
    unprorated_quantity: Decimal | None = None  # prorated charges: the full quantity


@dataclass(frozen=True)
class PricedLine:
    kind: Literal["usage", "minimum"]  # "minimum" = the "minimum commitment" top-up line
    meter: str
    model: ChargeModel
    quantity: Decimal
    amount: Decimal  # rounded once to the currency's minor unit with the rounding mode
    amount_exact: Decimal  # unrounded
    tiers: tuple[TierLine, ...]


@dataclass(frozen=True)
class _Priced:
    """What a model function returns; rate_charge adds the cap and the minimum."""

    billable: Decimal
    amount: Decimal
    tiers: tuple[TierLine, ...] = ()
    transactions: int = 0
    free_transactions: int = 0


def tier_document(tier: TierLine) -> dict[str, Any]:
    """A tier of a rating as JSON-ready text, the same in quotes and invoices."""
    return {
        "up_to": "inf" if tier.up_to is None else decimal_text(tier.up_to),
        "quantity": decimal_text(tier.quantity),
        "unit_amount": decimal_text(tier.unit_amount),
        "rate": decimal_text(tier.rate),
        "flat_amount": decimal_text(tier.flat_amount),
        "amount": decimal_text(tier.amount),
    }


def rate_charge(charge: Charge, usage: Usage) -> Rating:
    """Rate one charge on one period's usage, exactly; raise InvalidInput if it cannot be rated."""
    rater = _RATERS.get(charge.model)
    if rater is None:
        raise _invalid(charge, f"unknown price model {charge.model!r}")
    quantity, unprorated = usage.quantity, None
    try:
        with localcontext(_EXACT):
            _check_common(charge)
            if charge.prorated:
                if charge.model not in PRORATED_MODELS:
                    raise _invalid(charge, "only per_unit, graduated and volume can be prorated")
                quantity = usage.quantity if usage.prorated is None else usage.prorated
                unprorated = usage.quantity
                priced = _prorated(charge, usage.quantity, quantity)
            else:
                priced = rater(charge, usage)
            amount, topup = _apply_limits(charge, priced.amount)
    except DecimalException as exc:
        raise _invalid(charge, f"cannot be priced exactly ({type(exc).__name__})") from None
    return Rating(
        meter=charge.meter,
        model=charge.model,
        quantity=quantity,
        unprorated_quantity=unprorated,
        billable_quantity=priced.billable,
        amount=amount,
        uncapped_amount=priced.amount,
        minimum_topup=topup,
        tiers=priced.tiers,
        transactions=priced.transactions,
        free_transactions=priced.free_transactions,
    )


def price_lines(
    rating: Rating, currency: str, rounding: RoundingMode = "half_even"
) -> tuple[PricedLine, ...]:
    """The usage line, then (only when the minimum lifts it) a separate minimum line.

    The usage line is rounded once to the currency's minor unit with the rounding mode; the
    minimum line is the rounded minimum less the rounded usage line, so together they are the
    minimum to the cent. It carries quantity 1 (one top-up).
    """
    usage = _line("usage", rating, rating.quantity, rating.amount, rating.tiers, currency, rounding)
    if rating.minimum_topup <= 0:
        return (usage,)
    # The top-up is what lifts the *rounded* usage line to the rounded minimum, so the two
    # lines always sum to the minimum exactly (rounding each on its own could overshoot by a
    # minor unit).
    with localcontext(_ROUNDING):
        minimum = round_to_minor(rating.amount + rating.minimum_topup, currency, rounding)
    topup = minimum - usage.amount
    if topup <= 0:
        return (usage,)
    top = PricedLine("minimum", rating.meter, rating.model, ONE, topup, rating.minimum_topup, ())
    return (usage, top)


def _line(
    kind: Literal["usage", "minimum"],
    rating: Rating,
    quantity: Decimal,
    exact: Decimal,
    tiers: tuple[TierLine, ...],
    currency: str,
    rounding: RoundingMode,
) -> PricedLine:
    with localcontext(_ROUNDING):
        rounded = round_to_minor(exact, currency, rounding)
    return PricedLine(kind, rating.meter, rating.model, quantity, rounded, exact, tiers)


# --- checks ---------------------------------------------------------------------------------


def _invalid(charge: Charge, message: str) -> InvalidInput:
    return InvalidInput(f"charge on meter {charge.meter!r} ({charge.model}): {message}")


def _check_common(charge: Charge) -> None:
    """Rules every model shares: the allowance and the period limits must make sense."""
    if charge.free_units < 0:
        raise _invalid(charge, "free_units must not be negative")
    low, high = charge.min_amount, charge.max_amount
    if low is not None and low < 0:
        raise _invalid(charge, "min_amount must not be negative")
    if high is not None and high < 0:
        raise _invalid(charge, "max_amount must not be negative")
    if low is not None and high is not None and low > high:
        # The top-up would push the charge past its own cap: no amount satisfies both.
        raise _invalid(charge, "min_amount must not exceed max_amount")


def _required(charge: Charge, value: Decimal | None, field: str) -> Decimal:
    if value is None:
        raise _invalid(charge, f"{field} is required")
    return value


def _billable(charge: Charge, usage: Usage) -> Decimal:
    """The quantity left after free units; quantities are counts or sums and cannot be negative."""
    if usage.quantity < 0:
        raise _invalid(charge, f"quantity {usage.quantity} is negative")
    return max(usage.quantity - charge.free_units, ZERO)


def _checked_tiers(charge: Charge) -> tuple[Tier, ...]:
    tiers = charge.tiers
    if not tiers:
        raise _invalid(charge, "needs at least one tier")
    if tiers[-1].up_to is not None:
        raise _invalid(charge, "the last tier must be up_to = inf")
    previous = ZERO
    for index, tier in enumerate(tiers[:-1]):
        if tier.up_to is None:
            raise _invalid(charge, f"tiers[{index}]: only the last tier may be up_to = inf")
        if tier.up_to <= previous:
            raise _invalid(charge, f"tiers[{index}]: bounds must be positive and ascend")
        previous = tier.up_to
    return tiers


# --- models ---------------------------------------------------------------------------------


def _per_unit(charge: Charge, usage: Usage) -> _Priced:
    price = _required(charge, charge.unit_amount, "unit_amount")
    billable = _billable(charge, usage)
    return _Priced(billable, billable * price)


def _graduated(charge: Charge, usage: Usage) -> _Priced:
    billable = _billable(charge, usage)
    lines = _graduated_lines(charge, billable, percent=False)
    return _Priced(billable, _sum(line.amount for line in lines), lines)


def _graduated_percentage(charge: Charge, usage: Usage) -> _Priced:
    """Graduated over the cumulative value; free_units here is value, as on graduated."""
    billable = _billable(charge, usage)
    lines = _graduated_lines(charge, billable, percent=True)
    count = len(_transactions(usage))
    return _Priced(billable, _sum(line.amount for line in lines), lines, count)


def _volume(charge: Charge, usage: Usage) -> _Priced:
    billable = _billable(charge, usage)
    lower = ZERO
    for index, tier in enumerate(_checked_tiers(charge)):
        if tier.up_to is None or billable <= tier.up_to:
            flat = tier.flat_amount if billable > 0 or charge.flat_fee_at_zero else ZERO
            line = _tier_line(index, lower, tier, billable, flat, percent=False)
            return _Priced(billable, line.amount, (line,))
        lower = tier.up_to
    raise AssertionError("unreachable: the last tier is unbounded")  # pragma: no cover


def _package(charge: Charge, usage: Usage) -> _Priced:
    size = _required(charge, charge.package_size, "package_size")
    price = _required(charge, charge.package_amount, "package_amount")
    if size <= 0:
        raise _invalid(charge, "package_size must be positive")
    if charge.min_packages < 0:
        raise _invalid(charge, "min_packages must not be negative")
    billable = _billable(charge, usage)
    # divmod is exact (no division rounding to undo): a started package is a whole package.
    whole, rest = divmod(billable, size)
    packages = max(whole + (ONE if rest > 0 else ZERO), Decimal(charge.min_packages))
    return _Priced(billable, packages * price)


def _percentage(charge: Charge, usage: Usage) -> _Priced:
    rate = _required(charge, charge.rate, "rate")
    low, high = charge.per_transaction_min, charge.per_transaction_max
    if low is not None and high is not None and low > high:
        raise _invalid(charge, "per_transaction_min must not exceed per_transaction_max")
    values = _transactions(usage)
    paying = [value for value in _paying_values(charge, values) if value is not None]
    amount = _sum(_transaction_fee(charge, rate, value) for value in paying)
    free = len(values) - len(paying)
    return _Priced(_sum(paying), amount, (), len(values), free)


def _prorated(charge: Charge, quantity: Decimal, prorated: Decimal) -> _Priced:
    """A prorated charge: the prorated units priced by the model (volume's tier from the
    unprorated quantity)."""
    if prorated < 0:
        raise _invalid(charge, f"prorated quantity {prorated} is negative")
    billable = max(prorated - charge.free_units, ZERO)
    if charge.model == "volume":
        full = _billable(charge, Usage(quantity))
        lower = ZERO
        for index, tier in enumerate(_checked_tiers(charge)):
            if tier.up_to is None or full <= tier.up_to:
                flat = tier.flat_amount if full > 0 or charge.flat_fee_at_zero else ZERO
                line = _tier_line(index, lower, tier, billable, flat, percent=False)
                return _Priced(billable, line.amount, (line,))
            lower = tier.up_to
        raise AssertionError("unreachable: the last tier is unbounded")  # pragma: no cover
    if charge.model == "graduated":
        lines = _graduated_lines(charge, billable, percent=False)
        return _Priced(billable, _sum(line.amount for line in lines), lines)
    return _Priced(billable, billable * _required(charge, charge.unit_amount, "unit_amount"))


_RATERS: dict[ChargeModel, Callable[[Charge, Usage], _Priced]] = {
    "per_unit": _per_unit,
    "graduated": _graduated,
    "volume": _volume,
    "package": _package,
    "percentage": _percentage,
    "graduated_percentage": _graduated_percentage,
}


# --- helpers --------------------------------------------------------------------------------


def _sum(values: Iterable[Decimal]) -> Decimal:
    total = ZERO
    for value in values:
        total += value
    return total


def _graduated_lines(charge: Charge, quantity: Decimal, *, percent: bool) -> tuple[TierLine, ...]:
    """One line per tier entered; q = 0 enters only the first tier."""
    lines: list[TierLine] = []
    lower = ZERO
    for index, tier in enumerate(_checked_tiers(charge)):
        if index > 0 and quantity <= lower:
            break
        top = quantity if tier.up_to is None else min(quantity, tier.up_to)
        entered = quantity > lower or charge.flat_fee_at_zero
        flat = tier.flat_amount if entered else ZERO
        lines.append(_tier_line(index, lower, tier, top - lower, flat, percent=percent))
        if tier.up_to is None:
            break
        lower = tier.up_to
    return tuple(lines)


def _tier_line(
    index: int, lower: Decimal, tier: Tier, units: Decimal, flat: Decimal, *, percent: bool
) -> TierLine:
    variable = units * tier.rate / HUNDRED if percent else units * tier.unit_amount
    return TierLine(
        index=index,
        lower=lower,
        up_to=tier.up_to,
        quantity=units,
        unit_amount=tier.unit_amount,
        rate=tier.rate,
        flat_amount=flat,
        amount=variable + flat,
    )


def _transactions(usage: Usage) -> tuple[Decimal, ...]:
    """Per-event values; without them the period's value is one transaction (none if it is 0)."""
    if usage.transactions is not None:
        return usage.transactions
    return () if usage.quantity == 0 else (usage.quantity,)


def _paying_values(charge: Charge, values: tuple[Decimal, ...]) -> list[Decimal | None]:
    """For each event, the value that pays the rate, or None when the allowance covers it fully.

    free_units (events) and free_amount (value) are one allowance, consumed in event order and
    closed for good by the first event it does not fully cover.
    """
    max_events = charge.free_units if charge.free_units > 0 else None
    max_value = charge.free_amount
    if max_events is None and max_value is None:
        return list(values)
    paying: list[Decimal | None] = []
    cumulative = ZERO
    open_allowance = True
    for number, value in enumerate(values, start=1):
        if not open_allowance:
            paying.append(value)
            continue
        cumulative += value
        within_events = max_events is None or number <= max_events
        if within_events and (max_value is None or cumulative <= max_value):
            paying.append(None)
            continue
        open_allowance = False
        if within_events and max_value is not None:
            paying.append(cumulative - max_value)  # crosses free_amount: only the excess pays
        else:
            paying.append(value)
    return paying


def _transaction_fee(charge: Charge, rate: Decimal, value: Decimal) -> Decimal:
    fee = value * rate / HUNDRED + charge.fixed_amount
    if charge.per_transaction_min is not None:
        fee = max(fee, charge.per_transaction_min)
    if charge.per_transaction_max is not None:
        fee = min(fee, charge.per_transaction_max)
    return fee


def _apply_limits(charge: Charge, uncapped: Decimal) -> tuple[Decimal, Decimal]:
    """(amount after the cap, minimum top-up); the top-up is billed as its own line."""
    amount = uncapped if charge.max_amount is None else min(uncapped, charge.max_amount)
    topup = ZERO if charge.min_amount is None else max(charge.min_amount - amount, ZERO)
    return amount, topup
