"""The pricing catalog: what a TOML catalog may say, checked completely before anything is
written, and its canonical form (what is stored, fingerprinted, compared and exported).

Errors are collected, not raised one at a time: an operator fixing a catalog sees every
problem with its path (`plans[0].charges[1].tiers[2].up_to: bounds must ascend`) in one run.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, cast

import orjson

from neruba_cli.domain.aggregation import (
    AGGREGATIONS,
    RECURRING_AGGREGATIONS,
    Aggregation,
    MeterSpec,
)
from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.keys import looks_like_secret
from neruba_cli.domain.money import (
    MAX_AMOUNT,
    MAX_PRICE_PLACES,
    decimal_text,
    normalize_currency,
    parse_amount,
)
from neruba_cli.domain.pricing import (
    MODELS,
    PRORATED_MODELS,
    Charge,
    ChargeGroup,
    ChargeModel,
    Tier,
)
from neruba_cli.domain.suggest import did_you_mean
from neruba_cli.domain.toml_lines import key_lines, line_of

INTERVALS = ("week", "month", "quarter", "year")
TIMINGS = ("advance", "arrears")
PRORATIONS = ("day", "second", "none")
GAUGES = ("delta", "absolute")
MAX_TRIAL_DAYS = 3650
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_PROPERTY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

# Which parameters each model reads; anything else set on a charge is an error, so a typo or
# a parameter from another model never passes silently.
_COMMON = {"meter", "model", "free_units", "min_amount", "max_amount", "description"}
_GROUPING = {"group_by", "groups"}  # pricing by property value (domain/grouping.py)
_GROUP_LIMITS = {"free_units", "min_amount", "max_amount"}  # a group may set its own
MAX_GROUP_BY = 5
_MODEL_PARAMS: dict[str, set[str]] = {
    "per_unit": {"unit_amount"},
    "graduated": {"tiers", "flat_fee_at_zero"},
    "volume": {"tiers", "flat_fee_at_zero"},
    "graduated_percentage": {"tiers", "flat_fee_at_zero"},
    "package": {"package_size", "package_amount", "min_packages"},
    "percentage": {
        "rate",
        "fixed_amount",
        "per_transaction_min",
        "per_transaction_max",
        "free_amount",
    },
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "per_unit": ("unit_amount",),
    "graduated": ("tiers",),
    "volume": ("tiers",),
    "graduated_percentage": ("tiers",),
    "package": ("package_size", "package_amount"),
    "percentage": ("rate",),
}
_MONEY_PARAMS = (
    "unit_amount",
    "package_amount",
    "fixed_amount",
    "per_transaction_min",
    "per_transaction_max",
    "free_amount",
    "min_amount",
    "max_amount",
)
_TIER_KEYS = {"up_to", "unit_amount", "flat_amount", "rate"}
_METER_KEYS = {
    "code",
    "aggregation",
    "field",
    "filter",
    "recurring",
    "gauge",
    "allow_negative",
    "name",
    "description",
}
_PLAN_KEYS = {
    "code",
    "name",
    "description",
    "currency",
    "interval",
    "base_fee",
    "base_fee_timing",
    "proration",
    "trial_days",
    "charges",
}


@dataclass(frozen=True)
class CatalogProblem:
    path: str
    message: str
    line: int | None = None  # in the catalog's text, when the text was given

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class CatalogInvalid(InvalidInput):
    """Every problem of a catalog, each with its path, and with the file and line where the
    text is known (`catalog.toml:12: plans[0].interval: ...`, as compilers print them)."""

    def __init__(self, source: str, problems: Sequence[CatalogProblem]) -> None:
        listing = "\n".join(
            f"  {source}:{problem.line}: {problem}" if problem.line else f"  {problem}"
            for problem in problems
        )
        count = len(problems)
        super().__init__(
            f"{source}: {count} problem{'s' if count != 1 else ''}; nothing was written\n{listing}"
        )
        self.problems = tuple(problems)


@dataclass(frozen=True)
class MeterDef:
    code: str
    spec: MeterSpec
    name: str | None = None
    description: str | None = None
    allow_negative: bool = False  # ingest refuses negative quantities unless this is set


@dataclass(frozen=True)
class PlanDef:
    code: str
    currency: str
    interval: Literal["week", "month", "quarter", "year"]
    base_fee: Decimal
    base_fee_timing: Literal["advance", "arrears"]
    proration: Literal["day", "second", "none"]
    trial_days: int
    charges: tuple[Charge, ...]
    name: str | None = None
    description: str | None = None
    charge_descriptions: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class Catalog:
    meters: tuple[MeterDef, ...] = ()
    plans: tuple[PlanDef, ...] = ()


@dataclass
class _Checker:
    problems: list[CatalogProblem] = field(default_factory=list)

    def add(self, path: str, message: str) -> None:
        self.problems.append(CatalogProblem(path, message))


def parse_catalog(
    data: Mapping[str, Any],
    *,
    source: str,
    known_meters: Mapping[str, MeterDef] | None = None,
    text: str | None = None,
) -> Catalog:
    """Validate a parsed TOML document; raise CatalogInvalid listing every problem.

    `known_meters` are meters already in the database: a plan may use them without repeating
    their definition. `text` is the TOML the document was parsed from: given, each problem
    names its line.
    """
    check = _Checker()
    for key in data:
        if key not in ("meters", "plans"):
            check.add(key, "unknown section; a catalog has [[meters]] and [[plans]]")
    meters = _parse_meters(data.get("meters", []), check)
    available = {**(known_meters or {}), **{meter.code: meter for meter in meters}}
    plans = _parse_plans(data.get("plans", []), available, check)
    if check.problems:
        raise CatalogInvalid(source, _located(check.problems, text))
    return Catalog(meters=tuple(meters), plans=tuple(plans))


def _located(problems: Sequence[CatalogProblem], text: str | None) -> list[CatalogProblem]:
    if text is None:
        return list(problems)
    lines = key_lines(text)
    return [replace(problem, line=line_of(lines, problem.path)) for problem in problems]


def _parse_meters(raw: Any, check: _Checker) -> list[MeterDef]:
    if not isinstance(raw, list):
        check.add("meters", "must be an array of tables ([[meters]])")
        return []
    meters: list[MeterDef] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        path = f"meters[{index}]"
        if not isinstance(item, dict):
            check.add(path, "must be a table")
            continue
        _unknown_keys(item, _METER_KEYS, path, check)
        code = _code(item.get("code"), f"{path}.code", check)
        if code is not None:
            if code in seen:
                check.add(f"{path}.code", f"meter {code!r} is defined twice")
            seen.add(code)
        aggregation = _choice(item.get("aggregation"), AGGREGATIONS, f"{path}.aggregation", check)
        field_name = item.get("field", "quantity")
        field_ok = isinstance(field_name, str) and (
            field_name == "quantity"
            or (field_name.startswith("properties.") and bool(_PROPERTY.match(field_name[11:])))
        )
        if not field_ok:
            check.add(
                f"{path}.field",
                'use "quantity" or "properties.<name>" (a name of letters, digits and _, '
                "not starting with a digit)",
            )
        filters = _filters(item.get("filter", {}), f"{path}.filter", check)
        weighted = aggregation == "weighted_sum"
        recurring = _bool(item.get("recurring", False), f"{path}.recurring", check)
        gauge = item.get("gauge", "delta")
        if gauge not in GAUGES:
            check.add(f"{path}.gauge", 'use "delta" or "absolute"')
        if not weighted and "gauge" in item:
            check.add(f"{path}.gauge", "applies to weighted_sum meters only")
        if recurring and aggregation is not None and aggregation not in RECURRING_AGGREGATIONS:
            check.add(
                f"{path}.recurring",
                f"a {aggregation} meter cannot be recurring: its value is not something that "
                f"carries over between periods (recurring applies to "
                f"{', '.join(RECURRING_AGGREGATIONS)})",
            )
            recurring = False
        if code is None or aggregation is None or not field_ok:
            continue  # reported above; a MeterSpec would only raise it again
        spec = MeterSpec(
            code=code,
            aggregation=cast(Aggregation, aggregation),
            field=field_name,
            filters=filters,
            recurring=recurring,
            gauge="absolute" if gauge == "absolute" else "delta",
        )
        allow_negative = _bool(item.get("allow_negative", False), f"{path}.allow_negative", check)
        name, description = _text(item.get("name")), _text(item.get("description"))
        meters.append(MeterDef(code, spec, name, description, allow_negative))
    return meters


def _parse_plans(raw: Any, meters: Mapping[str, MeterDef], check: _Checker) -> list[PlanDef]:
    if not isinstance(raw, list):
        check.add("plans", "must be an array of tables ([[plans]])")
        return []
    plans: list[PlanDef] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        path = f"plans[{index}]"
        if not isinstance(item, dict):
            check.add(path, "must be a table")
            continue
        _unknown_keys(item, _PLAN_KEYS, path, check)
        code = _code(item.get("code"), f"{path}.code", check)
        if code is not None:
            if code in seen:
                check.add(f"{path}.code", f"plan {code!r} is defined twice")
            seen.add(code)
        currency = None
        try:
            currency = normalize_currency(str(item.get("currency", "")))
        except InvalidInput as exc:
            check.add(f"{path}.currency", str(exc))
        interval = _choice(item.get("interval"), INTERVALS, f"{path}.interval", check)
        base_fee = _money(item.get("base_fee", "0"), f"{path}.base_fee", check, minimum=0)
        timing = _choice(
            item.get("base_fee_timing", "advance"), TIMINGS, f"{path}.base_fee_timing", check
        )
        proration = _choice(item.get("proration", "day"), PRORATIONS, f"{path}.proration", check)
        trial_days = item.get("trial_days", 0)
        if (
            isinstance(trial_days, bool)
            or not isinstance(trial_days, int)
            or not 0 <= trial_days <= MAX_TRIAL_DAYS
        ):
            check.add(
                f"{path}.trial_days", f"must be a whole number of days, 0 to {MAX_TRIAL_DAYS}"
            )
            trial_days = 0
        charges, notes = _parse_charges(
            item.get("charges", []), f"{path}.charges", meters, check, proration
        )
        if None in (code, currency, interval, base_fee, timing, proration):
            continue
        plans.append(
            PlanDef(
                code=cast(str, code),
                currency=cast(str, currency),
                interval=cast(Any, interval),
                base_fee=cast(Decimal, base_fee),
                base_fee_timing=cast(Any, timing),
                proration=cast(Any, proration),
                trial_days=trial_days,
                charges=tuple(charges),
                name=_text(item.get("name")),
                description=_text(item.get("description")),
                charge_descriptions=tuple(notes),
            )
        )
    return plans


def _parse_charges(
    raw: Any,
    path: str,
    meters: Mapping[str, MeterDef],
    check: _Checker,
    proration: str | None = None,
) -> tuple[list[Charge], list[str | None]]:
    if not isinstance(raw, list):
        check.add(path, "must be an array of tables ([[plans.charges]])")
        return [], []
    charges: list[Charge] = []
    notes: list[str | None] = []
    used: set[str] = set()
    for index, item in enumerate(raw):
        here = f"{path}[{index}]"
        if not isinstance(item, dict):
            check.add(here, "must be a table")
            continue
        charge = _parse_charge(item, here, meters, check, proration)
        if charge is None:
            continue
        if charge.meter in used:
            check.add(f"{here}.meter", f"meter {charge.meter!r} already has a charge in this plan")
        used.add(charge.meter)
        charges.append(charge)
        notes.append(_text(item.get("description")))
    return charges, notes


def _parse_charge(
    item: Mapping[str, Any],
    path: str,
    meters: Mapping[str, MeterDef],
    check: _Checker,
    proration: str | None = None,
) -> Charge | None:
    before = len(check.problems)
    meter = item.get("meter")
    if not isinstance(meter, str) or meter not in meters:
        known = ", ".join(sorted(meters)) or "none"
        hint = did_you_mean(meter, meters) if isinstance(meter, str) else ""
        check.add(
            f"{path}.meter",
            f"unknown meter {meter!r} (meters: {known})" + (f" — {hint}" if hint else ""),
        )
    model = _choice(item.get("model"), MODELS, f"{path}.model", check)
    if model is None:
        return None
    allowed = _COMMON | _MODEL_PARAMS[model]
    for key in item:
        if key not in allowed and key not in _GROUPING and key != "prorated":
            other = [name for name, params in _MODEL_PARAMS.items() if key in params]
            hint = f" (it belongs to {', '.join(other)})" if other else ""
            check.add(f"{path}.{key}", f"does not apply to model {model}{hint}")
    for key in _REQUIRED[model]:
        if key not in item:
            check.add(f"{path}.{key}", f"is required for model {model}")
    values: dict[str, Any] = {}
    for key in _MONEY_PARAMS:
        if key in item and key in allowed:
            values[key] = _money(item[key], f"{path}.{key}", check, minimum=0)
    if "rate" in item and "rate" in allowed:
        values["rate"] = _money(item["rate"], f"{path}.rate", check, minimum=0)
    if "free_units" in item:
        free = _quantity(item["free_units"], f"{path}.free_units", check)
        if model == "percentage" and free is not None and free != free.to_integral_value():
            check.add(
                f"{path}.free_units", "counts free events on percentage charges: a whole number"
            )
        values["free_units"] = free
    if "package_size" in item and "package_size" in allowed:
        size = _quantity(item["package_size"], f"{path}.package_size", check)
        if size is not None and size <= 0:
            check.add(f"{path}.package_size", "must be greater than 0")
        values["package_size"] = size
    if "min_packages" in item and "min_packages" in allowed:
        count = item["min_packages"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            check.add(f"{path}.min_packages", "must be a whole number, 0 or more")
        else:
            values["min_packages"] = count
    if "flat_fee_at_zero" in item and "flat_fee_at_zero" in allowed:
        values["flat_fee_at_zero"] = _bool(
            item["flat_fee_at_zero"], f"{path}.flat_fee_at_zero", check
        )
    if "tiers" in item and "tiers" in allowed:
        values["tiers"] = _tiers(item["tiers"], f"{path}.tiers", model, check)
    minimum, maximum = values.get("min_amount"), values.get("max_amount")
    if minimum is not None and maximum is not None and minimum > maximum:
        check.add(f"{path}.min_amount", "must not exceed max_amount")
    low, high = values.get("per_transaction_min"), values.get("per_transaction_max")
    if low is not None and high is not None and low > high:
        check.add(f"{path}.per_transaction_min", "must not exceed per_transaction_max")
    group_by = _group_by(item, path, meters.get(meter) if isinstance(meter, str) else None, check)
    if "prorated" in item:
        measured = meters.get(meter) if isinstance(meter, str) else None
        values["prorated"] = _prorated(item, path, model, measured, proration, check)
    if len(check.problems) > before or not isinstance(meter, str):
        return None
    clean = {key: value for key, value in values.items() if value is not None}
    charge = Charge(meter=meter, model=cast(ChargeModel, model), **clean)
    if not group_by:
        return charge
    groups = _groups(item, path, group_by, meters, check)
    if len(check.problems) > before:
        return None
    return replace(charge, group_by=group_by, groups=groups)


def _prorated(
    item: Mapping[str, Any],
    path: str,
    model: str,
    meter: MeterDef | None,
    proration: str | None,
    check: _Checker,
) -> bool:
    """`prorated = true`: each unit billed for the share of the period it existed, which
    means something only for a per-unit price of a recurring sum or unique_count meter."""
    here = f"{path}.prorated"
    prorated = _bool(item["prorated"], here, check)
    if not prorated:
        return False
    if model not in PRORATED_MODELS:
        check.add(
            here,
            f"applies to {', '.join(PRORATED_MODELS)} charges; a {model} charge has no price "
            "per unit to prorate",
        )
    if meter is not None and not meter.spec.carried:
        spec = meter.spec
        what = (
            f"a {spec.aggregation} that is not recurring (set recurring = true on it)"
            if spec.aggregation in ("sum", "unique_count")
            else f"a {spec.aggregation}{' (recurring)' if spec.recurring else ''}"
        )
        check.add(
            here,
            f"needs a recurring sum or unique_count meter (units that exist for part of a "
            f"period); meter {meter.code} is {what}",
        )
    if "group_by" in item:
        check.add(here, "a grouped charge (group_by) cannot be prorated")
    if proration == "none":
        check.add(here, 'the plan\'s proration is "none": prorate by "day" or "second"')
    return True


def _group_by(
    item: Mapping[str, Any], path: str, meter: MeterDef | None, check: _Checker
) -> tuple[str, ...]:
    """`group_by = ["region"]`: the properties whose values split the charge's usage."""
    if "group_by" not in item:
        if "groups" in item:
            check.add(f"{path}.groups", 'needs group_by, e.g. group_by = ["region"]')
        return ()
    raw = item["group_by"]
    here = f"{path}.group_by"
    if not isinstance(raw, list) or not raw or len(raw) > MAX_GROUP_BY:
        check.add(here, f'must be a list of 1 to {MAX_GROUP_BY} property names, e.g. ["region"]')
        return ()
    names: list[str] = []
    for name in raw:
        if not isinstance(name, str) or not _PROPERTY.match(name):
            check.add(here, f"{name!r}: property names are letters, digits and _")
        elif name in names:
            check.add(here, f"{name!r} appears twice")
        else:
            names.append(name)
    if meter is not None and meter.spec.recurring:
        check.add(here, f"meter {meter.code!r} is recurring: grouping it is not supported")
    return tuple(names)


