"""The customer probably meant when an id is unknown (`globx` for `globex`).

A bounded read of the project's external ids: a project with more customers than are cheap
to compare gets no hint. Kept apart from customers.py so that the ledger and ingest, which
customers.py's own imports reach, can use it too.
"""

from __future__ import annotations

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from neruba_cli.db.schema import Customer, Project
from neruba_cli.domain.errors import NotFound
from neruba_cli.domain.suggest import did_you_mean

HINT_CANDIDATES = 10_000  # a project with more customers gets no near-miss hint


def ids_for_hints(db: Session | Connection, project: Project) -> list[str] | None:
    """The project's external ids, or None when there are too many to compare cheaply."""
    found = db.scalars(
        select(Customer.external_id)
        .where(Customer.project_id == project.id)
        .limit(HINT_CANDIDATES + 1)
    ).all()
    return list(found) if len(found) <= HINT_CANDIDATES else None


def customer_not_found(db: Session | Connection, project: Project, ident: str) -> NotFound:
    """`customer 'globx' does not exist in project 'acme' — did you mean 'globex'?`"""
    near = did_you_mean(ident, ids_for_hints(db, project) or ())
    return NotFound(
        f"customer {ident!r} does not exist in project {project.slug!r}"
        + (f" — {near}" if near else "")
    )
