"""`neruba customer forget` end to end on every dialect: personal data goes, the books stay
explainable and verifiable, replays stay duplicates, and a meter's property is refused.

Reuses the retention shop (tests/support/shops.py): c1 and c2 on plan pro, events with
region/tokens (read by meters) and email/ip/user_agent (personal), October 2025 finalized."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, select, update

from neruba_cli.db.schema import AuditRecord, Customer, Event, Invoice, InvoiceRevision
from neruba_cli.db.tables import event_versions_t, stripe_objects_t, stripe_webhook_events_t
from tests.support.cli import Cli, ok
from tests.support.events import Ev, ingest, write_jsonl
from tests.support.shops import PERSONAL, retention_shop

CONFIG = '[privacy]\npersonal_properties = ["email", "ip", "user_agent"]\n'


@pytest.fixture
def shop(cli: Cli, tmp_path: Path) -> Cli:
    return retention_shop(cli, tmp_path)


@pytest.fixture
def named(shop: Cli, tmp_path: Path, engine: Engine) -> Cli:
    """The shop with a name and e-mail on c1 (given on `customer create` for c3), and the
    privacy config beside the database."""
    with engine.begin() as conn:
        conn.execute(
            update(Customer)
            .where(Customer.external_id == "c1")
            .values(name="Ann Example", email=PERSONAL["email"], stripe_id="cus_ann")
        )
    made = shop(
        "customer",
        "create",
        "c3",
        "--name",
        "Cee Three",
        "--email",
        "c3@example.com",
        "--currency",
        "USD",
        "--project",
        "acme",
    )
    assert made.exit_code == 0, made.stderr
    (tmp_path / "neruba.toml").write_text(CONFIG)
    return shop


def events_of(engine: Engine, external_id: str) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Event.idempotency_key, Event.properties)
            .join(Customer, Customer.id == Event.customer_id)
            .where(Customer.external_id == external_id)
        ).all()
    return {key: orjson.loads(text) for key, text in rows}


def test_forget_removes_personal_data_and_keeps_the_books(
    named: Cli, engine: Engine, tmp_path: Path
) -> None:
    c1_invoice = next(
        i for i in ok(named, "invoice", "list", "--period", "2025-10") if i["customer"] == "c1"
    )["number"]
    before = ok(named, "invoice", "show", c1_invoice)
    c2_before = events_of(engine, "c2")

    dry = ok(named, "customer", "forget", "c1", "--dry-run")
    assert (dry["dry_run"], dry["events"], dry["properties_removed"]) == (True, 73, 73 * 3)
    assert ok(named, "customer", "show", "c1")["email"] == PERSONAL["email"]
    refused = named("customer", "forget", "c1", "--project", "acme")
    assert refused.exit_code == 2 and "--yes" in refused.stderr

    done = ok(named, "customer", "forget", "c1", "--yes")
    assert (done["events"], done["properties_removed"], done["already_forgotten"]) == (
        73,
        219,
        False,
    )
    assert done["customer"] == "c1" and done["forgotten_at"] is not None
    shown = ok(named, "customer", "show", "c1")
    assert (shown["name"], shown["email"], shown["external_id"]) == (None, None, "c1")
    assert shown["forgotten_at"] == done["forgotten_at"] and shown["forgotten_by"]
    human = named("customer", "show", "c1", "--project", "acme")
    assert "was forgotten on" in human.stdout + human.stderr

    for key, properties in events_of(engine, "c1").items():
        assert not set(properties) & set(PERSONAL), (key, properties)
        assert set(properties) in ({"region"}, {"tokens", "model"}, {"tokens"}), properties
    assert events_of(engine, "c2") == c2_before  # only c1 was forgotten

    # Nothing personal is left in invoice documents or the audit arguments.
    with engine.connect() as conn:
        documents = conn.execute(select(Invoice.content)).scalars().all()
        documents += conn.execute(select(InvoiceRevision.content)).scalars().all()
        audit = conn.execute(select(AuditRecord.command, AuditRecord.arguments)).all()
    for text in [*documents, *(arguments for _, arguments in audit)]:
        assert "Ann Example" not in text and PERSONAL["email"] not in text
    forget_audit = [orjson.loads(a) for command, a in audit if command == "customer forget"]
    assert {"customer": "c1", "yes": True} in forget_audit

    # The books: show, explain, verify, rerun and check all still work.
    assert ok(named, "invoice", "show", c1_invoice) == before
    explained = ok(named, "invoice", "explain", c1_invoice)
    assert {line["meter"] for line in explained["lines"]} >= {"eu_calls", "tokens"}
    verified = ok(named, "invoice", "verify", "--period", "2025-10")
    assert verified["mismatches"] == 0 and verified["checked"] == 2
    rerun = ok(named, "run", "bill", "--period", "2025-10", "--as-of", "2025-11-03T00:00:00Z")
    assert rerun["status"] == "unchanged" and rerun["corrections"] == 0
    checked = named("check", "--project", "acme", "--json")
    assert checked.exit_code == 0, checked.stdout + checked.stderr

    # Re-importing the original lines: duplicates, never conflicts.
    again = named(
        "ingest",
        str(tmp_path / "events.jsonl"),
        "--project",
        "acme",
        "--max-future",
        "3650d",
        "--json",
    )
    summary = again.json()
    assert (summary["accepted"], summary["conflicts"], summary["duplicates"]) == (0, 0, 144)

    # A second forget with nothing new removes nothing and keeps the first forget's record.
    second = ok(named, "customer", "forget", "c1", "--yes")
    assert second["already_forgotten"] is True
    assert (second["events"], second["properties_removed"], second["audit_records"]) == (0, 0, 0)
    assert second["name_and_email"] is False
    assert (second["forgotten_at"], second["forgotten_by"]) == (
        done["forgotten_at"],
        done["forgotten_by"],
    )


def test_forgetting_again_removes_what_arrived_since(
    named: Cli, engine: Engine, tmp_path: Path
) -> None:
    """Events ingested after a forget may carry personal properties again (and an import may
    set the name again): a second forget removes them, keeping the first forget's record."""
    done = ok(named, "customer", "forget", "c1", "--yes")
    assert done["already_forgotten"] is False and done["name_and_email"] is True
    late = Ev(
        "after-forget-1",
        "c1",
        "tokens",
        datetime(2026, 1, 5, tzinfo=UTC),
        Decimal(1),
        properties={"tokens": 7, "ip": PERSONAL["ip"], "model": "small"},
    )
    ingest(named, write_jsonl(tmp_path / "after.jsonl", [late]))
    with engine.begin() as conn:
        conn.execute(update(Customer).where(Customer.external_id == "c1").values(name="Ann"))

    dry = ok(named, "customer", "forget", "c1", "--dry-run")
    assert (dry["already_forgotten"], dry["events"], dry["properties_removed"]) == (True, 1, 1)
    assert events_of(engine, "c1")["after-forget-1"]["ip"] == PERSONAL["ip"]  # a dry run

    again = named("customer", "forget", "c1", "--yes", "--project", "acme")
    assert again.exit_code == 0, again.stderr
    assert "already forgotten" in again.stderr and "1 personal properties from 1 events" in (
        again.stderr
    )
    second = ok(named, "customer", "forget", "c1", "--yes")  # and once more: nothing left
    assert (second["events"], second["properties_removed"]) == (0, 0)
    assert events_of(engine, "c1")["after-forget-1"] == {"tokens": 7, "model": "small"}
    shown = ok(named, "customer", "show", "c1")
    assert shown["name"] is None
    assert (shown["forgotten_at"], shown["forgotten_by"]) == (
        done["forgotten_at"],
        done["forgotten_by"],
    )