def _groups(
    item: Mapping[str, Any],
    path: str,
    group_by: tuple[str, ...],
    meters: Mapping[str, MeterDef],
    check: _Checker,
) -> tuple[ChargeGroup, ...]:
    """`[[plans.charges.groups]]`: groups priced with their own parameters on top of the
    charge's (the same model; `values` names every group_by property)."""
    raw = item.get("groups", [])
    if not isinstance(raw, list):
        check.add(f"{path}.groups", "must be an array of tables ([[plans.charges.groups]])")
        return ()
    model = item["model"]
    inherited = {
        key: value for key, value in item.items() if key not in _GROUPING and key != "description"
    }
    groups: list[ChargeGroup] = []
    seen: set[tuple[tuple[str, str], ...]] = set()
    for index, group in enumerate(raw):
        here = f"{path}.groups[{index}]"
        if not isinstance(group, dict):
            check.add(here, 'must be a table such as { values = { region = "eu" }, ... }')
            continue
        values = _group_values(group.get("values"), f"{here}.values", group_by, check)
        params = [
            key
            for key in group
            if key != "values" and (key in _MODEL_PARAMS[model] or key in _GROUP_LIMITS)
        ]
        for key in group:
            if key != "values" and key not in params:
                check.add(
                    f"{here}.{key}",
                    f"a group sets the price parameters of model {model} "
                    f"({', '.join(sorted(_MODEL_PARAMS[model] | _GROUP_LIMITS))})",
                )
        if values is None:
            continue
        if values in seen:
            check.add(f"{here}.values", "this group is priced twice")
        seen.add(values)
        before = len(check.problems)
        merged = {**inherited, **{key: group[key] for key in params}}
        priced = _parse_charge(merged, here, meters, check)
        if priced is not None and len(check.problems) == before:
            groups.append(ChargeGroup(values, priced, tuple(sorted(params))))
    return tuple(groups)


