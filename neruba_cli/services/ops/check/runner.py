"""Runs every sweep, in order, inside one snapshot of the database."""

from __future__ import annotations

from sqlalchemy import Connection, Engine

from neruba_cli.db.schema import Project
from neruba_cli.services.ops.check import billing, events, ingest, invoices, ledger
from neruba_cli.services.ops.check.result import CheckReport, CheckResult, Sweep

# (name, what it holds, the sweep): the order of `neruba check`'s output.
SWEEPS: list[tuple[str, str, Sweep]] = [
    *ledger.SWEEPS,
    *invoices.SWEEPS,
    *events.SWEEPS,
    *ingest.SWEEPS,
    *billing.SWEEPS,
]


def run_consistent(engine: Engine, project: Project) -> CheckReport:
    """The sweep inside one snapshot of the database, so a grant or a payment committed while
    it runs cannot make two of its queries disagree (REPEATABLE READ on MariaDB and
    PostgreSQL; a SQLite read transaction is a snapshot already)."""
    with engine.connect() as conn:
        if conn.dialect.name != "sqlite":
            conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            if conn.dialect.name in ("mysql", "mariadb"):
                conn.exec_driver_sql("SELECT 1")  # InnoDB takes the snapshot at the first read
            return run(conn, project)


def run(conn: Connection, project: Project) -> CheckReport:
    results = []
    for name, description, sweep in SWEEPS:
        result = CheckResult(name, description)
        sweep(conn, project, result)
        results.append(result)
    return CheckReport(project.slug, results)