def test_forget_scrubs_the_create_audit_and_stripe_mirror(named: Cli, engine: Engine) -> None:

    from neruba_cli.db.ids import new_id
    from neruba_cli.db.schema import Project, StripeObject

    with engine.begin() as conn:
        project_id = conn.execute(select(Project.id)).scalar_one()
        now = datetime.now(UTC)
        data = {
            "id": "in_1",
            "object": "invoice",
            "customer": "cus_ann",
            "total": 100,
            "customer_email": PERSONAL["email"],
            "customer_name": "Ann Example",
        }
        conn.execute(
            stripe_objects_t.insert().values(
                id=new_id("sob"),
                project_id=project_id,
                stripe_id="in_1",
                object="invoice",
                stripe_customer="cus_ann",
                data=orjson.dumps(data).decode(),
                observed_at=now,
            )
        )
    done = ok(named, "customer", "forget", "c1", "--yes")
    assert done["stripe_objects"] == 1
    with engine.connect() as conn:
        mirrored = orjson.loads(conn.execute(select(StripeObject.data)).scalar_one())
    assert mirrored["customer_email"] is None and mirrored["customer_name"] is None
    assert mirrored["total"] == 100 and mirrored["customer"] == "cus_ann"

    # A later `stripe pull` refreshes the mirror with the details Stripe still holds: a
    # second forget scrubs them again.
    with engine.begin() as conn:
        conn.execute(stripe_objects_t.update().values(data=orjson.dumps(data).decode()))
    again = ok(named, "customer", "forget", "c1", "--yes")
    assert (again["already_forgotten"], again["stripe_objects"], again["events"]) == (True, 1, 0)
    assert again["forgotten_at"] == done["forgotten_at"]
    with engine.connect() as conn:
        mirrored = orjson.loads(conn.execute(select(StripeObject.data)).scalar_one())
    assert mirrored["customer_email"] is None and mirrored["customer_name"] is None

    c3 = ok(named, "customer", "forget", "c3", "--yes")
    assert (c3["audit_records"], c3["events"]) == (1, 0)
    created = [row for row in ok(named, "audit", "list") if row["command"] == "customer create"]
    c3_args = next(row["arguments"] for row in created if row["arguments"]["external_id"] == "c3")
    assert c3_args["name"] == "[forgotten]" and c3_args["email"] == "[forgotten]"
    c3_again = ok(named, "customer", "forget", "c3", "--yes")
    assert (c3_again["already_forgotten"], c3_again["audit_records"]) == (True, 0)