def _group_values(
    raw: Any, path: str, group_by: tuple[str, ...], check: _Checker
) -> tuple[tuple[str, str], ...] | None:
    example = ", ".join(f'{name} = "..."' for name in group_by)
    if not isinstance(raw, dict):
        check.add(path, f"is required: a table naming every group_by property, {{ {example} }}")
        return None
    if set(raw) != set(group_by) or not all(isinstance(v, str) for v in raw.values()):
        check.add(path, f"must give a string for each group_by property: {{ {example} }}")
        return None
    return tuple(sorted(raw.items()))


def _tiers(raw: Any, path: str, model: str, check: _Checker) -> tuple[Tier, ...]:
    if not isinstance(raw, list) or not raw:
        check.add(path, "must be a non-empty array of tiers")
        return ()
    tiers: list[Tier] = []
    previous: Decimal | None = Decimal(0)  # None: the previous bound was itself invalid
    for index, item in enumerate(raw):
        here = f"{path}[{index}]"
        if not isinstance(item, dict):
            check.add(here, 'must be a table such as { up_to = 100, unit_amount = "0.01" }')
            previous = None
            continue
        _unknown_keys(item, _TIER_KEYS, here, check)
        if model == "graduated_percentage" and "unit_amount" in item:
            check.add(
                f"{here}.unit_amount", "graduated_percentage tiers take rate, not unit_amount"
            )
        if model != "graduated_percentage" and "rate" in item:
            check.add(f"{here}.rate", f"{model} tiers take unit_amount, not rate")
        up_to = _bound(item, f"{here}.up_to", check)
        if up_to is not None and previous is not None:
            if previous.is_infinite():
                check.add(f"{here}.up_to", "no tier may follow the inf tier")
            elif up_to <= previous:
                check.add(f"{here}.up_to", "bounds must ascend")
        previous = up_to
        unit = _money(item.get("unit_amount", "0"), f"{here}.unit_amount", check, minimum=0)
        flat = _money(item.get("flat_amount", "0"), f"{here}.flat_amount", check, minimum=0)
        rate = _money(item.get("rate", "0"), f"{here}.rate", check, minimum=0)
        if up_to is not None and unit is not None and flat is not None and rate is not None:
            tiers.append(Tier(None if up_to.is_infinite() else up_to, unit, flat, rate))
    if previous is not None and not previous.is_infinite():
        check.add(f"{path}[{len(raw) - 1}].up_to", "the last tier must be up_to = inf")
    return tuple(tiers)


