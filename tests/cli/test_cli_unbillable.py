"""A stored event whose meter reads a value no invoice can hold (stored before ingest checked
property values, here written straight into the events table) costs its own customer's
invoice, never the month: `run bill` (with and without `--finalize`, and reruns) bills and
finalizes the others, names the customer and the event, exits 3; `invoice finalize` of an
invoice beyond the ledger's range is a clear error; `check` and `doctor` show it.

The shop is `invoice_shop` (tests/support/shops.py): c1 on pro (tokens read from
`properties.tokens`, 0.001 each past 100), c2 on basic, October billed as drafts ACME-000001
(c1, 56.75) and ACME-000002 (c2, 5.56).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, delete, select, update

from neruba_cli.db.tables import events_t, invoices_t
from tests.support.cli import Cli, expect, ok
from tests.support.events import Ev, store_directly
from tests.support.shops import invoice_shop

AS_OF = "2026-11-02T00:00:00Z"
HOSTILE = {
    "overflow": "1000000000000000000000000000000000000000",  # 1e39 as a string of digits
    "inexact": 1e308,  # a JSON number
}


def hostile(kind: str) -> Ev:
    return Ev(
        f"evil-{kind}",
        "c1",
        "tokens",
        datetime(2026, 10, 20, tzinfo=UTC),
        properties={"tokens": HOSTILE[kind]},
    )


def bill(cli: Cli, *extra: str, code: int = 3) -> dict[str, Any]:
    report: dict[str, Any] = expect(
        cli, code, "run", "bill", "--period", "2026-10", "--as-of", AS_OF, *extra
    )
    return report


def invoices(cli: Cli) -> dict[str, tuple[str, str, str]]:
    rows = ok(cli, "invoice", "list", "--period", "2026-10")
    return {row["number"]: (row["customer"], row["status"], row["total"]) for row in rows}


def only_failure(report: dict[str, Any], kind: str) -> dict[str, Any]:
    (failure,) = report["failed"]
    assert failure["customer"] == "c1"
    assert failure["period_start"] == "2026-10-01T00:00:00Z"
    (event,) = failure["events"]
    assert event["idempotency_key"] == f"evil-{kind}"
    assert (event["meter"], event["property"]) == ("tokens", "properties.tokens")
    assert "26 integer digits" in event["reason"]
    return failure


@pytest.mark.parametrize("kind", ["overflow", "inexact"])
def test_one_hostile_event_costs_its_customer_only(
    cli: Cli, engine: Engine, tmp_path: Path, kind: str
) -> None:
    invoice_shop(cli, tmp_path)
    store_directly(engine, [hostile(kind)])

    report = bill(cli, "--finalize")

    failure = only_failure(report, kind)
    assert failure["invoice"] == "ACME-000001"  # its draft is left as it was
    assert "tokens" in failure["reason"]
    assert report["finalized"] == ["ACME-000002"]
    assert report["status"] == "completed" and report["run"]
    assert invoices(cli) == {
        "ACME-000001": ("c1", "draft", "56.75"),
        "ACME-000002": ("c2", "finalized", "5.56"),
    }
    # a rerun says the same, changes nothing else, and still exits 3
    again = bill(cli, "--finalize")
    assert again["failed"] == report["failed"] and again["finalized"] == []
    assert invoices(cli)["ACME-000001"] == ("c1", "draft", "56.75")


def test_a_fresh_month_bills_the_others_and_names_the_event(
    cli: Cli, engine: Engine, tmp_path: Path
) -> None:
    """No invoice yet: the run creates c2's, writes nothing for c1 and says why, in words."""
    invoice_shop(cli, tmp_path)
    with engine.begin() as conn:  # forget October's drafts: a first run of the month
        conn.execute(invoices_t.update().values(corrects_id=None))
    for table in ("invoice_revisions", "invoice_lines", "invoices", "billing_runs"):
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DELETE FROM {table}")
    store_directly(engine, [hostile("overflow")])

    result = cli("run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--project", "acme")

    assert result.exit_code == 3, result.stderr
    assert "not billed: c1 2026-10-01 → 2026-11-01" in result.stdout
    assert "event evil-overflow: meter tokens reads properties.tokens = " in result.stdout
    assert "1 customer not billed" in result.stdout
    stored = invoices(cli)
    assert [(c, s) for c, s, _total in stored.values()] == [("c2", "draft")]
    dry = expect(cli, 3, "run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--dry-run")
    assert [f["customer"] for f in dry["failed"]] == ["c1"]


