"""`neruba run bill | list | show | diff` on every dialect, through the CLI, with the database
read back. Expected totals are computed here by hand, independently of the pricing code."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from neruba_cli.db import locks
from neruba_cli.db.schema import BillingRun, Invoice, InvoiceRevision, InvoiceSequence, Lock
from neruba_cli.domain import lock_names
from tests.support.catalogs import catalog, meter, per_unit, plan
from tests.support.cli import Cli

AS_OF = "2026-11-02T00:00:00Z"
UNIT = Decimal("0.01")  # per API call
BASE_FEE = Decimal("5.00")  # per month, in arrears
CATALOG = catalog(
    meters=[meter("api_calls", "count")],
    plans=[plan("starter", "5.00", per_unit("api_calls", "0.01"))],
)
OCTOBER_CALLS = {"c1": 100, "c2": 250, "c3": 0}


def expected_total(calls: int) -> str:
    return str(BASE_FEE + UNIT * calls)


def write_events(path: Path, prefix: str, counts: dict[str, int], day: int = 3) -> Path:
    spread = min(20, 32 - day)  # days of October the events spread over
    lines = []
    for customer, count in counts.items():
        for i in range(count):
            event = {
                "idempotency_key": f"{prefix}-{customer}-{i}",
                "customer": customer,
                "meter": "api_calls",
                "timestamp": f"2026-10-{day + i % spread:02d}T{i % 24:02d}:15:00Z",
            }
            lines.append(orjson.dumps(event))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def ingest(cli: Cli, path: Path) -> None:
    result = cli("ingest", str(path), "--project", "acme", "--json")
    assert result.exit_code == 0, result.stderr


@pytest.fixture(autouse=True)
def unlink_corrections(engine: Engine) -> Iterator[None]:
    """MariaDB checks foreign keys row by row, so the next test's `DELETE FROM invoices` would
    trip over a correction pointing at its original; unlink them when a test ends."""
    yield
    with engine.begin() as conn:
        conn.execute(update(Invoice).values(corrects_id=None))


@pytest.fixture
def shop(cli: Cli, tmp_path: Path) -> Cli:
    assert cli("project", "create", "acme").exit_code == 0
    (tmp_path / "catalog.toml").write_text(CATALOG)
    applied = cli("catalog", "apply", str(tmp_path / "catalog.toml"), "--project", "acme")
    assert applied.exit_code == 0, applied.stderr
    for customer in OCTOBER_CALLS:
        assert cli("customer", "create", customer, "--project", "acme").exit_code == 0
        subscribed = cli(
            "subscription",
            "create",
            customer,
            "starter",
            "--start",
            "2026-10-01T00:00:00Z",
            "--project",
            "acme",
        )
        assert subscribed.exit_code == 0, subscribed.stderr
    ingest(cli, write_events(tmp_path / "october.jsonl", "oct", OCTOBER_CALLS))
    # November usage must not reach October's invoices
    november = tmp_path / "november.jsonl"
    november.write_bytes(
        orjson.dumps(
            {
                "idempotency_key": "nov-1",
                "customer": "c1",
                "meter": "api_calls",
                "timestamp": "2026-11-01T00:00:00Z",
            }
        )
        + b"\n"
    )
    ingest(cli, november)
    return cli


def bill(cli: Cli, *args: str, code: int = 0) -> dict[str, Any]:
    result = cli(
        "run", "bill", "--period", "2026-10", "--as-of", AS_OF, *args, "--project", "acme", "--json"
    )
    assert result.exit_code == code, result.stderr
    return dict(result.json())


def run_cmd(cli: Cli, *args: str) -> Any:
    result = cli("run", *args, "--project", "acme", "--json")
    assert result.exit_code == 0, result.stderr
    return result.json()


def count(engine: Engine, model: type) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


def invoices(engine: Engine) -> list[Invoice]:
    with Session(engine) as session:
        found = list(session.scalars(select(Invoice).order_by(Invoice.number)))
        session.expunge_all()
    return found


def totals(changes: list[dict[str, Any]]) -> dict[str, str]:
    return {change["customer"]: change["total"] for change in changes}


def test_bill_creates_exact_invoices_and_a_rerun_changes_nothing(
    shop: Cli, engine: Engine, tmp_path: Path
) -> None:
    first = bill(shop)
    assert first["status"] == "completed" and first["run"].startswith("run_")
    assert (first["period"], first["invoices"], first["created"]) == ("2026-10", 3, 3)
    assert (first["corrections"], first["unchanged"], first["late_events"]) == (0, 0, 0)
    assert first["fingerprint"].startswith("sha256:") and first["dry_run"] is False
    want = {customer: expected_total(calls) for customer, calls in OCTOBER_CALLS.items()}
    assert want == {"c1": "6.00", "c2": "7.50", "c3": "5.00"}
    assert totals(first["changes"]) == want
    assert [c["action"] for c in first["changes"]] == ["created"] * 3
    stored = invoices(engine)
    assert [(i.number, i.status, i.kind, i.total) for i in stored] == [
        ("ACME-000001", "draft", "invoice", Decimal("6.00")),
        ("ACME-000002", "draft", "invoice", Decimal("7.50")),
        ("ACME-000003", "draft", "invoice", Decimal("5.00")),
    ]
    assert {i.run_id for i in stored} == {first["run"]}
    assert count(engine, BillingRun) == 1

    again = bill(shop)
    assert (again["status"], again["run"], again["unchanged"], again["changes"]) == (
        "unchanged",
        None,
        3,
        [],
    )
    assert again["fingerprint"] == first["fingerprint"]
    human = shop("run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--project", "acme")
    assert human.exit_code == 0, human.stderr
    assert human.stdout.strip() == "2026-10: no changes (3 invoices unchanged)"
    assert count(engine, BillingRun) == 1 and count(engine, InvoiceRevision) == 3

    # a draft is recomputed in place: a new version, and `run diff` shows the line that moved
    ingest(shop, write_events(tmp_path / "more.jsonl", "more", {"c1": 5}))
    updated = bill(shop)
    assert (updated["updated"], updated["unchanged"]) == (1, 2)
    assert [(c["customer"], c["action"], c["number"], c["total"]) for c in updated["changes"]] == [
        ("c1", "updated", "ACME-000001", expected_total(105))
    ]
    assert invoices(engine)[0].version == 2 and count(engine, Invoice) == 3
    diff = run_cmd(shop, "diff", first["run"], updated["run"])
    assert [(d["customer"], d["number"], d["before_total"], d["after_total"]) for d in diff] == [
        ("c1", "ACME-000001", "6.00", "6.05")
    ]
    assert [(line["before"], line["after"]) for line in diff[0]["lines"]] == [("1.00", "1.05")]
    assert run_cmd(shop, "diff", first["run"], first["run"]) == []
    rendered = shop("run", "diff", first["run"], updated["run"], "--project", "acme")
    assert rendered.exit_code == 0 and "c1  ACME-000001  6.00 → 6.05" in rendered.stdout
    assert "c2" not in rendered.stdout


def test_dry_run_writes_nothing_and_shows_the_invoices(shop: Cli, engine: Engine) -> None:
    dry = bill(shop, "--dry-run")
    assert (dry["status"], dry["dry_run"], dry["run"], dry["created"]) == ("dry_run", True, None, 3)
    assert totals(dry["changes"]) == {"c1": "6.00", "c2": "7.50", "c3": "5.00"}
    c2 = next(change for change in dry["changes"] if change["customer"] == "c2")
    assert c2["number"] is None and c2["invoice"]["total"] == "7.50"
    usage = [line for line in c2["invoice"]["lines"] if line["kind"] == "usage"]
    assert [(line["quantity"], line["amount"]) for line in usage] == [("250", "2.50")]
    only = bill(shop, "--dry-run", "--customer", "c1")
    assert totals(only["changes"]) == {"c1": "6.00"}
    human = shop(
        "run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--dry-run", "--project", "acme"
    )
    assert human.exit_code == 0 and "7.50" in human.stdout
    assert "2026-10: dry run: nothing written; would have 3 created (0 unchanged)" in human.stdout
    for model in (Invoice, InvoiceRevision, BillingRun):
        assert count(engine, model) == 0, model
    assert locks.list_held(engine) == []


def test_a_late_event_after_finalization_gives_exactly_one_correction(
    shop: Cli, engine: Engine, tmp_path: Path
) -> None:
    first = bill(shop, "--finalize")
    assert first["finalized"] == ["ACME-000001", "ACME-000002", "ACME-000003"]
    before = {i.number: (i.content, i.total, i.status) for i in invoices(engine)}
    assert {status for _, _, status in before.values()} == {"finalized"}

    late_file = write_events(tmp_path / "late.jsonl", "late", {"c2": 3}, day=30)
    receipt = shop("ingest", str(late_file), "--project", "acme", "--json")
    assert receipt.exit_code == 0, receipt.stderr
    # The receipt names the finalized invoice the import made stale, and the rerun to run.
    stale = [
        {"number": "ACME-000002", "period": "2026-10", "rerun": "neruba run bill --period 2026-10"}
    ]
    assert receipt.json()["stale_invoices"] == stale
    listed = shop("events", "receipts", "--project", "acme", "--json").json()
    assert listed[0]["stale_invoices"] == stale and listed[1]["stale_invoices"] == []
    late = bill(shop, "--finalize")
    assert (late["corrections"], late["late_events"], late["unchanged"]) == (1, 3, 2)
    assert late["changes"] == [
        {
            "customer": "c2",
            "period_start": "2026-10-01T00:00:00Z",
            "period_end": "2026-11-01T00:00:00Z",
            "action": "corrected",
            "number": "ACME-000004",
            "total": str(UNIT * 3),
            "late_events": 3,
            "landed": "ACME-000004",
        }
    ]
    stored = {i.number: i for i in invoices(engine)}
    for number, (content, total, status) in before.items():
        assert (stored[number].content, stored[number].total, stored[number].status) == (
            content,
            total,
            status,
        )
    correction = stored["ACME-000004"]
    assert (correction.kind, correction.total, correction.revision) == (
        "supplemental",
        Decimal("0.03"),
        1,
    )
    assert correction.corrects_id == stored["ACME-000002"].id
    assert correction.status == "finalized"  # --finalize took it too

    assert bill(shop)["status"] == "unchanged"
    listed = run_cmd(shop, "list")
    assert [r["id"] for r in listed] == [late["run"], first["run"]]
    assert [(r["corrections"], r["late_events"], r["status"]) for r in listed] == [
        (1, 3, "completed"),
        (0, 0, "completed"),
    ]
    assert run_cmd(shop, "list", "--period", "2026-09") == []
    shown = run_cmd(shop, "show", late["run"])
    assert (shown["id"], shown["as_of"], shown["fingerprint"]) == (
        late["run"],
        AS_OF,
        late["fingerprint"],
    )
    assert [(w["number"], w["customer"], w["total"], w["action"]) for w in shown["written"]] == [
        ("ACME-000004", "c2", "0.03", "corrected")
    ]
    assert [w["action"] for w in run_cmd(shop, "show", first["run"])["written"]] == ["created"] * 3
    diff = run_cmd(shop, "diff", first["run"], late["run"])
    assert [(d["customer"], d["before_total"], d["after_total"]) for d in diff] == [
        ("c2", None, "0.03")
    ]
    missing = shop("run", "show", "run_nope", "--project", "acme", "--json")
    assert missing.exit_code == 1 and "does not exist" in missing.error()["message"]


def test_late_events_policy_ignore(shop: Cli, engine: Engine, tmp_path: Path) -> None:
    bad = shop("project", "update", "acme", "--late-events", "later", "--json")
    assert bad.exit_code == 2
    assert (
        bad.error()["message"]
        == "--late-events: 'later' is not one of: correct, next_invoice, ignore"
    )
    assert shop("project", "show", "acme", "--json").json()["late_events"] == "correct"
    carry = shop("project", "update", "acme", "--late-events", "next_invoice", "--json")
    assert carry.exit_code == 0 and carry.json()["late_events"] == "next_invoice"
    changed = shop("project", "update", "acme", "--late-events", "ignore", "--json")
    assert changed.exit_code == 0 and changed.json()["late_events"] == "ignore"
    assert shop("project", "show", "acme", "--json").json()["late_events"] == "ignore"

    bill(shop, "--finalize")
    ingest(shop, write_events(tmp_path / "late.jsonl", "late", {"c1": 2}, day=30))
    late = bill(shop)
    assert (late["corrections"], late["late_events"], late["status"], late["run"]) == (
        0,
        2,
        "unchanged",
        None,
    )
    assert [
        (c["customer"], c["action"], c["landed"], c["late_events"]) for c in late["changes"]
    ] == [("c1", "ignored", "ignored", 2)]
    assert count(engine, Invoice) == 3 and count(engine, BillingRun) == 1
    # Ignored late events are reported once: the next run has nothing new to say.
    human = shop("run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--project", "acme")
    assert "no changes (3 invoices unchanged)" in human.stdout
    assert "late" not in human.stdout
    ingest(shop, write_events(tmp_path / "later.jsonl", "later", {"c1": 1}, day=29))
    human = shop("run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--project", "acme")
    assert "1 → ignored" in human.stdout
    assert "no changes (3 invoices unchanged, 1 late event" in human.stdout


def test_a_bad_period_and_a_held_lock(shop: Cli, engine: Engine) -> None:
    bad = shop("run", "bill", "--period", "2026-13", "--project", "acme", "--json")
    assert bad.exit_code == 2
    assert bad.error() == {
        "type": "usage_error",
        "message": "--period: '2026-13' is not a month",
        "hint": "YYYY-MM, previous or current",
        "exit_code": 2,
    }

    name = lock_names.billing("acme", "2026-10")
    lease = locks.acquire(engine, name, holder="cron@billing-host:4242")
    held = shop("run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--project", "acme")
    assert held.exit_code == 5
    assert "lock acme:bill:2026-10 is held by cron@billing-host:4242 since" in held.stderr
    error = shop(
        "run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--project", "acme", "--json"
    ).error()
    assert (error["type"], error["exit_code"]) == ("lock_held", 5)
    assert count(engine, Invoice) == 0 and count(engine, BillingRun) == 0
    assert locks.release(engine, lease)
    assert bill(shop)["created"] == 3


# --------------------------------------------------------------------------- months not started


def _written(engine: Engine) -> tuple[int, ...]:
    """Invoices, run records, invoice number sequences and locks: what a run could write."""
    return tuple(count(engine, model) for model in (Invoice, BillingRun, InvoiceSequence, Lock))


def test_a_month_that_has_not_started_is_refused_with_nothing_written(
    shop: Cli, engine: Engine
) -> None:
    before = _written(engine)
    typo = shop("run", "bill", "--period", "2027-10", "--as-of", AS_OF, "--project", "acme")
    assert typo.exit_code == 2
    assert (
        "period 2027-10 has not started: it starts at 2027-10-01T00:00:00Z, after the run's "
        "as-of instant 2026-11-02T00:00:00Z" in typo.stderr
    )
    assert "did you mean 2026-10? Or pass --allow-future to bill it in advance" in typo.stderr
    error = shop(
        "run", "bill", "--period", "2026-12", "--as-of", AS_OF, "--project", "acme", "--json"
    ).error()
    assert (error["type"], error["exit_code"]) == ("usage_error", 2)
    assert error["message"].startswith("period 2026-12 has not started")
    assert error["hint"] == "pass --allow-future to bill it in advance"  # same year: no typo
    assert _written(engine) == before and before[:3] == (0, 0, 0)
    assert bill(shop)["created"] == 3  # the month meant is billed as before


def test_allow_future_bills_a_month_ahead_and_a_dry_run_only_warns(
    shop: Cli, engine: Engine
) -> None:
    before = _written(engine)
    dry = shop(
        "run", "bill", "--period", "2026-12", "--as-of", AS_OF, "--dry-run", "--project", "acme"
    )
    assert dry.exit_code == 0, dry.stderr
    assert "warning: period 2026-12 has not started" in dry.stderr
    assert "--allow-future" in dry.stderr
    assert _written(engine) == before and before[:3] == (0, 0, 0)

    ahead = _bill_month(shop, "acme", "2026-12", AS_OF, "--allow-future")
    assert (ahead["period"], ahead["created"]) == ("2026-12", 3)
    assert {i.status for i in invoices(engine)} == {"draft"}
    assert {i.period for i in invoices(engine)} == {"2026-12"}


def test_the_current_month_and_the_first_instant_of_a_month_are_billed(
    shop: Cli, engine: Engine
) -> None:
    assert _bill_month(shop, "acme", "2026-11", AS_OF)["created"] == 3  # started, not ended
    early = shop(
        "run", "bill", "--period", "2026-12", "--as-of", "2026-11-30T23:59:59Z", "--project", "acme"
    )
    assert early.exit_code == 2 and "period 2026-12 has not started" in early.stderr
    assert count(engine, Invoice) == 3
    at_start = _bill_month(shop, "acme", "2026-12", "2026-12-01T00:00:00Z")
    assert at_start["created"] == 3
    current = _bill_month(shop, "acme", "current", "2026-12-01T00:00:00Z")
    assert (current["period"], current["created"]) == ("2026-12", 0)


def test_a_month_started_in_a_billed_customers_time_zone_is_not_future(
    shop: Cli, engine: Engine
) -> None:
    created = shop(
        "customer", "create", "kiwi", "--timezone", "Pacific/Auckland", "--project", "acme"
    )
    assert created.exit_code == 0, created.stderr
    noon = "2026-11-30T12:00:00Z"  # December 1, 01:00 in Auckland; still November in UTC
    kiwi = _bill_month(shop, "acme", "2026-12", noon, "--customer", "kiwi")
    assert kiwi["period"] == "2026-12"
    utc_only = shop(
        "run", "bill", "--period", "2026-12", "--as-of", noon, "--customer", "c1",
        "--project", "acme",
    )  # fmt: skip
    assert utc_only.exit_code == 2
    assert "it starts at 2026-12-01T00:00:00Z" in utc_only.stderr
    whole = _bill_month(shop, "acme", "2026-12", noon)  # kiwi's month has begun
    assert whole["created"] == 3


# --------------------------------------------------------------------------- edge cases


def _event(key: str, customer: str, timestamp: str) -> bytes:
    document = {
        "idempotency_key": key,
        "customer": customer,
        "meter": "api_calls",
        "timestamp": timestamp,
    }
    return orjson.dumps(document) + b"\n"


def _bill_month(cli: Cli, project: str, month: str, as_of: str, *args: str) -> dict[str, Any]:
    result = cli(
        "run", "bill", "--period", month, "--as-of", as_of, *args, "--project", project, "--json"
    )
    assert result.exit_code == 0, result.stderr
    return dict(result.json())


def test_next_invoice_carries_late_usage_once(cli: Cli, engine: Engine, tmp_path: Path) -> None:
    """August's late calls land on September's invoice, and nowhere else afterwards."""
    assert cli("project", "create", "carry").exit_code == 0
    (tmp_path / "catalog.toml").write_text(CATALOG)
    assert (
        cli("catalog", "apply", str(tmp_path / "catalog.toml"), "--project", "carry").exit_code == 0
    )
    assert cli("customer", "create", "k1", "--project", "carry").exit_code == 0
    start = ("--start", "2026-08-01T00:00:00Z", "--project", "carry")
    assert cli("subscription", "create", "k1", "starter", *start).exit_code == 0
    assert cli("project", "update", "carry", "--late-events", "next_invoice").exit_code == 0

    def load(name: str, *lines: bytes) -> None:
        (tmp_path / name).write_bytes(b"".join(lines))
        assert cli("ingest", str(tmp_path / name), "--project", "carry").exit_code == 0

    load("aug.jsonl", *[_event(f"a{i}", "k1", "2026-08-10T00:00:00Z") for i in range(10)])
    august = _bill_month(cli, "carry", "2026-08", "2026-09-02T00:00:00Z", "--finalize")
    assert august["finalized"] == ["CARRY-000001"]
    load("late.jsonl", *[_event(f"l{i}", "k1", "2026-08-20T00:00:00Z") for i in range(4)])
    again = _bill_month(cli, "carry", "2026-08", "2026-09-02T00:00:00Z")
    assert [(c["action"], c["landed"], c["late_events"]) for c in again["changes"]] == [
        ("unchanged", "next_invoice", 4)
    ]
    september = _bill_month(cli, "carry", "2026-09", "2026-10-02T00:00:00Z", "--finalize")
    assert [(c["number"], c["total"]) for c in september["changes"]] == [("CARRY-000002", "5.04")]
    october = _bill_month(cli, "carry", "2026-10", "2026-11-02T00:00:00Z", "--finalize")
    # October is the base fee alone: September's carried lines are not carried back out.
    assert [(c["number"], c["total"]) for c in october["changes"]] == [("CARRY-000003", "5.00")]
    rerun = _bill_month(cli, "carry", "2026-10", "2026-11-02T00:00:00Z")
    assert rerun["status"] == "unchanged" and rerun["corrections"] == 0
    # More August calls once September is finalized: nothing can carry them any more, so
    # rerunning August corrects it, counting the 4 calls September already carried.
    load("later.jsonl", *[_event(f"m{i}", "k1", "2026-08-25T00:00:00Z") for i in range(3)])
    corrected = _bill_month(cli, "carry", "2026-08", "2026-09-02T00:00:00Z", "--finalize")
    assert [(c["action"], c["total"]) for c in corrected["changes"]] == [("corrected", "0.03")]
    stored = {i.number: (i.kind, i.total) for i in invoices(engine) if i.number.startswith("CARRY")}
    assert stored == {
        "CARRY-000001": ("invoice", Decimal("5.1")),
        "CARRY-000002": ("invoice", Decimal("5.04")),
        "CARRY-000003": ("invoice", Decimal("5")),
        "CARRY-000004": ("supplemental", Decimal("0.03")),
    }
    assert _bill_month(cli, "carry", "2026-08", "2026-09-02T00:00:00Z")["status"] == "unchanged"


def test_a_customer_moved_to_another_time_zone_is_rebilled_once(
    shop: Cli, engine: Engine, tmp_path: Path
) -> None:
    """The finalized October of the old zone is reversed in full and the new zone's October
    billed: the customer never pays two Octobers."""
    bill(shop, "--finalize")
    moved = tmp_path / "moved.csv"
    moved.write_text("external_id,timezone\nc3,Asia/Tokyo\n")
    assert shop("customer", "import", str(moved), "--project", "acme").exit_code == 0
    rerun = bill(shop, "--finalize")
    actions = sorted((c["customer"], c["action"], c["total"]) for c in rerun["changes"])
    assert actions == [("c3", "corrected", "-5.00"), ("c3", "created", "5.00")]
    c3 = [i for i in invoices(engine) if i.total is not None and i.number.startswith("ACME")]
    credit = [i for i in c3 if i.kind == "credit_note"]
    assert len(credit) == 1 and credit[0].total == Decimal("-5")
    assert bill(shop)["status"] == "unchanged"


def test_a_moved_draft_is_voided_not_billed_twice(
    shop: Cli, engine: Engine, tmp_path: Path
) -> None:
    bill(shop)
    moved = tmp_path / "moved.csv"
    moved.write_text("external_id,timezone\nc3,Asia/Tokyo\n")
    assert shop("customer", "import", str(moved), "--project", "acme").exit_code == 0
    rerun = bill(shop)
    assert sorted((c["customer"], c["action"]) for c in rerun["changes"]) == [
        ("c3", "created"),
        ("c3", "voided"),
    ]
    live = [i for i in invoices(engine) if i.status != "void"]
    assert len(live) == 3  # one October per customer
    voided = [i for i in invoices(engine) if i.status == "void"]
    assert len(voided) == 1 and voided[0].void_reason.startswith("no longer billed")


def test_ignore_still_bills_a_charge_added_after_finalization(shop: Cli, engine: Engine) -> None:
    """The policy is about late events; a change of terms is always corrected."""
    assert shop("project", "update", "acme", "--late-events", "ignore").exit_code == 0
    bill(shop, "--finalize")
    added = shop(
        "charge",
        "add",
        "c3",
        "--amount",
        "12.50",
        "--description",
        "Setup",
        "--idempotency-key",
        "setup-c3",
        "--at",
        "2026-10-20T00:00:00Z",
        "--project",
        "acme",
    )
    assert added.exit_code == 0, added.stderr
    rerun = bill(shop)
    assert [(c["customer"], c["action"], c["total"]) for c in rerun["changes"]] == [
        ("c3", "corrected", "12.50")
    ]


def test_finalize_never_finalizes_a_period_that_has_not_ended(shop: Cli) -> None:
    """--as-of in the future plans that month, but finalizing waits for the real end."""
    result = shop(
        "run",
        "bill",
        "--period",
        "2099-01",
        "--as-of",
        "2099-02-05T00:00:00Z",
        "--finalize",
        "--project",
        "acme",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    data = result.json()
    assert data["created"] == 3 and data["finalized"] == []