def _bound(item: Mapping[str, Any], path: str, check: _Checker) -> Decimal | None:
    """`up_to`: an integer, a decimal string, or inf (TOML's inf, or the string "inf")."""
    if "up_to" not in item:
        check.add(path, "is required (a number, a decimal string, or inf)")
        return None
    value = item["up_to"]
    if (isinstance(value, float) and value == float("inf")) or (
        isinstance(value, str) and value.strip().lower() == "inf"
    ):
        return Decimal("Infinity")
    if isinstance(value, float):
        check.add(path, f'write fractional bounds as a string, e.g. "{value!r}"')
        return None
    amount = _quantity(value, path, check)
    if amount is not None and amount <= 0:
        check.add(path, "must be greater than 0")
        return None
    return amount


def _money(value: Any, path: str, check: _Checker, *, minimum: int) -> Decimal | None:
    try:
        amount = parse_amount(value, field=path)
    except InvalidInput as exc:
        check.add(path, exc.message.removeprefix(f"{path}: "))
        return None
    if amount < minimum:
        check.add(path, f"must be {minimum} or more")
        return None
    return amount


def _quantity(value: Any, path: str, check: _Checker) -> Decimal | None:
    if isinstance(value, float):
        check.add(path, f'write it as an integer or a string, e.g. "{value!r}"')
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        check.add(path, "must be a number (an integer or a decimal string)")
        return None
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        check.add(path, f"{value!r} is not a number")
        return None
    if not amount.is_finite() or amount < 0:
        check.add(path, "must be a finite number, 0 or more")
        return None
    if amount >= MAX_AMOUNT or -_exponent(amount) > MAX_PRICE_PLACES:
        check.add(path, "is out of range (at most 26 integer digits and 12 decimal places)")
        return None
    return amount


