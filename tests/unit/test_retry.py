"""db/retry.py: which database errors mean "run the transaction again"."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from neruba_cli.db.retry import retrying, transient


class _MySQLError(Exception):
    pass


class _PGError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def _wrapped(orig: Exception) -> OperationalError:
    return OperationalError("UPDATE ledger_accounts ...", {}, orig)


def test_deadlock_victims_are_transient_other_errors_are_not() -> None:
    assert transient(_wrapped(_MySQLError(1213, "Deadlock found")))
    assert transient(_wrapped(_PGError("40P01")))
    assert transient(_wrapped(_PGError("40001")))
    assert not transient(_wrapped(_MySQLError(1062, "Duplicate entry")))
    assert not transient(_wrapped(_PGError("23505")))
    assert not transient(ValueError("no database involved"))
    # MariaDB rolls the whole transaction back; ROLLBACK TO SAVEPOINT then fails with 1305,
    # raised while handling the deadlock: the deadlock in the chain still counts.
    try:
        try:
            raise _wrapped(_MySQLError(1213, "Deadlock found"))
        except OperationalError:
            raise _wrapped(_MySQLError(1305, "SAVEPOINT sa_savepoint_1 does not exist"))  # noqa: B904
    except OperationalError as exc:
        assert transient(exc)


def test_retrying_reruns_only_transient_failures() -> None:
    calls: list[int] = []

    def deadlocks_twice() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _wrapped(_PGError("40P01"))
        return "written"

    assert retrying(deadlocks_twice) == "written" and len(calls) == 3

    def always() -> None:
        raise _wrapped(_MySQLError(1213, "Deadlock found"))

    with pytest.raises(OperationalError):
        retrying(always, attempts=2)

    duplicates: list[int] = []

    def duplicate() -> None:
        duplicates.append(1)
        raise IntegrityError("INSERT", {}, _MySQLError(1062, "Duplicate entry"))

    with pytest.raises(IntegrityError):
        retrying(duplicate)
    assert len(duplicates) == 1
