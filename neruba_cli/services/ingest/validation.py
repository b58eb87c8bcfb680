"""One input line in, a valid event or charge (with its payload hash) or a Reject out.

The rules are the domain's (domain/events.py, domain/charges.py); this module adds what
needs the project: the catalog's meters (with the near one for a misspelt name), whether a
meter allows negative quantities, whether the property a meter reads is a number billing
can read exactly (domain/meter_values.py), and a note of events whose quantity their meter ignores
(a `count` meter counts events: `"quantity": 3` counts as 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Any

from neruba_cli.domain.catalog import MeterDef
from neruba_cli.domain.charges import ChargeInput, validate_charge
from neruba_cli.domain.events import EventChecker, EventInput, Rejected, line_digest
from neruba_cli.domain.meter_values import check_meter_value
from neruba_cli.domain.suggest import did_you_mean
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
    file: str | None = None  # the input file, as messages name it
    line_digest: int | None = None  # events from JSON lines: domain.events.line_digest


NOTED_LINES = 5  # lines a warning names; its count is always exact
HINTED_NAMES = 1000  # distinct unknown names given a near-miss hint in one import


@dataclass
class _Ignored:
    """Events of one count meter that carry a quantity other than 1."""

    count: int = 0
    lines: list[tuple[str | None, int]] = field(default_factory=list)


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
        digests: bool = False,
    ) -> None:
        """`digests`: the lines are JSON lines, each event stored with its line digest."""
        self.meters = meters
        self.digests = digests
        self.charges_only = charges_only
        self.now, self.max_future, self.assume_tz = now, max_future, assume_tz
        self.check = EventChecker(now=now, max_future=max_future, assume_tz=assume_tz).check
        self.unknown_meters: dict[str, str] = {}  # name -> the reject's reason, hint included
        self.ignored: dict[str, _Ignored] = {}  # count meter -> events given another quantity

    def __call__(self, file: str | None, number: int, raw: bytes, obj: Any) -> Pending | Reject:
        if isinstance(obj, LineError):
            return Reject(number, obj.reason, raw_text(raw), file=file)
        try:
            if self.charges_only or (isinstance(obj, dict) and obj.get("type") == "charge"):
                charge = validate_charge(
                    obj, now=self.now, max_future=self.max_future, assume_tz=self.assume_tz
                )
                return Pending(number, raw, charge, charge.payload_hash(), file=file)
            event, digest, stamp, quantity = self.check(obj)
        except Rejected as exc:
            return Reject(number, str(exc), raw_text(raw), file=file)
        meter = self.meters.get(event.meter)
        if meter is None:
            return Reject(number, self._unknown_meter(event.meter), raw_text(raw), file=file)
        if meter.spec.property_name is not None:  # the property it reads, as billing will
            try:
                check_meter_value(meter.spec, event.properties)
            except Rejected as exc:
                return Reject(number, str(exc), raw_text(raw), file=file)
        if quantity[0] == "-" and not meter.allow_negative:  # canonical text: never "-0"
            reason = f"negative quantity, and meter {event.meter} does not allow it"
            return Reject(number, reason, raw_text(raw), file=file)
        if event.operation == "remove" and meter.spec.aggregation != "unique_count":
            reason = (
                f'operation "remove" applies to unique_count meters; meter {event.meter} is a '
                f"{meter.spec.aggregation}"
                + (
                    " (send a negative quantity to lower it)"
                    if meter.spec.aggregation == "sum"
                    else ""
                )
            )
            return Reject(number, reason, raw_text(raw), file=file)
        if quantity != "1" and meter.spec.aggregation == "count":
            self._ignore(event.meter, file, number)
        lined = line_digest(raw, self.assume_tz) if self.digests else None
        return Pending(number, raw, event, digest, stamp, quantity, file, lined)

    def _unknown_meter(self, name: str) -> str:
        """The reason, with the near meter when there is one (worked out once per name)."""
        reason = self.unknown_meters.get(name)
        if reason is None:
            if len(self.unknown_meters) >= HINTED_NAMES:  # a file of junk: no time on hints
                return f"unknown meter {name!r}"
            hint = did_you_mean(name, self.meters)
            reason = f"unknown meter {name!r}" + (f" — {hint}" if hint else "")
            self.unknown_meters[name] = reason
        return reason

    def _ignore(self, meter: str, file: str | None, line: int) -> None:
        noted = self.ignored.setdefault(meter, _Ignored())
        noted.count += 1
        if len(noted.lines) < NOTED_LINES:
            noted.lines.append((file, line))

    def warnings(self) -> list[str]:
        """What was stored as asked but will not bill as the input may have meant."""
        return [
            f"{noted.count} event{'s' if noted.count != 1 else ''} on count meter {meter} "
            f"carry a quantity other than 1 ({_lines(noted)}): a count meter counts events, "
            "so each counts as 1"
            for meter, noted in sorted(self.ignored.items())
        ]


def _lines(noted: _Ignored) -> str:
    """`events.jsonl lines 4, 9; more.jsonl line 2, ...`: the first lines, by file."""
    by_file: dict[str | None, list[str]] = {}
    for file, line in noted.lines:
        by_file.setdefault(file, []).append(str(line))
    parts = [
        f"{file + ' ' if file else ''}line{'s' if len(lines) > 1 else ''} {', '.join(lines)}"
        for file, lines in by_file.items()
    ]
    more = ", ..." if noted.count > len(noted.lines) else ""
    return "; ".join(parts) + more