def _exponent(value: Decimal) -> int:
    exp = value.as_tuple().exponent
    return exp if isinstance(exp, int) else 0


def _code(value: Any, path: str, check: _Checker) -> str | None:
    if isinstance(value, str) and looks_like_secret(value):
        check.add(path, "looks like a secret (an API key or token), not a code")
        return None
    if not isinstance(value, str) or not _CODE.match(value):
        check.add(path, "must be 1-64 lower-case letters, digits or _, starting with a letter")
        return None
    return value


def _choice(value: Any, options: Iterable[str], path: str, check: _Checker) -> str | None:
    choices = tuple(options)
    if value not in choices:
        check.add(path, f"{value!r} is not one of: {', '.join(choices)}")
        return None
    return cast(str, value)


def _bool(value: Any, path: str, check: _Checker) -> bool:
    if not isinstance(value, bool):
        check.add(path, "must be true or false")
        return False
    return value


def _text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _filters(value: Any, path: str, check: _Checker) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        check.add(path, 'must be a table, e.g. { region = "eu" }')
        return ()
    pairs: list[tuple[str, str]] = []
    for name, expected in value.items():
        if not _PROPERTY.match(name):
            check.add(f"{path}.{name}", "property names are letters, digits and _")
        elif not isinstance(expected, str):
            check.add(f"{path}.{name}", "filter values are strings")
        else:
            pairs.append((name, expected))
    return tuple(sorted(pairs))


