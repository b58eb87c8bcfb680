"""A billing run for a month that has not started yet.

`run bill --period 2027-05` typed in December 2026 (meaning 2026-05) would create drafts and
take invoice numbers for a month in which nothing has happened. A run names a month, and reads
it in the project's time zone and in each billed customer's own, so the month has started when
its earliest first instant among those time zones is at or before the run's as-of instant
(`--as-of`, or now). The as-of instant exactly at that start counts as started: the month is
then the current one. A month that has not started is refused unless the operator asks for it
(`--allow-future`: billing fees in advance ahead of the month); a dry run, which writes
nothing, is computed with a warning instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from neruba_cli.domain.billing_periods import month_label
from neruba_cli.domain.errors import UsageError
from neruba_cli.domain.periods import month_period
from neruba_cli.domain.timestamps import as_utc, format_ts

ALLOW_FLAG = "--allow-future"


@dataclass(frozen=True)
class NotStarted:
    """Why a run of month `label` at `as_of` bills a month that has not started."""

    label: str
    starts: datetime  # the month's earliest first instant among the run's time zones
    as_of: datetime
    suggestion: str | None  # the same month of the as-of year, when that one has started

    @property
    def message(self) -> str:
        return (
            f"period {self.label} has not started: it starts at {format_ts(self.starts)}, "
            f"after the run's as-of instant {format_ts(self.as_of)}; billing it would create "
            "drafts and take invoice numbers for a month with no usage yet"
        )

    @property
    def hint(self) -> str:
        advance = f"pass {ALLOW_FLAG} to bill it in advance"
        if self.suggestion is None:
            return advance
        return f"did you mean {self.suggestion}? Or {advance}"


def not_started(
    label: str, *, as_of: datetime, project_tz: str, time_zones: Iterable[str] = ()
) -> NotStarted | None:
    """The reason month `label` (YYYY-MM) has not started at `as_of`, or None when it has
    started in at least one of `project_tz` and `time_zones` (the billed customers' zones).

    The earliest start is taken so that a month already running for any customer the run
    bills is never refused."""
    moment = as_utc(as_of)
    starts = min(month_period(label, tz).start for tz in {project_tz, *time_zones})
    if moment >= starts:
        return None
    return NotStarted(label, starts, moment, _same_month_this_year(label, moment, project_tz))


def refusal(reason: NotStarted) -> UsageError:
    """The usage error (exit 2) that refuses a run of a month that has not started."""
    return UsageError(reason.message, hint=reason.hint)


def _same_month_this_year(label: str, as_of: datetime, tz: str) -> str | None:
    """`2026-05` for `2027-05` at an instant of 2026: the likely typo, when it has started."""
    year = month_label(as_of, tz)[:4]
    if label[:4] == year:
        return None
    candidate = f"{year}-{label[5:7]}"
    return candidate if month_period(candidate, tz).start <= as_of else None
