"""`neruba simulate --catalog NEW.toml --period P`: what a past month would have billed on a
candidate catalog, against what was actually issued. Writes nothing.

The seam is the billing run's own pipeline (services/billing/plan.py), used read-only:
**plan** the month's (customer, billing period) items from the stored subscriptions, swap
each phase's stored plan version for the candidate's plan of the same code, then **build**
(aggregate the stored usage in the database, price with the pure domain). The candidate is
read the way `catalog apply` would store it: plans the file names replace the stored ones,
plans it does not name keep theirs (with any meter the file redefines), so the simulation
shows what applying the file and rerunning the month would bill. A plan's interval and
currency cannot change in a simulation: the billing periods are the stored subscription's.

The issued side is what `compare` calls Neruba's: the finalized and paid documents of the
month (corrections included). Everything runs inside one transaction that is rolled back at
the end, a safety net for a pipeline that only reads.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from neruba_cli.db.schema import Project
from neruba_cli.domain import compare as domain
from neruba_cli.domain.catalog import Catalog, MeterDef, PlanDef, fingerprint, version_document
from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.invoice import PhasePlan
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.analysis.compare import neruba_sides
from neruba_cli.services.billing import plan as billing_plan
from neruba_cli.services.billing.plan import WorkItem
from neruba_cli.services.catalog import store as catalog_store

LABELS = domain.Labels(ours="simulated", theirs="issued")
ISSUED = "finalized and paid invoices"


def simulate(
    engine: Engine,
    project: Project,
    data: Mapping[str, Any],
    *,
    source: str,
    text: str | None = None,
    label: str,
    customers: Sequence[str] = (),
    now: datetime,
) -> domain.Report:
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            with Session(bind=conn) as session:
                candidate = catalog_store.parse_for_project(
                    session, project, data, source=source, text=text
                )
                stored = catalog_store.stored_meters(session, project)
                current = {
                    p.plan.code: p.fingerprint
                    for p in catalog_store.current_plans(session, project)
                }
            items = billing_plan.plan_items(conn, project, label, now, customers)
            billing_plan.attach_existing(conn, project, items)
            billing_plan.restore_carried(conn, items)
            used = substitute(items, candidate, stored)
            built = billing_plan.build(conn, project, items) if items else {}
            ours = simulated_sides(items, built)
            theirs, notes = neruba_sides(conn, project, label, customers)
        finally:
            transaction.rollback()
    results = domain.assess(
        domain.match(ours, theirs), tolerance=Decimal(0), taxonomy=domain.SIMULATE_TAXONOMY
    )
    meters = {**stored, **{meter.code: meter for meter in candidate.meters}}
    unused = [
        plan.code
        for plan in candidate.plans
        if plan.code not in used
        and current.get(plan.code) != fingerprint(version_document(plan, meters))
    ]
    if unused:
        notes.append(
            f"plan(s) {', '.join(sorted(unused))} of {source} change but bill no subscription "
            f"in {label}: nothing to compare for them"
        )
    return domain.Report(
        kind="simulate",
        period=label,
        baseline=ISSUED,
        labels=LABELS,
        tolerance=Decimal(0),
        results=tuple(results),
        notes=tuple(notes),
        catalog=source,
    )


def substitute(
    items: Sequence[WorkItem], candidate: Catalog, stored: Mapping[str, MeterDef]
) -> set[str]:
    """Swap the candidate's plans (and meters) into every item's subscription phases, in
    place; the codes of the candidate's plans that some phase uses."""
    plans = {plan.code: plan for plan in candidate.plans}
    changed = {meter.code: meter for meter in candidate.meters}
    meters = {**stored, **changed}
    used: set[str] = set()
    swapped: dict[str, PhasePlan] = {}
    for item in items:
        terms = []
        for term in item.terms:
            phases = []
            for phase_plan in term.phases:
                code = phase_plan.phase.key.partition("@")[0]
                if code in plans:
                    used.add(code)
                key = f"{phase_plan.phase.key}|{phase_plan.fingerprint}"
                if key not in swapped:
                    swapped[key] = _candidate(phase_plan, plans.get(code), changed, meters)
                phases.append(replace(swapped[key], phase=phase_plan.phase))
            terms.append(replace(term, phases=tuple(phases)))
        item.terms = terms
    return used


def _candidate(
    phase_plan: PhasePlan,
    plan: PlanDef | None,
    changed: Mapping[str, MeterDef],
    meters: Mapping[str, MeterDef],
) -> PhasePlan:
    current = phase_plan.plan
    if plan is None:
        if not any(charge.meter in changed for charge in current.charges):
            return phase_plan
        plan = current
    elif (plan.interval, plan.currency) != (current.interval, current.currency):
        raise InvalidInput(
            f"plan {plan.code}: the candidate bills {plan.currency} per {plan.interval}, the "
            f"subscriptions' version {current.currency} per {current.interval}",
            hint="a simulation reprices the stored billing periods; it cannot change a plan's "
            "interval or currency",
        )
    used = {charge.meter: meters[charge.meter] for charge in plan.charges}
    return PhasePlan(
        phase=phase_plan.phase,
        plan=plan,
        fingerprint="candidate:" + fingerprint(version_document(plan, used)),
        meters={code: meter.spec for code, meter in used.items()},
    )


def simulated_sides(
    items: Sequence[WorkItem], built: Mapping[Any, Any]
) -> list[domain.CustomerSide]:
    """One side per customer: the lines of every invoice the month would bill it."""
    lines: dict[str, list[domain.SourceLine]] = defaultdict(list)
    documents: dict[str, list[str]] = defaultdict(list)
    currencies: dict[str, str] = {}
    for item in items:
        invoice = built[item.key]
        customer = item.customer.external_id
        name = f"simulated:{format_ts(item.period.start)}"
        lines[customer] += domain.invoice_lines(invoice.content["lines"], name)
        documents[customer].append(name)
        currencies.setdefault(customer, item.customer.currency)
    return [
        domain.CustomerSide(customer, currencies[customer], tuple(lines[customer]), tuple(docs))
        for customer, docs in documents.items()
    ]
