"""Subscriptions of one customer that overlap in time.

A customer may hold several subscriptions at once (a main plan and an add-on plan, or two
licences of one plan): each bills its own base fee and its own charges, on one invoice. That
is also what a second `subscription create` does when the operator meant to move the customer
to another plan, so a new subscription that overlaps another is reported, with the command
that moves a subscription instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from neruba_cli.domain.timestamps import format_ts


@dataclass(frozen=True)
class Held:
    """A subscription the customer already has: its plan (the latest phase) and the meters its
    phases charge for."""

    id: str
    plan: str
    start: datetime
    end: datetime | None
    meters: frozenset[str]


def overlapping(held: Sequence[Held], start: datetime) -> list[Held]:
    """The subscriptions still running at or after `start` (a new one has no end yet)."""
    return [item for item in held if item.end is None or item.end > start]


def overlap_warning(
    customer: str, plan: str, meters: frozenset[str], start: datetime, other: Held
) -> str:
    """What an operator needs to know: both bill, which meters twice, and how to move instead."""
    until = f"until {format_ts(other.end)}" if other.end else "with no end"
    shared = sorted(meters & other.meters)
    twice = f" and usage of {', '.join(shared)} is billed by both" if shared else ""
    message = (
        f"customer {customer} already has subscription {other.id} ({other.plan}, from "
        f"{format_ts(other.start)} {until}), which overlaps this one: each bills its base "
        f"fee{twice}"
    )
    if other.start < start and other.plan != plan:
        message += (
            f"; to move a customer to another plan, use `neruba subscription change "
            f"{other.id} --plan {plan} --at {format_ts(start)}` rather than a second subscription"
        )
    return message
