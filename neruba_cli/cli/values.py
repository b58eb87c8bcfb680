"""Values of flags and arguments that Neruba reads itself: months, timestamps, durations,
amounts, currencies, time zones and the choices a command checks.

A command declares what a value is beside its Typer declaration, for example
`period: Annotated[str, typer.Option(help=...), values.MONTH]`, and the `command` decorator
(cli/runtime.py) checks every such value before the command does anything: a value that cannot
be read is a usage error, exit 2, with a message that names the flag (`--period: '2026-13' is
not a month (YYYY-MM, previous or current)`), as Click reports the numbers it reads itself. A
value that is well formed but names something missing (an unknown customer, invoice or plan)
is found out later by the command, and is an error, exit 1.

Each check calls the same domain parser that the command (or the service it calls) then reads
the value with; the command still receives the text as written, because some values only mean
something once the project is known (`previous` is a month in the project's time zone). Input
files go through the same parsers and keep reporting rejected lines and line errors as before.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, get_args, get_origin

from typer.models import ArgumentInfo, OptionInfo

from neruba_cli.domain import billing_periods, money, tenancy, timestamps
from neruba_cli.domain.errors import InvalidInput, UsageError

Check = Callable[[str, str, datetime], object]  # (text, flag or argument name, now)


@dataclass(frozen=True)
class Value:
    """What a flag's or argument's text must be: a check that raises InvalidInput when the
    text cannot be read. Its message names the flag, or gets the flag's name put before it."""

    check: Check


@dataclass(frozen=True)
class Declared:
    """One checked parameter of a command: the name the operator typed it by, and its check."""

    name: str  # `--period`, or an argument's metavar such as AMOUNT
    value: Value


def one_of(choices: Iterable[str]) -> Value:
    """One of a fixed set of words, exactly as written (`--status paid`)."""
    allowed = tuple(choices)

    def check(text: str, name: str, _now: datetime) -> object:
        if text not in allowed:
            raise InvalidInput(f"{name}: {text!r} is not one of: {', '.join(allowed)}")
        return text

    return Value(check)


def or_blank(value: Value) -> Value:
    """`value`, or blank text, which the command reads as not given (its default)."""
    return Value(lambda text, name, now: text.strip() and value.check(text, name, now))


def read_by(parse: Callable[[str], object]) -> Value:
    """A value a domain or service function reads (and raises InvalidInput for)."""
    return Value(lambda text, _name, _now: parse(text))


def _month(text: str, name: str, _now: datetime) -> object:
    return billing_periods.check_label(text, field=name)


def _calendar_month(text: str, name: str, _now: datetime) -> object:
    return billing_periods.check_label(text, field=name, relative=False)


def _timestamp(text: str, name: str, _now: datetime) -> object:
    return timestamps.parse_ts(text, field=name)


def _since(text: str, name: str, now: datetime) -> object:
    return timestamps.parse_since(text, now=now, field=name)


def _expiry(text: str, name: str, now: datetime) -> object:
    return timestamps.parse_expiry(text, now=now, field=name)


def _fixed_duration(text: str, name: str, _now: datetime) -> object:
    return timestamps.parse_fixed_duration(text, field=name)


def _age(text: str, _name: str, _now: datetime) -> object:
    from neruba_cli.domain.retention import parse_age  # retention's, when it is asked for

    return parse_age(text)


def _amount(text: str, name: str, _now: datetime) -> object:
    return money.parse_amount(text, field=name)


def positive_amount(hint: str | None = None) -> Value:
    """A decimal amount more than zero; `hint` says what to do instead (a refund, a revoke)."""

    def check(text: str, name: str, _now: datetime) -> object:
        amount = money.parse_amount(text, field=name)
        if amount <= 0:
            raise InvalidInput(f"{name}: {text!r} is not a positive amount", hint=hint)
        return amount

    return Value(check)


def _plan(text: str, name: str, _now: datetime) -> object:
    from neruba_cli.services.catalog.store import parse_plan_ref  # the catalog, when needed

    return parse_plan_ref(text, field=name)


def _currency(text: str, _name: str, _now: datetime) -> object:
    return money.normalize_currency(text)


def _timezone(text: str, name: str, _now: datetime) -> object:
    return timestamps.validate_timezone(text, field=name)


# A month: YYYY-MM, previous or current (resolved later, in the project's time zone).
MONTH = Value(_month)
# A month written as YYYY-MM only.
CALENDAR_MONTH = Value(_calendar_month)
# An RFC 3339 timestamp with an offset.
TIMESTAMP = Value(_timestamp)
# A timestamp, a date (midnight UTC) or a duration ago such as 7d.
SINCE = Value(_since)
# A duration from now such as 90d, or a timestamp; in the future either way.
EXPIRY = Value(_expiry)
# A duration of fixed length: s, h, d or w.
FIXED_DURATION = Value(_fixed_duration)
# How old a month must be for retention: days, weeks, months or years, more than zero.
AGE = Value(_age)
# A decimal amount in major units (its sign and currency are the command's business).
AMOUNT = Value(_amount)
POSITIVE_AMOUNT = positive_amount()
# A plan code, or PLAN@VERSION.
PLAN = Value(_plan)
CURRENCY = Value(_currency)
TIMEZONE = Value(_timezone)
SLUG = read_by(tenancy.validate_slug)
EMAIL = read_by(tenancy.validate_email)
NAME = read_by(tenancy.validate_name)
EXTERNAL_ID = read_by(tenancy.validate_external_id)
STRIPE_CUSTOMER = read_by(tenancy.validate_stripe_customer)


def declared(
    parameters: Iterable[tuple[str, Any]], extra: Mapping[str, Value]
) -> dict[str, Declared]:
    """The checked parameters among a command's (name, annotation) pairs: those whose
    `Annotated[...]` metadata holds a Value, or that `extra` names, with the name the operator
    types them by."""
    found: dict[str, Declared] = {}
    for parameter, annotation in parameters:
        metadata = _metadata(annotation)
        value = next((item for item in metadata if isinstance(item, Value)), None)
        value = extra.get(parameter, value)
        if value is not None:
            found[parameter] = Declared(_typed_name(parameter, metadata), value)
    return found


def _metadata(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) is not Annotated:
        return ()
    return tuple(get_args(annotation)[1:])


def _typed_name(parameter: str, metadata: Collection[Any]) -> str:
    """`--as-of` for an option (its first long name), the metavar or NAME for an argument."""
    for info in metadata:
        if isinstance(info, ArgumentInfo):
            return info.metavar or parameter.upper()
        if isinstance(info, OptionInfo):
            # In Annotated form, Typer keeps an option's first name where the default goes.
            names = [info.default] if isinstance(info.default, str) else []
            names += list(info.param_decls or ())
            for spelled in names:
                for option in spelled.split("/"):
                    if option.strip().startswith("--"):
                        return option.strip()
    return "--" + parameter.replace("_", "-")


def check_all(
    declarations: Mapping[str, Declared], arguments: Mapping[str, Any], now: datetime
) -> None:
    """Check every declared value given (a repeatable option value by value); the first that
    cannot be read is a UsageError naming its flag."""
    for parameter, item in declarations.items():
        given = arguments.get(parameter)
        if given is None:
            continue
        for text in given if isinstance(given, list | tuple) else (given,):
            try:
                item.value.check(text, item.name, now)
            except InvalidInput as exc:
                message = exc.message
                if not message.startswith(item.name):
                    message = f"{item.name}: {message}"
                raise UsageError(message, hint=exc.hint) from None
