"""Migrations: empty database to head on every dialect, one head, models == migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, insert, inspect, text

from neruba_cli.db import migrate
from neruba_cli.db.engine import create_db_engine
from neruba_cli.db.schema import Base
from neruba_cli.db.tables import event_versions_t, events_t
from neruba_cli.domain.errors import DatabaseError
from tests.support.cli import Cli


def test_exactly_one_head() -> None:
    heads = ScriptDirectory.from_config(migrate.alembic_config()).get_heads()
    assert heads == [migrate.head_revision()]


def test_upgrade_empty_database_to_head_matches_models(empty_db_url: str) -> None:
    engine = create_db_engine(empty_db_url)
    try:
        assert migrate.current_revision(engine) is None
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
        tables = set(inspect(engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_downgrade_to_base_and_up_again(empty_db_url: str) -> None:
    engine = create_db_engine(empty_db_url)
    try:
        migrate.upgrade(engine)
        migrate.downgrade(engine, "base")
        assert migrate.current_revision(engine) is None
        assert not set(Base.metadata.tables) & set(inspect(engine).get_table_names())
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
    finally:
        engine.dispose()


def test_commands_refuse_a_database_without_schema(empty_db_url: str) -> None:
    engine = create_db_engine(empty_db_url)
    try:
        with pytest.raises(DatabaseError, match="no Neruba schema") as caught:
            migrate.ensure_at_head(engine)
        assert caught.value.hint is not None and "neruba db upgrade" in caught.value.hint
    finally:
        engine.dispose()


def test_cli_db_upgrade_current_downgrade(empty_db_url: str) -> None:
    cli = Cli(empty_db_url)
    before = cli("db", "current", "--json")
    assert before.exit_code == 0
    assert before.json()["current"] is None and before.json()["at_head"] is False
    refused = cli("project", "list")
    assert refused.exit_code == 1
    assert "no Neruba schema yet" in refused.stderr and "Traceback" not in refused.stderr
    up = cli("db", "upgrade", "--json")
    assert up.exit_code == 0, up.stderr
    assert up.json()["from"] is None and up.json()["to"] == migrate.head_revision()
    assert cli("db", "current", "--json").json()["at_head"] is True
    again = cli("db", "upgrade")
    assert again.exit_code == 0 and "nothing to do" in again.stderr
    no_yes = cli("db", "downgrade", "base")
    assert no_yes.exit_code == 2 and "--yes" in no_yes.stderr
    assert cli("db", "current", "--json").json()["at_head"] is True
    down = cli("db", "downgrade", "base", "--yes", "--json")
    assert down.exit_code == 0, down.stderr
    assert down.json()["to"] is None


def _seed_customer(conn: Connection) -> None:
    """Project prj_1 and its customer cus_1 (c1), written in SQL any revision accepts."""
    conn.execute(
        text(
            "INSERT INTO projects (id, slug, name, currency, timezone, rounding, created_at) "
            "VALUES ('prj_1', 'acme', 'Acme', 'USD', 'UTC', 'half_even', '2026-10-01 00:00:00')"
        )
    )
    conn.execute(
        text(
            "INSERT INTO customers (id, project_id, external_id, currency, timezone, "
            "created_at, updated_at) VALUES ('cus_1', 'prj_1', 'c1', 'USD', 'UTC', "
            "'2026-10-01 00:00:00', '2026-10-01 00:00:00')"
        )
    )


def test_event_corrections_upgrade_keeps_every_stored_event_current(empty_db_url: str) -> None:
    """Revision 0011 on a database with events: each stays billable (not voided, version 1),
    so a rerun counts exactly what it counted before (no spurious correction), and the billing
    index is (project, customer, meter, voided, ts)."""
    engine = create_db_engine(empty_db_url)
    try:
        migrate.upgrade(engine, "0010")
        with engine.begin() as conn:
            _seed_customer(conn)
            conn.execute(
                text(
                    "INSERT INTO events (project_id, idempotency_key, customer_id, meter, ts, "
                    "quantity, properties, payload_hash, received_at) VALUES ('prj_1', 'e1', "
                    "'cus_1', 'api_calls', '2026-10-03 12:00:00', 1, '{}', 'x', "
                    "'2026-10-03 12:00:00')"
                )
            )
        migrate.upgrade(engine)
        with engine.connect() as conn:
            voided, version = conn.execute(text("SELECT voided, version FROM events")).one()
        assert (bool(voided), version) == (False, 1)
        indexes = {ix["name"]: ix["column_names"] for ix in inspect(engine).get_indexes("events")}
        assert indexes["ix_events_project_id_customer_id_meter_voided_ts"] == [
            "project_id",
            "customer_id",
            "meter",
            "voided",
            "ts",
        ]
        assert "ix_events_project_id_customer_id_meter_ts" not in indexes
    finally:
        engine.dispose()


def test_event_change_feed_upgrade_stamps_each_corrected_event(empty_db_url: str) -> None:
    """Revision 0012 on a database with corrected events: each names its latest correction
    (the id of the newest version it superseded), an event never corrected none, so a named
    events export counts every correction made before the upgrade as new once."""
    engine = create_db_engine(empty_db_url)
    try:
        migrate.upgrade(engine, "0011")
        with engine.begin() as conn:
            _seed_customer(conn)
            at = datetime(2026, 10, 3, 12, tzinfo=UTC)
            for key, version in (("e1", 1), ("e2", 3)):
                conn.execute(
                    insert(events_t).values(
                        project_id="prj_1", idempotency_key=key, customer_id="cus_1",
                        meter="api_calls", ts=at, quantity=Decimal(1), properties="{}",
                        payload_hash="x", received_at=at, voided=version > 1, version=version,
                    )
                )  # fmt: skip
            e2 = conn.execute(text("SELECT id FROM events WHERE idempotency_key = 'e2'")).scalar()
            for version in (1, 2):
                conn.execute(
                    insert(event_versions_t).values(
                        project_id="prj_1", event_id=e2, idempotency_key="e2", version=version,
                        customer_id="cus_1", meter="api_calls", ts=at, quantity=Decimal(1),
                        properties="{}", voided=False, change="amend", changed_at=at,
                        changed_by="ops", reason="fix",
                    )
                )  # fmt: skip
            newest = conn.execute(text("SELECT MAX(id) FROM event_versions")).scalar()
        migrate.upgrade(engine)
        with engine.connect() as conn:
            found = dict(
                conn.execute(
                    text("SELECT idempotency_key, correction FROM events ORDER BY id")
                ).all()
            )
        assert found == {"e1": None, "e2": newest}
        indexes = {ix["name"]: ix["column_names"] for ix in inspect(engine).get_indexes("events")}
        assert indexes["ix_events_correction"] == ["correction"]
    finally:
        engine.dispose()
