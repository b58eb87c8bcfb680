"""Uniqueness decided by the database, never by a read-then-write check (which races)."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from neruba_cli.db.schema import Base
from neruba_cli.domain.errors import AlreadyExists


def add_unique(session: Session, row: Base, conflict: str) -> None:
    """Insert `row`; a unique-key violation becomes AlreadyExists(conflict).

    The insert runs in a savepoint, so a conflict leaves the surrounding transaction and the
    objects it loaded usable.
    """
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        raise AlreadyExists(conflict) from None