def _unknown_keys(item: Mapping[str, Any], allowed: set[str], path: str, check: _Checker) -> None:
    for key in item:
        if key not in allowed:
            check.add(f"{path}.{key}", f"unknown key (expected: {', '.join(sorted(allowed))})")


# --- canonical form -----------------------------------------------------------------------


def _dec(value: Decimal | None) -> str | None:
    if value is None:
        return None
    if value.is_infinite():
        return "inf"
    return decimal_text(value)


def meter_document(meter: MeterDef) -> dict[str, Any]:
    spec = meter.spec
    document: dict[str, Any] = {"code": meter.code, "aggregation": spec.aggregation}
    document["field"] = spec.field
    if spec.filters:
        document["filter"] = dict(spec.filters)
    if spec.aggregation == "weighted_sum":
        document["recurring"] = spec.recurring
        document["gauge"] = spec.gauge
    elif spec.recurring:  # only when set: meters stored before it keep their fingerprint
        document["recurring"] = True
    if meter.allow_negative:
        document["allow_negative"] = True
    if meter.name:
        document["name"] = meter.name
    if meter.description:
        document["description"] = meter.description
    return document


def charge_document(charge: Charge, description: str | None = None) -> dict[str, Any]:
    document: dict[str, Any] = {"meter": charge.meter, "model": charge.model}
    params = _COMMON | _MODEL_PARAMS[charge.model]
    for key in sorted(params - {"meter", "model", "description"}):
        value = getattr(charge, key)
        if key == "tiers":
            document["tiers"] = [_tier_document(tier, charge.model) for tier in value]
        elif key == "flat_fee_at_zero":
            if value is False:
                document[key] = False
        elif key == "min_packages":
            if value:
                document[key] = value
        elif key == "fixed_amount" or key == "free_units":
            if value:
                document[key] = _dec(value)
        elif value is not None:
            document[key] = _dec(value)
    if charge.prorated:  # only when set: plan versions stored before keep their fingerprint
        document["prorated"] = True
    if charge.group_by:
        document["group_by"] = list(charge.group_by)
        document["groups"] = [_group_document(group) for group in charge.groups]
    if description:
        document["description"] = description
    return document