def test_check_and_doctor_show_it_until_a_run_bills_the_customer(
    cli: Cli, engine: Engine, tmp_path: Path
) -> None:
    invoice_shop(cli, tmp_path)
    assert cli("check", "--project", "acme", "--json").exit_code == 0
    store_directly(engine, [hostile("overflow")])

    checked = expect(cli, 4, "check")  # the stored event, before any run
    problems = _problems(checked)
    assert any("evil-overflow" in p and "tokens" in p for p in problems), problems

    bill(cli, "--finalize")
    problems = _problems(expect(cli, 4, "check"))
    assert any("c1" in p and "2026-10" in p and "not billed" in p for p in problems), problems

    doctor = cli("doctor", "--project", "acme", "--json")
    runs = next(c for c in doctor.json()["checks"] if c["name"] == "unbilled")
    assert runs["status"] == "warn" and "c1" in runs["detail"], runs

    # the event removed by the database owner (`events void` is the operator's remedy), rerun
    _remove_the_event(engine)
    report = bill(cli, "--finalize", code=0)
    assert report["failed"] == [] and report["finalized"] == ["ACME-000001"]
    assert cli("check", "--project", "acme", "--json").exit_code == 0


@pytest.mark.parametrize("kind", ["overflow", "inexact"])
def test_voiding_the_event_bills_its_customer(
    cli: Cli, engine: Engine, tmp_path: Path, kind: str
) -> None:
    """The operator's remedy: `events void` the hostile event; the rerun bills and finalizes
    c1 as if it had never come, and `check` is clean again."""
    invoice_shop(cli, tmp_path)
    store_directly(engine, [hostile(kind)])
    only_failure(bill(cli, "--finalize"), kind)

    voided = ok(cli, "events", "void", f"evil-{kind}", "--reason", "unbillable reading")
    assert voided["voided"] == 1

    report = bill(cli, "--finalize", code=0)
    assert report["failed"] == [] and report["finalized"] == ["ACME-000001"]
    assert invoices(cli) == {
        "ACME-000001": ("c1", "finalized", "56.75"),
        "ACME-000002": ("c2", "finalized", "5.56"),
    }
    assert cli("check", "--project", "acme", "--json").exit_code == 0
    assert ok(cli, "usage", "show", "c1", "--period", "2026-10")


def test_check_names_every_unbillable_event_not_only_the_first(
    cli: Cli, engine: Engine, tmp_path: Path
) -> None:
    """The sweep streams the events: reporting the first must not cut the stream short (on
    MariaDB a query run while an unbuffered result is open drops the rest of it; 2,500 events
    between the two make more than one streamed batch)."""
    invoice_shop(cli, tmp_path)
    day = datetime(2026, 10, 21, tzinfo=UTC)
    store_directly(
        engine,
        [
            hostile("overflow"),
            *(Ev(f"fine-{i}", "c1", "tokens", day, properties={"tokens": i}) for i in range(2500)),
            Ev("evil-late", "c1", "tokens", day, properties={"tokens": "9" * 30}),
        ],
    )
    problems = _problems(expect(cli, 4, "check"))
    named = sorted(key for key in ("evil-overflow", "evil-late") if any(key in p for p in problems))
    assert named == ["evil-late", "evil-overflow"], problems