def test_forget_refuses_a_property_a_meter_reads(
    named: Cli, engine: Engine, tmp_path: Path
) -> None:
    (tmp_path / "neruba.toml").write_text(
        '[privacy]\npersonal_properties = ["email", "region", "tokens"]\n'
    )
    refused = named("customer", "forget", "c1", "--yes", "--project", "acme", "--json")
    assert refused.exit_code == 1
    message = refused.error()["message"]
    assert "meter 'eu_calls'" in message and "'region' as its filter" in message
    assert "meter 'tokens'" in message and "'tokens' as its field" in message
    assert ok(named, "customer", "show", "c1")["forgotten_at"] is None
    assert any("email" in p for p in events_of(engine, "c1").values())  # nothing changed

    (tmp_path / "neruba.toml").write_text('[privacy]\npersonal_properties = ["e-mail"]\n')
    bad = named("customer", "forget", "c1", "--yes", "--project", "acme")
    assert bad.exit_code == 1 and "not a property name" in bad.stderr
    (tmp_path / "neruba.toml").write_text(CONFIG)
    missing = named("customer", "forget", "nobody", "--yes", "--project", "acme")
    assert missing.exit_code == 1 and "does not exist" in missing.stderr


def test_forget_scrubs_stored_stripe_webhook_bodies(named: Cli, engine: Engine) -> None:
    """A verified webhook delivery keeps its raw body; one about the forgotten customer held
    the name and e-mail after forget until the bodies were scrubbed too. Reprocessing reads
    the stored body without verifying it again, so it stays valid JSON of the same shape."""

    from neruba_cli.db.ids import new_id
    from neruba_cli.db.schema import Project, StripeWebhookEvent

    def delivery(event_id: str, obj: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": event_id,
            "object": "event",
            "type": "invoice.paid",
            "data": {"object": obj, "previous_attributes": {"customer_email": "old@example.com"}},
        }

    ann = delivery(
        "evt_ann",
        {
            "id": "in_9",
            "object": "invoice",
            "customer": "cus_ann",
            "amount_paid": 500,
            "customer_email": PERSONAL["email"],
            "customer_name": "Ann Example",
        },
    )
    other = delivery(
        "evt_other",
        {
            "id": "in_8",
            "object": "invoice",
            "customer": "cus_bob",
            "amount_paid": 700,
            "customer_email": "bob@example.com",
            "description": "mentions cus_ann",
        },
    )

    def store(*events: dict[str, Any]) -> None:
        with engine.begin() as conn:
            project_id = conn.execute(select(Project.id)).scalar_one()
            for event in events:
                conn.execute(
                    stripe_webhook_events_t.insert().values(
                        id=new_id("swh"),
                        project_id=project_id,
                        event_id=event["id"],
                        type=event["type"],
                        status="processed",
                        attempts=1,
                        payload=orjson.dumps(event).decode(),
                        received_at=datetime.now(UTC),
                    )
                )

    store(ann, other)
    dry = ok(named, "customer", "forget", "c1", "--dry-run")
    assert dry["webhook_events"] == 1
    done = ok(named, "customer", "forget", "c1", "--yes")
    assert done["webhook_events"] == 1
    with engine.connect() as conn:
        stored = {
            event_id: orjson.loads(payload)
            for event_id, payload in conn.execute(
                select(StripeWebhookEvent.event_id, StripeWebhookEvent.payload)
            )
        }
    scrubbed = stored["evt_ann"]["data"]
    assert PERSONAL["email"] not in orjson.dumps(stored["evt_ann"]).decode()
    assert "Ann Example" not in orjson.dumps(stored["evt_ann"]).decode()
    assert scrubbed["object"]["amount_paid"] == 500 and scrubbed["object"]["customer"] == "cus_ann"
    assert scrubbed["previous_attributes"]["customer_email"] is None
    assert stored["evt_other"] == other  # another customer's delivery is left alone

    # A delivery received after the forget still names the customer: forgetting again
    # scrubs it, and only it.
    store({**ann, "id": "evt_ann_later"})
    again = ok(named, "customer", "forget", "c1", "--yes")
    assert (again["already_forgotten"], again["webhook_events"]) == (True, 1)
    with engine.connect() as conn:
        later = conn.execute(
            select(StripeWebhookEvent.payload).where(StripeWebhookEvent.event_id == "evt_ann_later")
        ).scalar_one()
    assert PERSONAL["email"] not in later and "Ann Example" not in later


def test_forget_also_strips_the_versions_corrections_kept(named: Cli, engine: Engine) -> None:
    """An amended event keeps its superseded version (`event_versions`), personal properties
    and all: forgetting the customer strips them there too."""
    ok(named, "events", "amend", "2025-11-c1-call-0", "--property", "region=eu", "--reason", "fix")
    ok(named, "customer", "forget", "c1", "--yes")

    history = ok(named, "events", "list", "--customer", "c1", "--history", "--limit", "1000")
    (amended,) = [e for e in history if e["history"]]
    assert not set(amended["history"][0]["properties"]) & set(PERSONAL)
    with engine.connect() as conn:
        kept = conn.execute(select(event_versions_t.c.properties)).scalars().all()
    assert len(kept) == 1
    assert not set(orjson.loads(kept[0])) & set(PERSONAL), kept