def _group_document(group: ChargeGroup) -> dict[str, Any]:
    """A priced group as written: its values and the parameters it sets, each spelled out
    (a group's `free_units = 0` undoes the charge's, so defaults are kept here)."""
    document: dict[str, Any] = {"values": dict(group.values)}
    for key in group.params:
        value = getattr(group.charge, key)
        if key == "tiers":
            document[key] = [_tier_document(tier, group.charge.model) for tier in value]
        elif isinstance(value, bool | int) and not isinstance(value, Decimal):
            document[key] = value
        else:
            document[key] = _dec(value)
    return document


def _tier_document(tier: Tier, model: str) -> dict[str, Any]:
    document: dict[str, Any] = {"up_to": "inf" if tier.up_to is None else _dec(tier.up_to)}
    if model == "graduated_percentage":
        document["rate"] = _dec(tier.rate)
    else:
        document["unit_amount"] = _dec(tier.unit_amount)
    if tier.flat_amount:
        document["flat_amount"] = _dec(tier.flat_amount)
    return document


def plan_document(plan: PlanDef) -> dict[str, Any]:
    """The plan as stored and exported: decimals as canonical strings, defaults spelled out."""
    notes = plan.charge_descriptions or (None,) * len(plan.charges)
    document: dict[str, Any] = {
        "code": plan.code,
        "currency": plan.currency,
        "interval": plan.interval,
        "base_fee": _dec(plan.base_fee),
        "base_fee_timing": plan.base_fee_timing,
        "proration": plan.proration,
        "trial_days": plan.trial_days,
        "charges": [
            charge_document(charge, note) for charge, note in zip(plan.charges, notes, strict=True)
        ],
    }
    if plan.name:
        document["name"] = plan.name
    if plan.description:
        document["description"] = plan.description
    return document


def version_document(plan: PlanDef, meters: Mapping[str, MeterDef]) -> dict[str, Any]:
    """What a plan version freezes: the plan and the definitions of the meters it reads."""
    used = sorted({charge.meter for charge in plan.charges})
    return {"plan": plan_document(plan), "meters": [meter_document(meters[code]) for code in used]}


def canonical_json(document: Any) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def fingerprint(document: Any) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(document)).hexdigest()


def load_version(document: Mapping[str, Any]) -> tuple[PlanDef, dict[str, MeterDef]]:
    """Rebuild a stored plan version (already valid when it was stored)."""
    meters = parse_catalog({"meters": document["meters"]}, source="stored plan version")
    known = {meter.code: meter for meter in meters.meters}
    catalog = parse_catalog(
        {"plans": [_toml_ready(document["plan"])]}, source="stored plan version", known_meters=known
    )
    return catalog.plans[0], known


def _toml_ready(plan: Mapping[str, Any]) -> dict[str, Any]:
    return dict(plan)
