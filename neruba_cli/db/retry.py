"""Running a transaction again when the database aborted it to break a deadlock.

MariaDB and PostgreSQL abort one of two transactions that wait on each other (MariaDB error
1213, PostgreSQL SQLSTATE 40P01; 40001 for a serialization failure). The aborted one wrote
nothing, so running the whole unit of work again is safe and is what the database asks for.
The services keep a fixed lock order so this is rare; InnoDB's unique-index checks on
concurrent inserts of one key can still pick a victim.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from sqlalchemy.exc import DBAPIError

T = TypeVar("T")
ATTEMPTS = 4
_MYSQL_CODES = frozenset({1213})  # ER_LOCK_DEADLOCK
_PG_STATES = frozenset({"40P01", "40001"})


def driver_errors(exc: BaseException) -> Iterator[BaseException]:
    """The driver's own errors behind a SQLAlchemy error and the errors it was raised from
    (a failed ROLLBACK TO SAVEPOINT hides the deadlock that caused it), nearest first."""
    seen: BaseException | None = exc
    for _depth in range(6):
        if seen is None:
            return
        orig = getattr(seen, "orig", None)
        if orig is not None:
            yield orig
        seen = seen.__cause__ or seen.__context__


def transient(exc: BaseException) -> bool:
    """Whether the error (or one it was raised from, e.g. a failed ROLLBACK TO SAVEPOINT
    after the server had already rolled the transaction back) is a deadlock victim's."""
    for orig in driver_errors(exc):
        args = getattr(orig, "args", ())
        if args and args[0] in _MYSQL_CODES:
            return True
        if getattr(orig, "sqlstate", None) in _PG_STATES:
            return True
    return False


def retrying(action: Callable[[], T], *, attempts: int = ATTEMPTS) -> T:
    """`action()` (one whole transaction), again after a short random pause while the
    database picks it as a deadlock victim."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except DBAPIError as exc:
            if attempt == attempts or not transient(exc):
                raise
            time.sleep(random.uniform(0.02, 0.1) * attempt)
    raise AssertionError("unreachable")
