"""The audit trail: who ran which mutating command, with which arguments, and how it ended."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, insert, or_, select
from sqlalchemy.orm import Session

from neruba_cli.db.bulk_insert import Row, db_time, insert_rows
from neruba_cli.db.engine import LEASE_LOCK_WAIT_SECONDS, begin_write, short_lock_wait
from neruba_cli.db.ids import new_id
from neruba_cli.db.schema import AuditRecord
from neruba_cli.domain.errors import LockHeld
from neruba_cli.domain.keys import redact_secrets
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.tenancy.access import Actor

SECRET_WORDS = ("secret", "token", "password", "passwd", "api_key", "apikey", "signature")
REDACTED = "[redacted]"


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    message: str | None = None

    @property
    def label(self) -> str:
        return {0: "ok", 3: "partial", 4: "discrepancies", 5: "locked"}.get(self.exit_code, "error")


def scrub(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Arguments as stored: secrets replaced, paths and other values as plain strings."""
    clean: dict[str, Any] = {}
    for name, value in arguments.items():
        if value is None or value is False or value == ():
            continue
        if any(word in name.lower() for word in SECRET_WORDS):
            clean[name] = REDACTED
        elif isinstance(value, list | tuple):
            clean[name] = [redact_secrets(str(item)) for item in value]
        elif isinstance(value, bool | int):
            clean[name] = value
        else:
            clean[name] = redact_secrets(str(value))
    return clean


@dataclass(frozen=True)
class Entry:
    """One audit record to write: who did what, with which arguments, and how it ended."""

    actor: Actor
    project_slug: str | None
    command: str
    arguments: Mapping[str, Any]
    outcome: Outcome
    now: datetime


def record(
    engine: Engine,
    *,
    actor: Actor,
    project_slug: str | None,
    command: str,
    arguments: Mapping[str, Any],
    outcome: Outcome,
    now: datetime,
) -> str:
    """Append one audit record in its own transaction, after the command's own work.

    A command refused as busy (exit 5) waits only briefly to record that: on SQLite whatever
    made it busy (a holder paused inside a write transaction) may keep the database's write
    lock, and the refusal must not queue the full lock wait behind it (the record is then
    lost, as when the database is unreachable)."""
    record_id = new_id("aud")
    busy = outcome.exit_code == LockHeld.exit_code
    transaction = short_lock_wait(engine, LEASE_LOCK_WAIT_SECONDS) if busy else engine.begin()
    entry = Entry(actor, project_slug, command, arguments, outcome, now)
    with transaction as conn:
        conn.execute(insert(AuditRecord).values(**_row(record_id, entry)))
    return record_id


def record_many(engine: Engine, entries: Sequence[Entry]) -> list[str]:
    """Append several audit records in one transaction (the HTTP API gathers its requests'
    records and writes them together: one commit for many requests)."""
    if not entries:
        return []
    with begin_write(engine) as conn:
        return record_in(conn, entries)


TABLE = AuditRecord.__tablename__
# an audit record's columns, in the order record_in writes them
COLUMNS = (
    "id",
    "at",
    "actor",
    "actor_kind",
    "project_slug",
    "command",
    "arguments",
    "outcome",
    "exit_code",
    "message",
)


def record_in(conn: Connection, entries: Sequence[Entry]) -> list[str]:
    """Append audit records in the caller's transaction: they stand or fall with its work.
    Written as driver-ready rows in as few statements as the database allows."""
    ids, rows = driver_rows(entries, sqlite=conn.dialect.name == "sqlite")
    insert_rows(conn, TABLE, COLUMNS, rows)
    return ids


def driver_rows(entries: Sequence[Entry], *, sqlite: bool) -> tuple[list[str], list[Row]]:
    """New records' ids, and their rows as driver-ready tuples in `COLUMNS` order, for
    `record_in` and for a caller that sends them with other statements (the HTTP API's
    single events, written with their requests' records)."""
    ids = [new_id("aud") for _ in entries]
    rows = []
    for record_id, entry in zip(ids, entries, strict=True):
        row = _row(record_id, entry)
        row["at"] = db_time(entry.now, sqlite)
        rows.append(tuple(row[name] for name in COLUMNS))
    return ids, rows


def _row(record_id: str, entry: Entry) -> dict[str, Any]:
    message = entry.outcome.message
    return {
        "id": record_id,
        "at": entry.now,
        "actor": entry.actor.id,
        "actor_kind": entry.actor.kind,
        "project_slug": entry.project_slug,
        "command": entry.command,
        "arguments": orjson.dumps(scrub(entry.arguments), option=orjson.OPT_SORT_KEYS).decode(),
        "outcome": entry.outcome.label,
        "exit_code": entry.outcome.exit_code,
        "message": None if message is None else redact_secrets(message),
    }


def list_records(
    session: Session,
    *,
    project_slug: str | None,
    since: datetime | None,
    limit: int,
    hidden_projects: Sequence[str] = (),
) -> list[AuditRecord]:
    query = select(AuditRecord).order_by(AuditRecord.at.desc(), AuditRecord.id.desc())
    if project_slug is not None:
        query = query.where(AuditRecord.project_slug == project_slug)
    if hidden_projects:
        query = query.where(
            or_(
                AuditRecord.project_slug.is_(None), AuditRecord.project_slug.not_in(hidden_projects)
            )
        )
    if since is not None:
        query = query.where(AuditRecord.at >= since)
    return list(session.scalars(query.limit(limit)))


def to_dict(entry: AuditRecord) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": format_ts(entry.at),
        "actor": entry.actor,
        "actor_kind": entry.actor_kind,
        "project": entry.project_slug,
        "command": entry.command,
        "arguments": orjson.loads(entry.arguments),
        "outcome": entry.outcome,
        "exit_code": entry.exit_code,
        "message": entry.message,
    }
