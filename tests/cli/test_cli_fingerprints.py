"""Fingerprints over business inputs, across databases.

The same customers, catalog, subscriptions, one-off charges and events are loaded into two
databases of different kinds (SQLite → MariaDB → PostgreSQL → SQLite), in different orders:
customers created the other way round, subscriptions too, events split across other files in
another order with some lines sent twice. Both bill October: every invoice has the same
fingerprint and total, the runs have the same fingerprint, and `invoice verify` passes on
both; after late events, both write the same corrections. Invoices copied into a database
loaded with the same inputs verify there, and a rerun there writes nothing. An invoice
fingerprinted the legacy way (over the whole document, subscription ids included) is neither
repriced nor corrected by a rerun, and still verifies.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import insert, select, update

from neruba_cli.db.engine import create_db_engine
from neruba_cli.db.tables import (
    customers_t,
    invoice_lines_t,
    invoice_revisions_t,
    invoice_sequences_t,
    invoices_t,
    projects_t,
)
from tests.support.catalogs import apply_catalog, catalog, graduated, meter, per_unit, plan, tier
from tests.support.cli import Cli, expect, ok
from tests.support.databases import ServerDatabases, copy_of, empty_tables
from tests.support.events import event_line

AS_OF = "2026-11-02T00:00:00Z"
SECOND = {"sqlite": "mariadb", "mariadb": "postgresql", "postgresql": "sqlite"}
METERS = [meter("api_calls", "count"), meter("tokens", "sum", field="properties.tokens")]
CATALOG_V1 = catalog(
    meters=METERS,
    plans=[
        plan(
            "pro",
            "49.00",
            graduated("api_calls", tier(10, "0"), tier(float("inf"), "0.50")),
            per_unit("tokens", "0.001", free_units=100),
            name="Pro",
            proration="day",
        ),
        plan("basic", "10.00", per_unit("api_calls", "0.10"), name="Basic", proration="day"),
        plan("euro", "20.00", per_unit("api_calls", "0.05"), currency="EUR", proration="day"),
    ],
)
CATALOG_V2 = CATALOG_V1.replace('base_fee = "49.00"', 'base_fee = "59.00"')
CUSTOMERS = [
    ("c1", "USD", "UTC"),
    ("c2", "EUR", "Europe/Paris"),
    ("c3", "USD", "America/New_York"),
    ("c4", "USD", "UTC"),
]
# (customer, plan, start, [change to plan@version at], cancel at)
SUBSCRIPTIONS: list[tuple[str, str, str, tuple[str, str] | None, str | None]] = [
    ("c1", "pro", "2026-10-01T00:00:00Z", None, None),
    ("c1", "basic", "2026-10-01T00:00:00Z", None, None),  # the same start: a tie on time
    ("c2", "euro", "2026-10-10T00:00:00+02:00", None, "2026-10-25T12:00:00+02:00"),
    ("c3", "basic", "2026-09-01T00:00:00-04:00", ("pro@2", "2026-10-15T00:00:00-04:00"), None),
]
CHARGES = [
    ("c1", "25.00", "Setup", "setup-c1", "2026-10-05T00:00:00Z"),
    ("c4", "12.50", "Support hours", "support-c4", "2026-10-20T12:00:00Z"),
    ("c2", "7.25", "Training", "training-c2", "2026-10-12T09:00:00+02:00"),
]


def usage_lines() -> list[bytes]:
    lines = [
        event_line(
            f"c1-call-{i}", "c1", "api_calls", f"2026-10-{2 + i % 27:02d}T{i % 24:02d}:00:00Z"
        )
        for i in range(40)
    ]
    lines += [
        event_line(f"c1-tok-{i}", "c1", "tokens", f"2026-10-{3 + i:02d}T10:00:00Z", tokens=37 * i)
        for i in range(8)
    ]
    lines += [
        event_line(f"c2-call-{i}", "c2", "api_calls", f"2026-10-{11 + i:02d}T08:30:00Z")
        for i in range(12)
    ]
    lines += [
        event_line(f"c3-call-{i}", "c3", "api_calls", f"2026-10-{1 + 2 * i:02d}T15:00:00Z")
        for i in range(15)
    ]
    # two events at the same instant: their order is the idempotency keys', not arrival's
    lines += [
        event_line(f"c3-tie-{k}", "c3", "tokens", "2026-10-20T00:00:00Z", tokens=400) for k in "ba"
    ]
    return lines


def write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def load(cli: Cli, folder: Path, *, reverse: bool) -> None:
    """The business inputs, in one order or in another."""
    folder.mkdir()
    assert cli("project", "create", "acme", "--timezone", "UTC").exit_code == 0
    apply_catalog(cli, folder, CATALOG_V1)
    apply_catalog(cli, folder, CATALOG_V2, name="catalog-v2.toml")
    step = -1 if reverse else 1
    for external, currency, zone in CUSTOMERS[::step]:
        ok(cli, "customer", "create", external, "--currency", currency, "--timezone", zone)
    lines = usage_lines()
    if reverse:  # events before subscriptions, in three files, backwards, some lines twice
        lines.reverse()
        third = len(lines) // 3
        for n, chunk in enumerate(
            [lines[:third], lines[third - 5 : 2 * third], lines[2 * third :] + lines[:4]]
        ):
            ok(cli, "ingest", str(write(folder / f"events-{n}.jsonl", chunk)))
    for customer, code, start, change, cancel in SUBSCRIPTIONS[::step]:
        sub = ok(cli, "subscription", "create", customer, f"{code}@1", "--start", start)
        if change is not None:
            ok(cli, "subscription", "change", sub["id"], "--plan", change[0], "--at", change[1])
        if cancel is not None:
            ok(cli, "subscription", "cancel", sub["id"], "--at", cancel)
    if not reverse:
        ok(cli, "ingest", str(write(folder / "events.jsonl", lines)))
    for customer, amount, text, key, at in CHARGES[::step]:
        ok(cli, "charge", "add", customer, "--amount", amount, "--description", text,
           "--idempotency-key", key, "--at", at)  # fmt: skip


@pytest.fixture
def second_cli(
    dialect: str, servers: ServerDatabases, tmp_path: Path, sqlite_template: Path
) -> Cli:
    """A database of another kind than `cli`'s, at head with no rows."""
    other = SECOND[dialect]
    if other == "sqlite":
        return Cli(copy_of(sqlite_template, tmp_path / "second.db"))
    url = servers.migrated_url(other)
    empty_tables(url, other)
    return Cli(url)


