"""One input line in, a valid event or charge (with its payload hash) or a Reject out.

The rules are the domain's (domain/events.py, domain/charges.py); this module adds what
needs the project: the catalog's meters and whether a meter allows negative quantities.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Any

from neruba_cli.domain.catalog import MeterDef
from neruba_cli.domain.charges import ChargeInput, validate_charge
from neruba_cli.domain.events import EventChecker, EventInput, Rejected
from neruba_cli.services.ingest.readers import LineError
from neruba_cli.services.ingest.rejects import Reject, raw_text


@dataclass(slots=True)
class Pending:
    """A valid line waiting to be written."""

    line: int
    raw: bytes
    record: EventInput | ChargeInput
    digest: str
    stamp: str = ""  # events: the UTC timestamp's isoformat (CheckedEvent.stamp)
    quantity: str = ""  # events: the quantity's canonical text


class Validator:
    """Checks lines against the domain rules and the project's meters; `charges_only` reads
    every line as a one-off charge (`--format charges`), otherwise a line is a charge when
    its `type` says so."""

    def __init__(
        self,
        meters: dict[str, MeterDef],
        *,
        charges_only: bool,
        now: datetime,
        max_future: timedelta,
        assume_tz: tzinfo | None,
    ) -> None:
        self.meters = meters
        self.charges_only = charges_only
        self.now, self.max_future, self.assume_tz = now, max_future, assume_tz
        self.check = EventChecker(now=now, max_future=max_future, assume_tz=assume_tz).check

    def __call__(self, number: int, raw: bytes, obj: Any) -> Pending | Reject:
        if isinstance(obj, LineError):
            return Reject(number, obj.reason, raw_text(raw))
        try:
            if self.charges_only or (isinstance(obj, dict) and obj.get("type") == "charge"):
                charge = validate_charge(
                    obj, now=self.now, max_future=self.max_future, assume_tz=self.assume_tz
                )
                return Pending(number, raw, charge, charge.payload_hash())
            event, digest, stamp, quantity = self.check(obj)
        except Rejected as exc:
            return Reject(number, str(exc), raw_text(raw))
        meter = self.meters.get(event.meter)
        if meter is None:
            return Reject(number, f"unknown meter {event.meter!r}", raw_text(raw))
        if quantity[0] == "-" and not meter.allow_negative:  # canonical text: never "-0"
            reason = f"negative quantity, and meter {event.meter} does not allow it"
            return Reject(number, reason, raw_text(raw))
        return Pending(number, raw, event, digest, stamp, quantity)
