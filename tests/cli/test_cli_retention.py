"""`neruba retention apply` end to end on every dialect: the core promise is that a month it
cleared still reruns to the same invoices, verifies, and passes `neruba check`, while months
with a draft or with late events are left alone.

The shop (`retention_shop` in tests/support/shops.py): project acme (UTC), plan pro (10.00 in
arrears; eu_calls counts events whose region is "eu", 0.10 each; tokens sums properties.tokens
at 0.001) for c1 and c2 from 2025-10-01. Events carry personal extras (email, ip, user_agent)
that no meter reads.

- 2025-10: billed and finalized — eligible.
- 2025-11: billed, left as drafts — not touched.
- 2025-12: billed and finalized, then a late event arrives with no rerun — not touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from neruba_cli.db.schema import Customer, Event, Project, RetentionRun
from neruba_cli.db.tables import event_versions_t, events_t, retention_runs_t, stripe_links_t
from neruba_cli.domain.errors import UsageError
from neruba_cli.domain.retention import keep_only, parse_age
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.billing.run import ABANDONED
from neruba_cli.services.ops import event_properties, retention
from tests.support.cli import Cli, ok
from tests.support.shops import PERSONAL, bill, retention_shop
from tests.support.shops import RETENTION_MONTHS as MONTHS

# --as-of may not lie in the future, so the age is measured from a moment already passed:
# 11 months before 2026-12-01 is 2026-01-01, so all three months are old.
AS_OF = "2026-12-01T00:00:00Z"
OLDER = "11m"


@pytest.fixture
def shop(cli: Cli, tmp_path: Path) -> Cli:
    return retention_shop(cli, tmp_path)


def stored_properties(engine: Engine, prefix: str) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Event.idempotency_key, Event.properties).where(
                Event.idempotency_key.like(f"{prefix}%")
            )
        ).all()
    return {key: orjson.loads(text) for key, text in rows}


def shown(cli: Cli, period: str) -> dict[str, Any]:
    return {
        item["number"]: ok(cli, "invoice", "show", item["number"])
        for item in ok(cli, "invoice", "list", "--period", period)
    }


def test_retention_keeps_invoices_identical_and_skips_open_months(
    shop: Cli, engine: Engine, tmp_path: Path
) -> None:
    before = {period: shown(shop, period) for period in MONTHS}
    before_nov = stored_properties(engine, "2025-11")
    before_dec = stored_properties(engine, "2025-12")

    dry = ok(shop, "retention", "apply", "--older-than", OLDER, "--as-of", AS_OF, "--dry-run")
    assert dry["periods"] == ["2025-10"] and dry["dry_run"] is True
    assert dry["events"] == 48 and dry["properties_dropped"] == 24 * 3 + 24 * 4
    assert dry["kept_properties"] == ["region", "tokens"]
    reasons = {s["period"]: s["reason"] for s in dry["skipped"]}
    assert "draft" in reasons["2025-11"] and "events arrived" in reasons["2025-12"]
    codes = {s["period"]: s["code"] for s in dry["skipped"]}
    assert codes == {"2025-11": "drafts", "2025-12": "pending_events"}
    assert stored_properties(engine, "2025-10")["2025-10-c1-call-1"]["email"] == PERSONAL["email"]

    # Not on a terminal: --yes is required, and nothing changes without it.
    refused = shop(
        "retention", "apply", "--older-than", OLDER, "--as-of", AS_OF, "--project", "acme"
    )
    assert refused.exit_code == 2 and "--yes" in refused.stderr
    applied = ok(shop, "retention", "apply", "--older-than", OLDER, "--as-of", AS_OF, "--yes")
    assert (applied["periods"], applied["events"], applied["dry_run"]) == (
        ["2025-10"],
        dry["events"],
        False,
    )
    assert applied["properties_dropped"] == dry["properties_dropped"]

    october = stored_properties(engine, "2025-10")
    assert len(october) == 48
    for key, properties in october.items():
        if "-call-" in key:
            assert set(properties) == {"region"}, (key, properties)
        else:
            assert set(properties) == {"tokens"}, (key, properties)
    assert october["2025-10-c2-tok-3"] == {"tokens": 103}
    assert stored_properties(engine, "2025-11") == before_nov  # drafts: untouched
    assert stored_properties(engine, "2025-12") == before_dec  # late events: untouched

    # The month reruns to the same invoices, verifies, and the books check out.
    rerun = bill(shop, "2025-10", "2027-02-01T00:00:00Z")
    assert rerun["status"] == "unchanged" and rerun["corrections"] == 0, rerun
    assert shown(shop, "2025-10") == before["2025-10"]
    verified = ok(shop, "invoice", "verify", "--period", "2025-10")
    assert verified["checked"] == 2 and verified["mismatches"] == 0, verified
    explained = ok(shop, "invoice", "explain", next(iter(before["2025-10"])))
    tokens = next(line for line in explained["lines"] if line["meter"] == "tokens")
    assert tokens["events"]["count"] == 12
    checked = shop("check", "--project", "acme", "--json")
    assert checked.exit_code == 0, checked.stdout + checked.stderr

    # Running again finishes nothing new: idempotent, and recorded both times.
    again = ok(shop, "retention", "apply", "--older-than", OLDER, "--as-of", AS_OF, "--yes")
    assert (again["periods"], again["events"], again["properties_dropped"]) == (["2025-10"], 0, 0)
    runs = ok(shop, "retention", "list")
    assert [(r["periods"], r["events"], r["status"]) for r in runs] == [
        (["2025-10"], 48, "completed"),
        (["2025-10"], 0, "completed"),
    ]
    assert runs[0]["older_than"] == OLDER and runs[0]["finished_at"] is not None

    # After a rerun picks up December's late event, December becomes eligible too.
    rerun_dec = ok(shop, "run", "bill", "--period", "2025-12", "--as-of", AS_OF, "--finalize")
    assert rerun_dec["corrections"] == 1, rerun_dec
    later = ok(shop, "retention", "apply", "--older-than", OLDER, "--as-of", AS_OF, "--yes")
    assert later["periods"] == ["2025-10", "2025-12"] and later["events"] == 49
    assert stored_properties(engine, "late") == {"late-1": {"tokens": 5000}}


def test_reimporting_the_original_file_gives_duplicates_not_conflicts(
    shop: Cli, engine: Engine, tmp_path: Path
) -> None:
    ok(shop, "retention", "apply", "--older-than", OLDER, "--as-of", AS_OF, "--yes")
    assert stored_properties(engine, "2025-10")["2025-10-c1-call-1"] == {"region": "eu"}
    again = shop(
        "ingest",
        str(tmp_path / "events.jsonl"),
        "--project",
        "acme",
        "--max-future",
        "3650d",
        "--json",
    )
    summary = again.json()
    assert (summary["accepted"], summary["conflicts"], summary["rejected"]) == (0, 0, 0), summary
    assert summary["duplicates"] == summary["lines"] == 3 * 48


def test_young_months_and_bad_ages_are_refused(shop: Cli) -> None:
    young = ok(shop, "retention", "apply", "--older-than", "2y", "--as-of", AS_OF, "--dry-run")
    assert young["periods"] == [] and young["events"] == 0
    assert {s["reason"] for s in young["skipped"]} == {"not old enough"}
    assert {s["code"] for s in young["skipped"]} == {"not_old_enough"}
    # The human output warns about months kept for a reason to act on, decided by the code:
    # a young month is normal and not warned about; a draft month is.
    human = shop(
        "retention",
        "apply",
        "--older-than",
        OLDER,
        "--as-of",
        AS_OF,
        "--dry-run",
        "--project",
        "acme",
    )
    assert human.exit_code == 0, human.stderr
    assert "2025-11 kept: 2 draft invoice(s)" in human.stderr
    quiet = shop(
        "retention",
        "apply",
        "--older-than",
        "2y",
        "--as-of",
        AS_OF,
        "--dry-run",
        "--project",
        "acme",
    )
    assert quiet.exit_code == 0 and "kept:" not in quiet.stderr
    bad = shop("retention", "apply", "--older-than", "5h", "--project", "acme", "--json")
    assert bad.exit_code == 2 and "days, weeks, months or years" in bad.stderr
    worse = shop("retention", "apply", "--older-than", "soon", "--project", "acme")
    assert worse.exit_code == 2 and "--older-than: 'soon' is not a duration" in worse.stderr


def test_a_month_not_pushed_to_stripe_is_not_touched(shop: Cli, engine: Engine) -> None:
    """Once the project pushes to Stripe, an unpushed final invoice keeps its month open."""
    from neruba_cli.db.ids import new_id
    from neruba_cli.db.schema import Invoice

    with engine.begin() as conn:
        invoice = conn.execute(
            select(Invoice.id, Invoice.project_id).where(Invoice.period == "2025-12").limit(1)
        ).one()
        now = datetime.now(UTC)
        conn.execute(
            stripe_links_t.insert().values(
                id=new_id("slk"),
                project_id=invoice.project_id,
                invoice_id=invoice.id,
                stripe_object="invoice",
                stripe_id="in_test",
                generation=1,
                version=1,
                state="finalized",
                pushed_at=now,
                created_at=now,
                updated_at=now,
            )
        )
    dry = ok(shop, "retention", "apply", "--older-than", OLDER, "--as-of", AS_OF, "--dry-run")
    assert dry["periods"] == []
    reasons = {s["period"]: s["reason"] for s in dry["skipped"]}
    assert "not pushed to Stripe" in reasons["2025-10"]


def test_the_run_is_recorded_and_audited(shop: Cli, engine: Engine) -> None:
    ok(shop, "retention", "apply", "--older-than", OLDER, "--as-of", AS_OF, "--yes")
    audit = [row for row in ok(shop, "audit", "list") if row["command"] == "retention apply"]
    assert audit[-1]["arguments"] == {"older_than": OLDER, "as_of": AS_OF, "yes": True}
    assert audit[-1]["outcome"] == "ok"
    with engine.connect() as conn:
        run = conn.execute(select(retention_runs_t)).one()
    assert (run.status, run.events_touched, run.properties_dropped) == ("completed", 48, 168)
    assert orjson.loads(run.periods) == ["2025-10"] and run.finished_at is not None
    assert orjson.loads(run.kept_properties) == ["region", "tokens"]


def test_a_future_as_of_is_refused(shop: Cli, engine: Engine) -> None:
    """--as-of after now would count young months as old: a usage error, before anything."""
    future = format_ts(datetime.now(UTC) + timedelta(days=400))
    for extra in (["--dry-run"], ["--yes"]):
        refused = shop(
            "retention",
            "apply",
            "--older-than",
            "13m",
            "--as-of",
            future,
            "--project",
            "acme",
            "--json",
            *extra,
        )
        assert refused.exit_code == 2, refused.stderr
        assert "--as-of" in refused.error()["message"]
        assert "in the future" in refused.error()["message"]
    with engine.connect() as conn:
        assert conn.execute(select(RetentionRun.id)).all() == []
    assert stored_properties(engine, "2025-10")["2025-10-c1-call-1"]["email"] == PERSONAL["email"]


def test_a_killed_run_is_marked_failed_by_the_next(shop: Cli, engine: Engine) -> None:
    """A run whose process died keeps its row `running`; the next run to hold the lease marks
    it failed (abandoned) and `retention list` says so."""
    with engine.begin() as conn:
        project_id = conn.execute(select(Project.id)).scalar_one()
        conn.execute(
            retention_runs_t.insert().values(
                id="ret_killed",
                project_id=project_id,
                older_than=OLDER,
                as_of=datetime(2027, 1, 1, tzinfo=UTC),
                periods='["2025-10"]',
                kept_properties='["region", "tokens"]',
                events_touched=10,
                properties_dropped=20,
                status="running",
                actor="someone",
                started_at=datetime(2027, 1, 1, tzinfo=UTC),
            )
        )
    dry = ok(shop, "retention", "apply", "--older-than", OLDER, "--as-of", AS_OF, "--dry-run")
    assert dry["dry_run"] is True
    assert ok(shop, "retention", "list")[0]["status"] == "running"  # a dry run takes no lease
    ok(shop, "retention", "apply", "--older-than", OLDER, "--as-of", AS_OF, "--yes")
    runs = {run["run"]: run for run in ok(shop, "retention", "list")}
    killed = runs.pop("ret_killed")
    assert (killed["status"], killed["message"], killed["finished_at"]) == (
        "failed",
        ABANDONED,
        None,
    )
    assert killed["message"] == "abandoned: its process stopped before finishing"
    assert [(run["status"], run["message"]) for run in runs.values()] == [("completed", None)]
    listed = shop("retention", "list", "--project", "acme")
    assert "ret_killed: abandoned" in listed.stderr


def test_the_run_is_recorded_with_the_clock_it_was_given(shop: Cli, engine: Engine) -> None:
    """started_at and finished_at both come from the `now` passed in, not the wall clock."""
    now = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
    with Session(engine) as session:
        project = session.execute(select(Project)).scalar_one()
        session.expunge(project)
    report = retention.apply(
        engine,
        project,
        parse_age("13m"),
        as_of=datetime(2027, 2, 1, tzinfo=UTC),
        dry_run=False,
        actor="test",
        now=now,
    )
    assert report.events == 48
    with engine.connect() as conn:
        run = conn.execute(select(retention_runs_t)).one()
    assert (run.started_at, run.finished_at, run.status) == (now, now, "completed")
    with pytest.raises(UsageError, match="in the future"):
        retention.apply(
            engine,
            project,
            parse_age("13m"),
            as_of=now + timedelta(seconds=1),
            dry_run=True,
            actor="test",
            now=now,
        )


# --------------------------------------------------------------------------- paging


def test_the_shared_rewrite_reads_every_event_once_in_small_batches(
    shop: Cli, engine: Engine
) -> None:
    """Batches smaller than a meter's events, equal timestamps across a page boundary, many
    customers and meters and a window: every selected event is read exactly once, the ones
    outside the window never, and a second pass changes nothing."""
    with engine.begin() as conn:
        project_id = conn.execute(select(Project.id)).scalar_one()
        ids = dict(conn.execute(select(Customer.external_id, Customer.id)).all())
        same = datetime(2025, 10, 20, 12, 0, tzinfo=UTC)
        rows = [
            {
                "project_id": project_id,
                "idempotency_key": f"tie-{customer}-{meter}-{i}",
                "customer_id": ids[customer],
                "meter": meter,
                "ts": same,
                "quantity": Decimal(1),
                "properties": orjson.dumps({"region": "eu", "junk": i}).decode(),
                "payload_hash": "0" * 64,
                "received_at": same,
            }
            for customer in ("c1", "c2")
            for meter in ("eu_calls", "zz_other")
            for i in range(7)
        ]
        conn.execute(events_t.insert(), rows)
        in_window = conn.execute(
            select(func.count())
            .select_from(Event)
            .where(Event.ts >= MONTHS["2025-10"], Event.ts < MONTHS["2025-11"])
        ).scalar_one()
    selection = event_properties.Selection(
        project_id, [ids["c1"], ids["c2"], "cus_nobody"], MONTHS["2025-10"], MONTHS["2025-11"]
    )

    def drop_junk(properties: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
        return keep_only(properties, frozenset({"region", "tokens", "model", *PERSONAL}))

    for batch_size in (1, 3, 5, 1000):
        batches = list(
            event_properties.rewrite(
                engine, selection, drop_junk, write=False, batch_size=batch_size
            )
        )
        seen = [b.scanned for b in batches]
        assert sum(seen) == in_window, batch_size
        assert all(0 < n <= batch_size for n in seen)
        assert sum(b.events for b in batches) == 28  # the tie events carry "junk"
    written = list(event_properties.rewrite(engine, selection, drop_junk, write=True, batch_size=4))
    assert sum(b.events for b in written) == 28 and sum(b.scanned for b in written) == in_window
    again = list(event_properties.rewrite(engine, selection, drop_junk, write=True, batch_size=4))
    assert sum(b.events for b in again) == 0
    ties = stored_properties(engine, "tie-")
    assert len(ties) == 28 and all(p == {"region": "eu"} for p in ties.values())
    assert stored_properties(engine, "2025-11") and all(
        "email" in p for p in stored_properties(engine, "2025-11").values()
    )


def test_each_page_is_an_index_range_read(shop: Cli, engine: Engine) -> None:
    """The page query follows the events index (project_id, customer_id, meter, voided, ts) from
    where the previous page stopped, instead of rescanning the customer's events by id."""
    pages = event_properties._Pages(
        event_properties.Selection("prj_x", ["cus_x"], MONTHS["2025-10"], MONTHS["2025-11"])
    )
    pages.meter = "tokens"
    pages.after = (datetime(2025, 10, 5, tzinfo=UTC), 42)
    query = pages._page(100)
    dialect = engine.dialect.name
    compiled = query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True})
    with engine.connect() as conn:
        if dialect == "sqlite":
            plan = " ".join(
                str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")
            )
            assert "USING INDEX" in plan and "meter=?" in plan and "ts>" in plan, plan
            assert "TEMP B-TREE" not in plan, plan  # the index gives the order
        elif dialect == "postgresql":
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = " ".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {compiled}"))
            assert "Index" in plan and "ix_events_project_id_customer_id_meter_voided_ts" in plan, (
                plan
            )
            assert "meter" in plan and "ts >=" in plan, plan
        else:
            explained = conn.exec_driver_sql(f"EXPLAIN {compiled}").mappings().one()
            assert explained["key"] == "ix_events_project_id_customer_id_meter_voided_ts", explained
            assert explained["type"] == "range", explained
            assert "filesort" not in (explained["Extra"] or ""), explained


def test_retention_strips_the_versions_corrections_kept(shop: Cli, engine: Engine) -> None:
    """An amended event's superseded version (`event_versions`) keeps no more than the event
    once its month is past retention."""
    key = "2025-10-c1-call-1"
    ok(shop, "events", "amend", key, "--property", "note=relabelled", "--reason", "relabel")
    rerun = bill(shop, "2025-10", "2027-02-01T00:00:00Z")  # books it: no amount moved
    assert rerun["corrections"] == 0, rerun

    applied = ok(shop, "retention", "apply", "--older-than", OLDER, "--as-of", AS_OF, "--yes")

    assert "2025-10" in applied["periods"]
    assert set(stored_properties(engine, key)[key]) == {"region"}
    with engine.connect() as conn:
        kept = conn.execute(select(event_versions_t.c.properties)).scalars().all()
    assert [set(orjson.loads(text)) for text in kept] == [{"region"}]