def invoices(cli: Cli, period: str = "2026-10") -> dict[tuple[str, int], dict[str, Any]]:
    """Every invoice of the month by (customer, its place among the customer's invoices):
    its `invoice show --json`."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for row in ok(cli, "invoice", "list", "--period", period):
        place = sum(1 for customer, _ in found if customer == row["customer"])
        found[(row["customer"], place)] = ok(cli, "invoice", "show", row["number"])
    return found


def agreed(shown: dict[str, Any]) -> tuple[Any, ...]:
    """What two databases must agree on: fingerprint, total, lines but their subscription ids."""
    lines = sorted(
        orjson.dumps({**line, "subscription": None}, option=orjson.OPT_SORT_KEYS)
        for line in shown["lines"]
    )
    return (shown["fingerprint"], shown["total"], shown["status"], lines)


def bill(cli: Cli, *extra: str) -> dict[str, Any]:
    return dict(ok(cli, "run", "bill", "--period", "2026-10", "--as-of", AS_OF, *extra))


def verified(cli: Cli) -> dict[str, Any]:
    report: dict[str, Any] = expect(cli, 0, "invoice", "verify", "--period", "2026-10")
    assert report["mismatches"] == 0 and report["checked"] > 0, report
    return report


def test_two_databases_loaded_in_other_orders_agree_on_every_fingerprint(
    cli: Cli, second_cli: Cli, tmp_path: Path
) -> None:
    load(cli, tmp_path / "a", reverse=False)
    load(second_cli, tmp_path / "b", reverse=True)

    first, second = bill(cli, "--finalize"), bill(second_cli, "--finalize")
    assert first["invoices"] == second["invoices"] == 4
    assert first["fingerprint"] == second["fingerprint"]
    ours, theirs = invoices(cli), invoices(second_cli)
    assert sorted(ours) == sorted(theirs) == [("c1", 0), ("c2", 0), ("c3", 0), ("c4", 0)]
    for key in ours:
        assert agreed(ours[key]) == agreed(theirs[key]), key
    assert len({shown["fingerprint"] for shown in ours.values()}) == 4
    verified(cli), verified(second_cli)

    # The same late events, in another order, correct both the same way.
    late = [
        event_line("c1-late-1", "c1", "api_calls", "2026-10-30T10:00:00Z"),
        event_line("c3-late-1", "c3", "tokens", "2026-10-29T10:00:00Z", tokens=1000),
    ]
    ok(cli, "ingest", str(write(tmp_path / "a" / "late.jsonl", late)))
    ok(second_cli, "ingest", str(write(tmp_path / "b" / "late.jsonl", late[::-1])))
    first, second = bill(cli), bill(second_cli)
    assert first["corrections"] == second["corrections"] == 2
    assert first["fingerprint"] == second["fingerprint"]
    ours, theirs = invoices(cli), invoices(second_cli)
    assert len(ours) == len(theirs) == 6
    for key in ours:
        assert agreed(ours[key]) == agreed(theirs[key]), key
    verified(cli), verified(second_cli)


def copy_invoices(source: Cli, target: Cli) -> int:
    """Every invoice of project acme, with its lines and revisions, copied from one database
    into another holding the same customers (matched by external id): a move."""
    assert source.db_url is not None and target.db_url is not None
    source_engine, target_engine = create_db_engine(source.db_url), create_db_engine(target.db_url)
    try:
        with source_engine.connect() as conn:
            project = conn.execute(
                select(projects_t.c.id).where(projects_t.c.slug == "acme")
            ).scalar_one()
            externals = dict(
                conn.execute(select(customers_t.c.id, customers_t.c.external_id)).all()
            )
            rows = [
                dict(r._mapping)
                for r in conn.execute(select(invoices_t).where(invoices_t.c.project_id == project))
            ]
            ids = [row["id"] for row in rows]
            lines = [
                dict(r._mapping)
                for r in conn.execute(
                    select(invoice_lines_t).where(invoice_lines_t.c.invoice_id.in_(ids))
                )
            ]
            revisions = [
                dict(r._mapping)
                for r in conn.execute(
                    select(invoice_revisions_t).where(invoice_revisions_t.c.invoice_id.in_(ids))
                )
            ]
            last = conn.execute(
                select(invoice_sequences_t.c.last_number).where(
                    invoice_sequences_t.c.project_id == project
                )
            ).scalar_one()
        with target_engine.begin() as conn:
            target_project = conn.execute(
                select(projects_t.c.id).where(projects_t.c.slug == "acme")
            ).scalar_one()
            by_external = {
                e: i
                for i, e in conn.execute(select(customers_t.c.id, customers_t.c.external_id)).all()
            }
            for row in rows:
                row["project_id"] = target_project
                row["customer_id"] = by_external[externals[row["customer_id"]]]
            pending = sorted(rows, key=lambda r: r["corrects_id"] is not None)
            conn.execute(insert(invoices_t), pending)
            for line in lines:
                line.pop("id")
            conn.execute(insert(invoice_lines_t), lines)
            for revision in revisions:
                revision.pop("id", None)
            conn.execute(insert(invoice_revisions_t), revisions)
            conn.execute(
                insert(invoice_sequences_t).values(project_id=target_project, last_number=last)
            )
        return len(rows)
    finally:
        source_engine.dispose()
        target_engine.dispose()


def legacy_fingerprint(document: Any) -> str:
    """The formula invoices were fingerprinted with before business-input fingerprints: the
    SHA-256 of the whole canonical inputs document, subscription ids included."""
    return (
        "sha256:" + hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()
    )


def without_usage(terms: dict[str, Any]) -> dict[str, Any]:
    pieces = [{k: v for k, v in piece.items() if k != "usage"} for piece in terms["pieces"]]
    return {**terms, "pieces": pieces}


def make_legacy(cli: Cli, customer: str | None = None) -> dict[str, str]:
    """Rewrite stored invoices as the earlier version wrote them: inputs without the form
    marker, fingerprint and setup fingerprint over the whole document. Number → fingerprint."""
    assert cli.db_url is not None
    engine = create_db_engine(cli.db_url)
    made = {}
    try:
        with engine.begin() as conn:
            query = select(
                invoices_t.c.id,
                invoices_t.c.number,
                invoices_t.c.inputs,
                invoices_t.c.fingerprint,
                customers_t.c.external_id,
            ).join(customers_t, customers_t.c.id == invoices_t.c.customer_id)
            for row in conn.execute(query).all():
                if customer is not None and row.external_id != customer:
                    continue
                inputs = orjson.loads(row.inputs)
                inputs.pop("fingerprint_form")
                setup = {
                    **inputs,
                    "subscriptions": [without_usage(t) for t in inputs["subscriptions"]],
                }
                fingerprint = legacy_fingerprint(inputs)
                conn.execute(
                    update(invoices_t)
                    .where(invoices_t.c.id == row.id)
                    .values(
                        inputs=orjson.dumps(inputs, option=orjson.OPT_SORT_KEYS).decode(),
                        fingerprint=fingerprint,
                        setup_fingerprint=legacy_fingerprint(setup),
                    )
                )
                conn.execute(
                    update(invoice_revisions_t)
                    .where(invoice_revisions_t.c.invoice_id == row.id)
                    .where(invoice_revisions_t.c.fingerprint == row.fingerprint)
                    .values(fingerprint=fingerprint)
                )
                made[row.number] = fingerprint
    finally:
        engine.dispose()
    return made


def test_invoices_moved_to_another_database_verify_there(
    cli: Cli, second_cli: Cli, tmp_path: Path
) -> None:
    load(cli, tmp_path / "a", reverse=False)
    bill(cli, "--finalize")
    legacy = make_legacy(cli, "c4")  # one invoice from before business fingerprints
    load(second_cli, tmp_path / "b", reverse=True)
    assert copy_invoices(cli, second_cli) == 4

    report = verified(second_cli)
    notes = {v["customer"]: v["notes"] for v in report["invoices"]}
    assert all(v["checks"]["recomputed"] == "ok" for v in report["invoices"]), report
    assert notes["c1"] == notes["c2"] == notes["c3"] == []
    # c4 has no subscription: its legacy inputs hold no internal id, so it reproduces as well
    assert [v["customer"] for v in report["invoices"] if v["number"] in legacy] == ["c4"]
    before = invoices(second_cli)
    rerun = bill(second_cli)
    assert (rerun["invoices"], rerun["corrections"], rerun["status"]) == (0, 0, "unchanged")
    assert invoices(second_cli) == before

    # late usage there is corrected line by line: the lines name the moved invoice's ids
    late = [event_line("c1-late-1", "c1", "api_calls", "2026-10-30T10:00:00Z")]
    ok(second_cli, "ingest", str(write(tmp_path / "b" / "late.jsonl", late)))
    assert bill(second_cli)["corrections"] == 1
    correction = invoices(second_cli)[("c1", 1)]
    assert sorted((line["meter"], line["amount"]) for line in correction["lines"]) == [
        ("api_calls", "0.10"),
        ("api_calls", "0.50"),
    ]
    billed = {line["subscription"] for line in before[("c1", 0)]["lines"]}
    assert {line["subscription"] for line in correction["lines"]} <= billed
    verified(second_cli)


def test_a_moved_legacy_invoice_is_checked_on_its_business_inputs(
    cli: Cli, second_cli: Cli, tmp_path: Path
) -> None:
    load(cli, tmp_path / "a", reverse=False)
    bill(cli, "--finalize")
    legacy = make_legacy(cli, "c3")
    load(second_cli, tmp_path / "b", reverse=True)
    copy_invoices(cli, second_cli)

    (verdict,) = [v for v in verified(second_cli)["invoices"] if v["customer"] == "c3"]
    assert verdict["number"] in legacy
    assert verdict["checks"] == {"fingerprint": "ok", "document": "ok", "recomputed": "ok"}
    assert any("legacy form" in note for note in verdict["notes"]), verdict
    rerun = bill(second_cli)
    assert (rerun["invoices"], rerun["corrections"]) == (0, 0)


def test_invoices_fingerprinted_the_legacy_way_are_left_as_they_are(
    cli: Cli, tmp_path: Path
) -> None:
    """An upgrade: invoices stored with the earlier formula are not repriced, rewritten or
    corrected because the formula changed; they verify; new usage moves them to the new one."""
    load(cli, tmp_path / "a", reverse=False)
    bill(cli)
    c1 = next(
        row for row in ok(cli, "invoice", "list", "--period", "2026-10") if row["customer"] == "c1"
    )
    ok(cli, "invoice", "finalize", c1["number"])
    legacy = make_legacy(cli)
    before = invoices(cli)
    assert {shown["fingerprint"] for shown in before.values()} == set(legacy.values())

    rerun = bill(cli)
    assert (rerun["invoices"], rerun["corrections"], rerun["status"]) == (0, 0, "unchanged")
    assert invoices(cli) == before
    report = verified(cli)
    assert all(v["notes"] == [] for v in report["invoices"]), report

    # late usage the policy ignores stays ignored: the legacy set-up is the same set-up
    ok(cli, "project", "update", "acme", "--late-events", "ignore")
    late = [event_line("c1-late-1", "c1", "api_calls", "2026-10-30T10:00:00Z")]
    late += [event_line("c2-late-1", "c2", "api_calls", "2026-10-20T10:00:00Z")]
    ok(cli, "ingest", str(write(tmp_path / "a" / "late.jsonl", late)))
    rerun = bill(cli)
    assert (rerun["corrections"], rerun["updated"]) == (0, 1)
    after = invoices(cli)
    assert after[("c1", 0)] == before[("c1", 0)]
    # the draft whose usage changed is rewritten, in the current form
    c2 = after[("c2", 0)]
    assert c2["fingerprint"] not in legacy.values() and c2["version"] == 2
    verified(cli)


def test_a_moved_legacy_draft_is_not_rewritten(cli: Cli, second_cli: Cli, tmp_path: Path) -> None:
    """A draft of the legacy form moved into another database: same business inputs, so a
    rerun there neither rewrites it nor reports it updated; new usage does rewrite it."""
    load(cli, tmp_path / "a", reverse=False)
    bill(cli)
    legacy = make_legacy(cli, "c1")  # c1's two subscriptions start at the same instant
    load(second_cli, tmp_path / "b", reverse=True)
    copy_invoices(cli, second_cli)
    before = invoices(second_cli)

    for _ in range(2):
        rerun = bill(second_cli)
        assert (rerun["invoices"], rerun["updated"], rerun["corrections"]) == (0, 0, 0), rerun
        assert invoices(second_cli) == before
    (verdict,) = [v for v in verified(second_cli)["invoices"] if v["customer"] == "c1"]
    assert verdict["number"] in legacy and verdict["checks"]["recomputed"] == "ok"
    assert any("legacy form" in note for note in verdict["notes"]), verdict

    late = [event_line("c1-late-1", "c1", "api_calls", "2026-10-30T10:00:00Z")]
    ok(second_cli, "ingest", str(write(tmp_path / "b" / "late.jsonl", late)))
    rerun = bill(second_cli)
    assert (rerun["updated"], rerun["corrections"]) == (1, 0)
    c1 = invoices(second_cli)[("c1", 0)]
    assert c1["fingerprint"] not in legacy.values() and c1["version"] == 2
    (verdict,) = [v for v in verified(second_cli)["invoices"] if v["customer"] == "c1"]
    assert verdict["notes"] == []
