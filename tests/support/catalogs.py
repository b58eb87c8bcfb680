"""Catalog builders: a meter, a plan, its charges, put together as the TOML `neruba catalog
apply` reads. A test module says what its shop sells in a few lines; the TOML details stay here.

    CATALOG = catalog(
        meters=[meter("api_calls", "count")],
        plans=[plan("pro", "49.00", per_unit("api_calls", "0.01"))],
    )
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w

from tests.support.cli import Cli, ok

# The catalog shipped in examples/: meters api_calls, tokens, storage; plans starter and pro.
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "configs" / "catalog.toml"
INF = float("inf")


def meter(code: str, aggregation: str, **fields: Any) -> dict[str, Any]:
    """A meter: its code, its aggregation, and any other field as the catalog spells it."""
    return {"code": code, "aggregation": aggregation, **fields}


def plan(
    code: str,
    base_fee: str,
    *charges: dict[str, Any],
    currency: str = "USD",
    interval: str = "month",
    timing: str = "arrears",
    **fields: Any,
) -> dict[str, Any]:
    """A plan with a base fee (in arrears unless told), its charges, and any other field
    (name, proration, ...) as the catalog spells it."""
    made: dict[str, Any] = {
        "code": code,
        "currency": currency,
        "interval": interval,
        "base_fee": base_fee,
        "base_fee_timing": timing,
        **fields,
    }
    if charges:
        made["charges"] = list(charges)
    return made


def per_unit(meter_code: str, unit_amount: str, **fields: Any) -> dict[str, Any]:
    return {"meter": meter_code, "model": "per_unit", "unit_amount": unit_amount, **fields}


def graduated(meter_code: str, *tiers: dict[str, Any]) -> dict[str, Any]:
    return {"meter": meter_code, "model": "graduated", "tiers": list(tiers)}


def tier(up_to: float, unit_amount: str, **fields: Any) -> dict[str, Any]:
    """One tier of a graduated charge; `up_to=INF` for the last."""
    return {"up_to": up_to, "unit_amount": unit_amount, **fields}


def charge(meter_code: str, model: str, **fields: Any) -> dict[str, Any]:
    """Any other pricing model (package, percentage, ...), its fields as the catalog spells them."""
    return {"meter": meter_code, "model": model, **fields}


def catalog(
    meters: list[dict[str, Any]] | None = None, plans: list[dict[str, Any]] | None = None
) -> str:
    """The catalog as TOML."""
    document: dict[str, Any] = {}
    if meters:
        document["meters"] = meters
    if plans:
        document["plans"] = plans
    return tomli_w.dumps(document)


def apply_catalog(
    cli: Cli, folder: Path, text: str, project: str = "acme", name: str = "catalog.toml"
) -> dict[str, Any]:
    """Write `text` to FOLDER/NAME and `neruba catalog apply` it to `project`; its JSON."""
    path = folder / name
    path.write_text(text)
    return dict(ok(cli, "catalog", "apply", str(path), project=project))
