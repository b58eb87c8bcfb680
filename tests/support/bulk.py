"""Large set-ups written straight into the tables, a thousand rows per statement: what the
CLI would store one command (or one import row) at a time, for tests about thousands of
customers that are not about setting them up."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, insert, select

from neruba_cli.db.ids import new_id
from neruba_cli.db.tables import customers_t, subscription_phases_t, subscriptions_t

CHUNK = 1000


def clone_subscribed(engine: Engine, template: str, names: list[str]) -> None:
    """New customers `names`, each a copy of customer `template` (external id) with copies of
    its subscriptions and their phases: the same plan versions, dates and settings."""
    with engine.begin() as conn:
        customer = conn.execute(
            select(customers_t).where(customers_t.c.external_id == template)
        ).one()
        subscriptions = conn.execute(
            select(subscriptions_t).where(subscriptions_t.c.customer_id == customer.id)
        ).all()
        phases = conn.execute(
            select(subscription_phases_t).where(
                subscription_phases_t.c.subscription_id.in_([s.id for s in subscriptions])
            )
        ).all()
        new_customers: list[dict[str, Any]] = []
        new_subscriptions: list[dict[str, Any]] = []
        new_phases: list[dict[str, Any]] = []
        for name in names:
            customer_id = new_id("cus")
            new_customers.append({**customer._asdict(), "id": customer_id, "external_id": name})
            for subscription in subscriptions:
                subscription_id = new_id("sub")
                new_subscriptions.append(
                    {**subscription._asdict(), "id": subscription_id, "customer_id": customer_id}
                )
                new_phases += [
                    {**phase._asdict(), "id": new_id("sph"), "subscription_id": subscription_id}
                    for phase in phases
                    if phase.subscription_id == subscription.id
                ]
        for table, rows in (
            (customers_t, new_customers),
            (subscriptions_t, new_subscriptions),
            (subscription_phases_t, new_phases),
        ):
            for start in range(0, len(rows), CHUNK):
                conn.execute(insert(table), rows[start : start + CHUNK])
