"""Billing sweeps: what a billing run could not bill, and what it will not be able to.

- `billing.unbilled`: the customers the latest run of each month (that covered them) skipped
  because their invoice could not be priced or stored (services/billing/runs.py,
  `failing_customers`): the month is billed except for them.
- `events.readings`: stored events whose value a meter reads (a property of the event) is
  beyond what any invoice holds (domain/invoice_limits.py, `reading_problem`): the next run
  of their month cannot bill their customer. Ingest refuses such values; these were stored
  before it did, or by another path. Only meters that price a property's value are read
  (`count` and `unique_count` price no value; quantities are bounded by their column).
"""

from __future__ import annotations

from sqlalchemy import Connection, select

from neruba_cli.db.schema import Project
from neruba_cli.db.tables import customers_t
from neruba_cli.domain.aggregation import MeterSpec
from neruba_cli.domain.invoice_limits import reading_problem
from neruba_cli.services.billing import culprits
from neruba_cli.services.billing.plan import plan_versions
from neruba_cli.services.billing.runs import failed_labels, failing_customers
from neruba_cli.services.ops.check.result import CheckResult, Sweep


def unbilled(conn: Connection, project: Project, result: CheckResult) -> None:
    for label in failed_labels(conn, project.id):
        for failure in failing_customers(conn, project.id, label):
            events = ", ".join(e["idempotency_key"] for e in failure["events"])
            caused = f" (caused by event {events})" if events else ""
            result.fail(
                f"{label}: customer {failure['customer']} not billed "
                f"({failure['period_start'][:10]} → {failure['period_end'][:10]}): "
                f"{failure['reason']}{caused}; rerun `neruba run bill --period {label}` "
                "once the cause is dealt with"
            )
        result.checked += 1


def readings(conn: Connection, project: Project, result: CheckResult) -> None:
    specs: dict[MeterSpec, None] = {}
    for version in plan_versions(conn, project).values():
        for meter in version.meters.values():
            spec = meter.spec
            if spec.property_name is not None and spec.aggregation not in (
                "count",
                "unique_count",
            ):
                specs[spec] = None
    if not specs:
        return
    # Read before streaming: a second query on the connection while an unbuffered (MariaDB)
    # result is open would cut that result short.
    names = dict(
        conn.execute(
            select(customers_t.c.id, customers_t.c.external_id).where(
                customers_t.c.project_id == project.id
            )
        ).all()
    )
    for spec in sorted(specs, key=lambda s: (s.code, s.field)):
        for customer_id, key, value in culprits.readings(conn, project.id, spec):
            result.checked += 1
            problem = reading_problem(value)
            if problem is None:
                continue
            result.fail(
                f"event {key} (customer {names.get(customer_id, customer_id)}): meter "
                f"{spec.code} reads {spec.field} = {culprits.value_text(value)}: {problem}, "
                "so no run can bill its customer"
            )


SWEEPS: list[tuple[str, str, Sweep]] = [
    ("billing.unbilled", "the latest run of each month billed every customer", unbilled),
    ("events.readings", "every value a meter reads can be billed", readings),
]
