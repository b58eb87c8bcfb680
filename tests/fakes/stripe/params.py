"""Form parameters: Stripe's bracket notation decoded, and the typed readers every handler
uses to refuse what Stripe would refuse."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from tests.fakes.stripe.errors import FakeStripeError

Obj = dict[str, Any]
Params = dict[str, Any]

_INTEGER = re.compile(r"-?\d+")
_KEY = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_KEY_PART = re.compile(r"\[([^\[\]]*)\]")
LIST_PARAMS = frozenset({"limit", "starting_after", "ending_before", "expand"})


def parse_form(pairs: Iterable[tuple[str, str]]) -> Params:
    """Decode Stripe's bracket notation (``a[b][0]=x``) into nested dicts of strings.

    Arrays stay dicts keyed "0", "1", ... (``a[]`` appends); handlers turn them into lists where a
    list is expected, because only they know whether ``metadata[0]`` is a key or an index.
    """
    root: Params = {}
    for key, value in pairs:
        match = _KEY.fullmatch(key)
        parts = [match.group(1), *_KEY_PART.findall(match.group(2))] if match else [key]
        node = root
        for depth, raw_part in enumerate(parts):
            part = str(len(node)) if raw_part == "" else raw_part
            if depth == len(parts) - 1:
                if isinstance(node.get(part), dict):
                    raise FakeStripeError(400, f"Invalid hash for parameter {key}", param=key)
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise FakeStripeError(400, f"Invalid value for parameter {key}", param=key)
                node = child
    return root


def _label(where: str, name: str) -> str:
    return f"{where}[{name}]" if where else name


def missing_param(param: str) -> FakeStripeError:
    return FakeStripeError(
        400, f"Missing required param: {param}.", code="parameter_missing", param=param
    )


def allow_only(params: Params, allowed: Iterable[str], where: str = "") -> None:
    """Refuse parameters this server does not implement, as Stripe refuses unknown ones."""
    allowed = set(allowed)
    for name in params:
        if name not in allowed:
            param = _label(where, name)
            raise FakeStripeError(
                400,
                f"Received unknown parameter: {param}",
                code="parameter_unknown",
                param=param,
            )


def str_param(params: Params, name: str, *, required: bool = False, where: str = "") -> str | None:
    value = params.get(name)
    param = _label(where, name)
    if value is None:
        if required:
            raise missing_param(param)
        return None
    if not isinstance(value, str):
        raise FakeStripeError(400, f"Invalid string: {param} must be a string", param=param)
    if required and value == "":
        raise FakeStripeError(
            400,
            f"You passed an empty string for '{param}'. We assume empty values are an attempt to "
            f"unset a parameter; however '{param}' cannot be unset. You should remove '{param}' "
            "from your request or supply a non-empty value.",
            code="parameter_invalid_empty",
            param=param,
        )
    return value


def int_param(
    params: Params,
    name: str,
    *,
    required: bool = False,
    minimum: int | None = None,
    maximum: int | None = None,
    where: str = "",
) -> int | None:
    value = str_param(params, name, required=required, where=where)
    if value is None:
        return None
    param = _label(where, name)
    if not _INTEGER.fullmatch(value):
        raise FakeStripeError(
            400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=param
        )
    number = int(value)
    if minimum is not None and number < minimum:
        raise FakeStripeError(
            400, f"This value must be greater than or equal to {minimum}.", param=param
        )
    if maximum is not None and number > maximum:
        raise FakeStripeError(
            400, f"This value must be less than or equal to {maximum}.", param=param
        )
    return number


def bool_param(params: Params, name: str) -> bool | None:
    value = str_param(params, name)
    if value is None:
        return None
    if value not in ("true", "false"):
        raise FakeStripeError(400, f"Invalid boolean: {value}", param=name)
    return value == "true"


def enum_param(
    params: Params, name: str, choices: Iterable[str], *, required: bool = False, where: str = ""
) -> str | None:
    value = str_param(params, name, required=required, where=where)
    choices = tuple(choices)
    if value is not None and value not in choices:
        param = _label(where, name)
        raise FakeStripeError(
            400, f"Invalid {param}: must be one of {', '.join(choices)}", param=param
        )
    return value


def currency_param(params: Params) -> str | None:
    value = str_param(params, "currency")
    if value is None:
        return None
    if not re.fullmatch(r"[A-Za-z]{3}", value):
        raise FakeStripeError(400, f"Invalid currency: {value}", param="currency")
    return value.lower()


def as_list(value: Any, param: str) -> list[Any]:
    if isinstance(value, dict) and all(key.isdigit() for key in value):
        return [value[key] for key in sorted(value, key=int)]
    raise FakeStripeError(400, f"Invalid array: {param} must be an array", param=param)


def merge_metadata(params: Params, current: dict[str, str] | None = None) -> dict[str, str]:
    """Merge ``metadata`` into ``current`` like Stripe: an empty value deletes the key and
    ``metadata=`` (empty) clears everything."""
    result = dict(current or {})
    raw = params.get("metadata")
    if raw is None:
        return result
    if raw == "":
        return {}
    if not isinstance(raw, dict):
        raise FakeStripeError(400, "Invalid object: metadata must be a hash", param="metadata")
    for key, value in raw.items():
        param = f"metadata[{key}]"
        if not isinstance(value, str):
            raise FakeStripeError(400, f"Invalid string: {param} must be a string", param=param)
        if len(key) > 40:
            raise FakeStripeError(400, "Metadata keys can have up to 40 characters.", param=param)
        if value == "":
            result.pop(key, None)
        elif len(value) > 500:
            raise FakeStripeError(
                400, "Metadata values can have up to 500 characters.", param=param
            )
        else:
            result[key] = value
    if len(result) > 50:
        raise FakeStripeError(400, "Metadata can have up to 50 keys.", param="metadata")
    return result


def created_filter(params: Params, name: str = "created") -> Callable[[Obj], bool]:
    """``created=T`` or ``created[gt|gte|lt|lte]=T``, as Stripe list endpoints take it."""
    raw = params.get(name)
    if raw is None:
        return lambda obj: True
    if isinstance(raw, str):
        exact = int_param(params, name)
        return lambda obj: created_of(obj) == exact
    allow_only(raw, ("gt", "gte", "lt", "lte"), where=name)
    bounds = {op: int_param(raw, op, where=name) for op in raw}

    def keep(obj: Obj) -> bool:
        created = created_of(obj)
        return all(
            (op == "gt" and created > bound)
            or (op == "gte" and created >= bound)
            or (op == "lt" and created < bound)
            or (op == "lte" and created <= bound)
            for op, bound in bounds.items()
            if bound is not None
        )

    return keep


def created_of(obj: Obj) -> int:
    value = obj["created"] if "created" in obj else obj["date"]
    return int(value)


def mask_key(key: str) -> str:
    """Stripe shows a rejected key with everything but its type prefix and last 4 masked."""
    match = re.match(r"(?:sk|rk|pk)_(?:test|live)_", key)
    prefix = match.group(0) if match else ""
    rest = len(key) - len(prefix)
    if rest <= 8:
        return prefix + "*" * rest
    return prefix + "*" * (rest - 4) + key[-4:]