def test_invoice_finalize_refuses_an_invoice_beyond_the_ledger(
    cli: Cli, engine: Engine, tmp_path: Path
) -> None:
    """A draft stored before amounts were checked, as SQLite stored it: a 1.25e34 USD
    tokens line and totals to match."""
    invoice_shop(cli, tmp_path)
    huge = Decimal("12500000000000000000000000000000000.00")
    with engine.begin() as conn:
        content = orjson.loads(
            conn.execute(
                select(invoices_t.c.content).where(invoices_t.c.number == "ACME-000001")
            ).scalar_one()
        )
        tokens = next(line for line in content["lines"] if line["meter"] == "tokens")
        tokens["amount"] = str(huge)
        content["subtotal"] = content["total"] = str(huge + 56)
        conn.execute(
            update(invoices_t)
            .where(invoices_t.c.number == "ACME-000001")
            .values(content=orjson.dumps(content).decode())
        )
        if conn.dialect.name == "sqlite":  # the servers' columns refuse it (their overflow)
            conn.execute(
                update(invoices_t)
                .where(invoices_t.c.number == "ACME-000001")
                .values(subtotal=huge + 56, total=huge + 56)
            )

    error = expect(cli, 1, "invoice", "finalize", "ACME-000001")

    assert error["type"] == "unbillable", error
    assert "invoice ACME-000001 cannot be posted" in error["message"]
    assert "exceeds the ledger's 64-bit range" in error["message"]
    period = expect(cli, 3, "invoice", "finalize", "--period", "2026-10")
    assert period["finalized"] == ["ACME-000002"]
    assert [u["number"] for u in period["unpostable"]] == ["ACME-000001"]
    assert invoices(cli)["ACME-000001"][1] == "draft"


def test_a_run_finalizes_the_others_and_names_an_unpostable_draft(
    cli: Cli, engine: Engine, tmp_path: Path
) -> None:
    """The draft above, left by an older version, under `run bill --finalize`: its inputs did
    not change, so the run does not price it again, and finalizing skips it alone."""
    invoice_shop(cli, tmp_path)
    with engine.begin() as conn:
        content = orjson.loads(
            conn.execute(
                select(invoices_t.c.content).where(invoices_t.c.number == "ACME-000001")
            ).scalar_one()
        )
        content["lines"][0]["amount"] = content["subtotal"] = content["total"] = "1E+34"
        conn.execute(
            update(invoices_t)
            .where(invoices_t.c.number == "ACME-000001")
            .values(content=orjson.dumps(content).decode())
        )

    report = bill(cli, "--finalize")

    assert report["finalized"] == ["ACME-000002"]
    assert [(f["customer"], f["invoice"]) for f in report["failed"]] == [("c1", "ACME-000001")]
    assert "64-bit" in report["failed"][0]["reason"]


def _problems(report: dict[str, Any]) -> list[str]:
    return [p for check in report["checks"] for p in check["details"]]


def _remove_the_event(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(delete(events_t).where(events_t.c.idempotency_key.like("evil-%")))


def test_a_number_no_database_can_read_costs_its_customer_only(
    cli: Cli, engine: Engine, tmp_path: Path
) -> None:
    """`"tokens": 1e999999999`, a JSON number past PostgreSQL's NUMERIC (its query fails) and
    past what SQLite's exact functions write out: the batch is billed customer by customer,
    and only c1 is skipped."""
    invoice_shop(cli, tmp_path)
    store_directly(engine, [hostile("overflow")])
    with engine.begin() as conn:
        conn.execute(
            update(events_t)
            .where(events_t.c.idempotency_key == "evil-overflow")
            .values(properties='{"tokens":1e999999999}')
        )

    report = bill(cli, "--finalize")

    (failure,) = report["failed"]
    assert failure["customer"] == "c1"
    assert [(e["idempotency_key"], e["value"]) for e in failure["events"]] == [
        ("evil-overflow", "1E+999999999")
    ]
    assert report["finalized"] == ["ACME-000002"]
    assert invoices(cli)["ACME-000001"] == ("c1", "draft", "56.75")
