"""Plan changes and cancellations against fees in advance, end to end on every dialect.

The shop: plans pro (49.00 a month), max (99.00 a month) and qtr (91.00 a quarter), all with
their base fee in advance, prorated by day, no trial; customers in UTC.

By hand:
  pro from Oct 1, changed to max on Nov 16 (November has 30 days). The October invoice billed
  October and November in advance: 49.00 + 49.00. November's invoice credits Pro's unused
  Nov 16–30 (15/30 of 49.00 = -24.50), charges Max for Nov 16–30 (15/30 of 99.00 = 49.50) and
  December in advance (99.00): 124.00.
  qtr anniversary from Jan 15 (periods Jan 15 – Apr 15 – Jul 15), cancelled Jun 20: April's
  invoice billed both quarters in advance (182.00); the quarter Apr 15 – Jul 15 has 91 days,
  66 served (Apr 15 – Jun 19): the June run credits the 25 unused, -25.00; July bills nothing.
  pro cancelled Nov 20 after November's invoice billed December: the rerun of November
  reverses December (-49.00) and credits Nov 20–30, 11/30 of 49.00 (49.00 - 31.03 = -17.97).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, select, update

from neruba_cli.db.tables import invoice_revisions_t, invoices_t
from neruba_cli.domain.invoice import inputs_fingerprint, plain_fee_description, setup_document
from tests.support.catalogs import apply_catalog, catalog, meter, per_unit, plan
from tests.support.cli import Cli, ok

CATALOG = catalog(
    plans=[
        plan("pro", "49.00", timing="advance", name="Pro", trial_days=0),
        plan("max", "99.00", timing="advance", name="Max", trial_days=0),
        plan("qtr", "91.00", timing="advance", interval="quarter", name="Quarterly", trial_days=0),
    ]
)


@pytest.fixture
def shop(cli: Cli, tmp_path: Path) -> Cli:
    ok(cli, "project", "create", "acme")
    apply_catalog(cli, tmp_path, CATALOG)
    ok(cli, "customer", "create", "c1")
    return cli


def subscribe(cli: Cli, plan_code: str, start: str, *extra: str) -> str:
    created = ok(cli, "subscription", "create", "c1", plan_code, "--start", start, *extra)
    return str(created["id"])


def bill(cli: Cli, label: str, as_of: str, *extra: str) -> dict[str, Any]:
    return dict(ok(cli, "run", "bill", "--period", label, "--as-of", as_of, *extra))


def invoices(cli: Cli, label: str) -> list[dict[str, Any]]:
    return [dict(row) for row in ok(cli, "invoice", "list", "--period", label)]


def lines(cli: Cli, number: str) -> list[tuple[str, str]]:
    shown = ok(cli, "invoice", "show", number)
    return [(line["description"], line["amount"]) for line in shown["lines"]]


def actions(report: dict[str, Any]) -> list[str]:
    """What the run did to each invoice it changed; ["unchanged"] when it changed nothing."""
    changed = [change["action"] for change in report["changes"]]
    return changed or (["unchanged"] if report["unchanged"] else [])


def test_a_change_mid_period_credits_the_unused_fee_in_advance(shop: Cli) -> None:
    sub = subscribe(shop, "pro", "2026-10-01T00:00:00Z")
    bill(shop, "2026-10", "2026-11-01T00:00:00Z", "--finalize")
    (october,) = invoices(shop, "2026-10")
    assert lines(shop, october["number"]) == [
        ("Pro base fee, 1 Oct – 31 Oct 2026 (in advance)", "49.00"),
        ("Pro base fee, 1 Nov – 30 Nov 2026 (in advance)", "49.00"),
    ]
    ok(shop, "subscription", "change", sub, "--plan", "max", "--at", "2026-11-16T00:00:00Z")
    # October stays as billed: the change is settled on November's invoice
    rerun = bill(shop, "2026-10", "2026-12-01T00:00:00Z")
    assert actions(rerun) == ["unchanged"]
    bill(shop, "2026-11", "2026-12-01T00:00:00Z", "--finalize")
    (november,) = invoices(shop, "2026-11")
    assert lines(shop, november["number"]) == [
        ("Pro base fee, unused 16 Nov – 30 Nov 2026 (credit)", "-24.50"),
        ("Max base fee, 16 Nov – 30 Nov 2026 (in advance)", "49.50"),
        ("Max base fee, 1 Dec – 31 Dec 2026 (in advance)", "99.00"),
    ]
    assert november["total"] == "124.00"
    explained = ok(shop, "invoice", "explain", november["number"])
    credit, charge, _ = explained["lines"]
    assert (credit["plan"], credit["credit"]["next_plan"], charge["plan"]) == (
        "pro@1",
        "max@1",
        "max@1",
    )
    assert (credit["proration"], credit["fee_dates"]) == ("1/2", "1 Nov – 30 Nov 2026")
    assert credit["why"] == (
        "credit for the unused 1/2 of the period 1 Nov – 30 Nov 2026 billed in advance on "
        "pro@1, after the change to max@1 = -24.50 USD"
    )
    text = shop("invoice", "explain", november["number"], "--project", "acme")
    assert "fee period: 1 Nov – 30 Nov 2026" in text.stdout
    assert "after the change to max@1" in text.stdout
    # idempotent: reruns of both months change nothing, and verify agrees
    assert actions(bill(shop, "2026-11", "2026-12-01T00:00:00Z")) == ["unchanged"]
    assert actions(bill(shop, "2026-10", "2026-12-01T00:00:00Z")) == ["unchanged"]
    verified = ok(shop, "invoice", "verify", "--period", "2026-11")
    assert verified["mismatches"] == 0


def test_a_quarterly_plan_cancelled_in_june_is_billed_in_the_june_run(shop: Cli) -> None:
    sub = subscribe(shop, "qtr", "2026-01-15T00:00:00Z", "--anchor", "anniversary")
    bill(shop, "2026-04", "2026-05-01T00:00:00Z", "--finalize")
    (april,) = invoices(shop, "2026-04")
    assert lines(shop, april["number"]) == [
        ("Quarterly base fee, 15 Jan – 14 Apr 2026 (in advance)", "91.00"),
        ("Quarterly base fee, 15 Apr – 14 Jul 2026 (in advance)", "91.00"),
    ]
    ok(shop, "subscription", "cancel", sub, "--at", "2026-06-20T00:00:00Z")
    june = bill(shop, "2026-06", "2026-07-01T00:00:00Z", "--finalize")
    (outcome,) = june["changes"]
    assert (outcome["period_start"], outcome["period_end"]) == (
        "2026-04-15T00:00:00Z",
        "2026-06-20T00:00:00Z",
    )
    (final,) = invoices(shop, "2026-06")
    assert final["status"] == "finalized"  # its period ended on June 20
    assert lines(shop, final["number"]) == [
        ("Quarterly base fee, unused 20 Jun – 14 Jul 2026 (credit)", "-25.00"),
    ]
    explained = ok(shop, "invoice", "explain", final["number"])
    assert explained["lines"][0]["credit"] == {
        "billed_plan": "qtr@1",
        "next_plan": None,
        "ended": True,
    }
    # the month the full period would have ended in bills nothing more
    assert actions(bill(shop, "2026-07", "2026-08-01T00:00:00Z")) == []
    assert invoices(shop, "2026-07") == []
    assert actions(bill(shop, "2026-06", "2026-07-01T00:00:00Z")) == ["unchanged"]


def test_a_cancelled_plan_in_arrears_bills_its_share_in_the_month_it_ended(
    shop: Cli, tmp_path: Path
) -> None:
    apply_catalog(
        shop,
        tmp_path,
        catalog(plans=[plan("qtra", "91.00", interval="quarter", name="Q", trial_days=0)]),
        name="arrears.toml",
    )
    sub = subscribe(shop, "qtra", "2026-04-15T00:00:00Z", "--anchor", "anniversary")
    said = shop("subscription", "cancel", sub, "--at", "2026-06-20T12:00:00Z", "--project", "acme")
    assert said.exit_code == 0, said.stderr
    assert "its last period is billed by the run of 2026-06" in said.stdout + said.stderr
    bill(shop, "2026-06", "2026-07-01T00:00:00Z")
    (final,) = invoices(shop, "2026-06")
    # Apr 15 – Jun 20: 67 of 91 days (the partial last day counts)
    assert lines(shop, final["number"]) == [
        ("Q base fee, 15 Apr – 20 Jun 2026 (in arrears)", "67.00")
    ]
    assert actions(bill(shop, "2026-07", "2026-08-01T00:00:00Z")) == []


def test_a_backdated_cancellation_after_the_fee_in_advance_was_billed(shop: Cli) -> None:
    sub = subscribe(shop, "pro", "2026-10-01T00:00:00Z")
    bill(shop, "2026-10", "2026-11-01T00:00:00Z", "--finalize")
    bill(shop, "2026-11", "2026-12-01T00:00:00Z", "--finalize")
    (november,) = invoices(shop, "2026-11")
    assert lines(shop, november["number"]) == [
        ("Pro base fee, 1 Dec – 31 Dec 2026 (in advance)", "49.00")
    ]
    ok(shop, "subscription", "cancel", sub, "--at", "2026-11-20T00:00:00Z")
    rerun = bill(shop, "2026-11", "2026-12-05T00:00:00Z", "--finalize")
    assert actions(rerun) == ["corrected"]
    credit_note = next(i for i in invoices(shop, "2026-11") if i["kind"] == "credit_note")
    assert credit_note["total"] == "-66.97"
    assert lines(shop, credit_note["number"]) == [
        ("Pro base fee, unused 20 Nov – 30 Nov 2026 (credit) (correction)", "-17.97"),
        ("Pro base fee, 1 Dec – 31 Dec 2026 (in advance) (correction)", "-49.00"),
    ]
    # no duplicates: the next rerun and December's run bill nothing more
    assert actions(bill(shop, "2026-11", "2026-12-05T00:00:00Z")) == ["unchanged"]
    assert actions(bill(shop, "2026-12", "2027-01-01T00:00:00Z")) == []
    assert ok(shop, "invoice", "verify", "--period", "2026-11")["mismatches"] == 0


def test_invoices_stored_with_the_older_fee_text_are_left_as_they_are(
    shop: Cli, engine: Engine
) -> None:
    """An invoice written before base-fee lines named their days: a rerun writes no
    correction for the text alone, and verify holds (with a note)."""
    subscribe(shop, "pro", "2026-10-01T00:00:00Z")
    bill(shop, "2026-10", "2026-11-01T00:00:00Z", "--finalize")
    bill(shop, "2026-11", "2026-12-01T00:00:00Z")  # a draft
    for label in ("2026-10", "2026-11"):
        (row,) = invoices(shop, label)
        _write_older_text(engine, row["number"])
        assert lines(shop, row["number"])[0][0] == "Pro base fee (in advance)"
    for label, as_of in (("2026-10", "2026-11-01T00:00:00Z"), ("2026-11", "2026-12-01T00:00:00Z")):
        assert actions(bill(shop, label, as_of)) == ["unchanged"]
        verified = ok(shop, "invoice", "verify", "--period", label)
        assert verified["mismatches"] == 0
        (checked,) = verified["invoices"]
        assert any("base-fee lines keep the text" in note for note in checked["notes"])
    assert len(invoices(shop, "2026-10")) == 1


def _write_older_text(engine: Engine, number: str) -> None:
    """Rewrite an invoice's stored document (and its revision record) as the version before
    days in base-fee lines wrote it."""
    with engine.begin() as conn:
        invoice_id, version, content = conn.execute(
            select(invoices_t.c.id, invoices_t.c.version, invoices_t.c.content).where(
                invoices_t.c.number == number
            )
        ).one()
        document = orjson.loads(content)
        for line in document["lines"]:
            if line["kind"] == "base_fee":
                line["description"] = plain_fee_description(line["description"])
        text = orjson.dumps(document)
        stored = text if isinstance(content, bytes) else text.decode()
        conn.execute(update(invoices_t).where(invoices_t.c.id == invoice_id).values(content=stored))
        conn.execute(
            update(invoice_revisions_t)
            .where(invoice_revisions_t.c.invoice_id == invoice_id)
            .where(invoice_revisions_t.c.version == version)
            .values(content=stored)
        )


def test_a_backdated_cancellation_that_moves_the_final_invoice_to_an_earlier_month(
    shop: Cli,
) -> None:
    """July's run billed the quarter Apr 15 – Jul 15 (and the next quarter in advance) before
    the cancellation as of June 20 was recorded: rerunning July reverses that invoice (the
    month no longer bills the period), rerunning June writes the final invoice; all 157.00 =
    91.00 + 66.00 served, nothing twice."""
    sub = subscribe(shop, "qtr", "2026-01-15T00:00:00Z", "--anchor", "anniversary")
    bill(shop, "2026-04", "2026-05-01T00:00:00Z", "--finalize")
    bill(shop, "2026-07", "2026-08-01T00:00:00Z", "--finalize")
    (july,) = invoices(shop, "2026-07")
    assert july["total"] == "91.00"
    ok(shop, "subscription", "cancel", sub, "--at", "2026-06-20T00:00:00Z")
    assert actions(bill(shop, "2026-07", "2026-08-02T00:00:00Z", "--finalize")) == ["corrected"]
    reversal = next(i for i in invoices(shop, "2026-07") if i["kind"] == "credit_note")
    assert reversal["total"] == "-91.00"
    assert actions(bill(shop, "2026-06", "2026-08-02T00:00:00Z", "--finalize")) == ["created"]
    (june,) = invoices(shop, "2026-06")
    assert june["total"] == "-25.00"
    billed = [
        row["total"] for label in ("2026-04", "2026-06", "2026-07") for row in invoices(shop, label)
    ]
    assert sum(Decimal(total) for total in billed) == Decimal("157.00")
    for label in ("2026-06", "2026-07"):
        assert actions(bill(shop, label, "2026-08-02T00:00:00Z")) == ["unchanged"]
        assert ok(shop, "invoice", "verify", "--period", label)["mismatches"] == 0


def test_an_invoice_that_prorated_a_fee_in_advance_before_this_rule_is_corrected_once(
    shop: Cli, engine: Engine
) -> None:
    """Before settlements, the October invoice of a change already scheduled for Nov 16 billed
    November in advance prorated (Pro 24.50 + Max 49.50) and its inputs had no mark; written
    here in that older form. Its inputs now carry the mark, so the rerun of October reprices
    it once: a credit note of -25.00 (Pro +24.50 to the whole month billed in advance, Max
    -49.50 settled on November's invoice instead); November then settles. In all 123.00 -
    25.00 + 124.00 = 222.00: October 49.00, November 24.50 + 49.50, December 99.00."""
    sub = subscribe(shop, "pro", "2026-10-01T00:00:00Z")
    ok(shop, "subscription", "change", sub, "--plan", "max", "--at", "2026-11-16T00:00:00Z")
    bill(shop, "2026-10", "2026-11-01T00:00:00Z")
    (october,) = invoices(shop, "2026-10")
    _write_older_rule(engine, october["number"])
    assert [amount for _, amount in lines(shop, october["number"])] == ["49.00", "24.50", "49.50"]
    ok(shop, "invoice", "finalize", october["number"])
    assert actions(bill(shop, "2026-10", "2026-11-02T00:00:00Z", "--finalize")) == ["corrected"]
    note = next(i for i in invoices(shop, "2026-10") if i["kind"] == "credit_note")
    assert note["total"] == "-25.00"
    assert sorted(amount for _, amount in lines(shop, note["number"])) == ["-49.50", "24.50"]
    assert actions(bill(shop, "2026-10", "2026-11-02T00:00:00Z")) == ["unchanged"]
    bill(shop, "2026-11", "2026-12-01T00:00:00Z", "--finalize")
    (november,) = invoices(shop, "2026-11")
    assert november["total"] == "124.00"
    totals = [row["total"] for label in ("2026-10", "2026-11") for row in invoices(shop, label)]
    assert sum(Decimal(total) for total in totals) == Decimal("222.00")
    for label in ("2026-10", "2026-11"):
        assert ok(shop, "invoice", "verify", "--period", label)["mismatches"] == 0


def _write_older_rule(engine: Engine, number: str) -> None:
    """The draft as the version before settlements wrote it: November's fee in advance
    prorated over the two plans, the text without days, the inputs without the mark."""
    with engine.begin() as conn:
        row = conn.execute(select(invoices_t).where(invoices_t.c.number == number)).one()
        content, inputs = orjson.loads(row.content), orjson.loads(row.inputs)
        first, advance = content["lines"]
        pro = {
            **advance,
            "description": "Pro base fee (in advance)",
            "service": {"start": "2026-11-01T00:00:00Z", "end": "2026-11-16T00:00:00Z"},
            "amount": "24.50",
            "amount_exact": "24.5",
            "proration": "1/2",
        }
        max_line = {
            **pro,
            "description": "Max base fee (in advance)",
            "plan": "max@1",
            "service": {"start": "2026-11-16T00:00:00Z", "end": "2026-12-01T00:00:00Z"},
            "amount": "49.50",
            "amount_exact": "49.5",
        }
        first = {**first, "description": "Pro base fee (in advance)"}
        content = {**content, "lines": [first, pro, max_line]}
        content.update(subtotal="123.00", total="123.00")
        for terms in inputs["subscriptions"]:
            for entry in terms["fee_periods"]:
                entry.pop("advance", None)
        fingerprint = inputs_fingerprint(inputs)
        values = {
            "content": _as_stored(row.content, content),
            "inputs": _as_stored(row.inputs, inputs),
            "fingerprint": fingerprint,
            "setup_fingerprint": inputs_fingerprint(setup_document(inputs)),
            "subtotal": Decimal("123.00"),
            "total": Decimal("123.00"),
        }
        conn.execute(update(invoices_t).where(invoices_t.c.id == row.id).values(**values))
        conn.execute(
            update(invoice_revisions_t)
            .where(invoice_revisions_t.c.invoice_id == row.id)
            .where(invoice_revisions_t.c.version == row.version)
            .values(content=_as_stored(row.content, content), fingerprint=fingerprint)
        )


def _as_stored(like: Any, document: Any) -> Any:
    text = orjson.dumps(document)
    return text if isinstance(like, bytes) else text.decode()


def test_usage_in_arrears_up_to_the_cancellation_on_the_final_invoice(
    shop: Cli, tmp_path: Path
) -> None:
    """The final invoice of a quarter cut short bills its usage up to the cancellation, and a
    prorated charge counts against the whole quarter: 10 seats from Apr 15 (a recurring sum
    at 1.00 a seat, prorated by day) cancelled on June 20 at noon: 67 of 91 days (the partial
    last day counts) → 10 × 67/91 = 7.36264 seats → 7.36; 3 api calls at 0.50, the one after
    the cancellation not billed; a fee in arrears of 0."""
    apply_catalog(
        shop,
        tmp_path,
        catalog(
            meters=[meter("seats", "sum", recurring=True), meter("calls", "count")],
            plans=[
                plan(
                    "team",
                    "0.00",
                    per_unit("seats", "1.00", prorated=True),
                    per_unit("calls", "0.50"),
                    interval="quarter",
                    trial_days=0,
                )
            ],
        ),
        name="usage.toml",
    )
    sub = subscribe(shop, "team", "2026-04-15T00:00:00Z", "--anchor", "anniversary")
    ok(shop, "subscription", "cancel", sub, "--at", "2026-06-20T12:00:00Z")
    events = [
        {"idempotency_key": "s1", "customer": "c1", "meter": "seats", "quantity": "10",
         "timestamp": "2026-04-15T00:00:00Z"},
        *({"idempotency_key": f"k{day}", "customer": "c1", "meter": "calls",
           "timestamp": f"2026-06-{day:02d}T08:00:00Z"} for day in (1, 2, 3, 25)),
    ]  # fmt: skip
    path = tmp_path / "usage.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(event) for event in events) + b"\n")
    ok(shop, "ingest", str(path))
    bill(shop, "2026-06", "2026-07-01T00:00:00Z")
    (final,) = invoices(shop, "2026-06")
    shown = ok(shop, "invoice", "show", final["number"])
    usage = {
        line["meter"]: (line["quantity"], line["amount"])
        for line in shown["lines"]
        if line["meter"]
    }
    assert usage == {"seats": ("7.36264", "7.36"), "calls": ("3", "1.50")}
    assert shown["period"]["end"] == "2026-06-20T12:00:00Z"
    assert actions(bill(shop, "2026-07", "2026-08-01T00:00:00Z")) == []
