"""A lease holder that lost its lease writes nothing more: Stripe push, Stripe pull, the Stripe
payment applier and `retention apply`, end to end on every dialect (docs/operations/locks.md,
"A paused holder blocks nobody").

The lease is lost in the middle of the work, between two of the holder's write transactions:
an operator's `neruba locks release NAME --yes`, run in a process of its own from a hook of the
fake Stripe (a "call" fault: the release happens while the holder waits on Stripe's answer) or
of the retention run's batches; or, for the payment applier, whose lease lasts a few seconds,
a lease that expires before the record commits (a holder paused past its expiry). The holder
must then exit 5 with nothing written after the loss, and a rerun must converge: no Stripe
object made twice, `neruba check` clean.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from neruba_cli.db.tables import (
    customers_t,
    events_t,
    retention_runs_t,
    stripe_cursors_t,
    stripe_links_t,
    stripe_objects_t,
)
from neruba_cli.services.ops import event_properties
from neruba_cli.services.stripe import payments as stripe_payments
from tests.fakes.stripe import FakeStripe, Fault
from tests.support.cli import Cli, expect, ok
from tests.support.processes import ReleaseFromAnotherProcess, assert_check_ok
from tests.support.shops import PERIOD, finalize_month, pro_and_gulf, retention_shop
from tests.support.shops import subscribed_shop as stripe_shop

CATALOG = pro_and_gulf()
LOST = "is no longer ours; nothing was written"


def patient_stripe_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """The release process takes a second or more to start while Stripe's answer waits for
    it: the client must not time out and retry meanwhile (the retry would go on without the
    hook, and the release would land at some later moment)."""
    monkeypatch.setenv("NERUBA_STRIPE_TIMEOUT", "120")


def lost(error: dict[str, Any], name: str) -> None:
    """The holder's exit-5 error names the lease it lost."""
    assert (error["type"], error["exit_code"]) == ("lock_lost", 5), error
    assert f"lease on {name}" in error["message"] and LOST in error["message"], error


def links(engine: Engine) -> dict[str, tuple[str | None, str]]:
    """invoice id -> (Stripe id, state) as the pushes recorded them."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(stripe_links_t.c.invoice_id, stripe_links_t.c.stripe_id, stripe_links_t.c.state)
        ).all()
    return {row.invoice_id: (row.stripe_id, row.state) for row in rows}


def mirror(engine: Engine) -> dict[str, tuple[str | None, str | None]]:
    """Stripe id -> (status, the pull's sweep mark) as the mirror holds them."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                stripe_objects_t.c.stripe_id, stripe_objects_t.c.status, stripe_objects_t.c.sweep
            )
        ).all()
    return {row.stripe_id: (row.status, row.sweep) for row in rows}


# --------------------------------------------------------------------------- push


def test_a_push_whose_lease_is_released_records_nothing_and_the_rerun_finds_its_invoice(
    cli: Cli,
    tmp_path: Path,
    stripe: FakeStripe,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lease is released while Stripe makes the first invoice: the push cannot record
    that invoice's id (its link stays `creating`), exits 5 and pushes no other invoice. The
    next push finds the Stripe invoice by its metadata, without creating it again."""
    stripe_shop(cli, tmp_path, 3, CATALOG)
    finalize_month(cli)
    patient_stripe_client(monkeypatch)
    release = ReleaseFromAnotherProcess(cli.db_url or "", "acme:stripe:push")
    stripe.add_fault(Fault("POST", "/v1/invoices", "call", after_apply=True, call=release))
    error = expect(cli, 5, "stripe", "push", "--period", PERIOD)
    release.assert_released_once()

    made = stripe.objects("invoice")
    assert len(made) == 1  # Stripe made it before the lease was released ...
    recorded = links(engine)
    assert list(recorded.values()) == [(None, "creating")]  # ... and nothing recorded it
    lost(error, "acme:stripe:push")
    assert [r.path for r in stripe.requests if r.method == "POST"][-1] == "/v1/invoices"
    assert len(stripe.objects("customer")) == 1  # recorded before the loss
    with engine.connect() as conn:
        assert conn.execute(select(customers_t.c.stripe_id)).scalars().all().count(None) == 2

    posts = len([r for r in stripe.requests if r.method == "POST"])
    pushed = ok(cli, "stripe", "push", "--period", PERIOD)
    assert pushed["failed"] == 0 and pushed["counts"] == {"resumed": 1, "created": 2}
    created_again = [
        r for r in stripe.requests[posts:] if r.method == "POST" and r.path == "/v1/invoices"
    ]
    assert len(created_again) == 2  # the other two; the first was found, not made again
    invoices = stripe.objects("invoice")
    assert len(invoices) == 3 and made[0]["id"] in {i["id"] for i in invoices}
    assert {i["status"] for i in invoices} == {"open"}
    assert len({i["metadata"]["neruba_invoice"] for i in invoices}) == 3
    assert len(stripe.objects("customer")) == 3
    assert {state for _id, state in links(engine).values()} == {"finalized"}
    assert ok(cli, "stripe", "push", "--period", PERIOD)["counts"] == {"up_to_date": 3}
    assert ok(cli, "reconcile", "stripe", "--period", PERIOD, "--pull")["matched"] == 3
    assert_check_ok(cli)


# --------------------------------------------------------------------------- pull


def test_a_pull_whose_lease_is_released_stores_no_page_and_the_rerun_applies_it(
    cli: Cli,
    tmp_path: Path,
    stripe: FakeStripe,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lease is released while Stripe answers the pull's first page of invoices: the
    page is not stored, nothing is applied, the pull exits 5; the next one mirrors and
    applies everything."""
    stripe_shop(cli, tmp_path, 2, CATALOG)
    finalize_month(cli)
    ok(cli, "stripe", "push", "--period", PERIOD)
    paid = stripe.objects("invoice")[0]
    stripe.pay_invoice(paid["id"])
    before = mirror(engine)
    assert before[paid["id"]] == ("open", None)  # as the push stored it
    patient_stripe_client(monkeypatch)
    release = ReleaseFromAnotherProcess(cli.db_url or "", "acme:stripe:pull")
    stripe.add_fault(Fault("GET", "/v1/invoices", "call", call=release))
    error = expect(cli, 5, "stripe", "pull")
    release.assert_released_once()

    assert mirror(engine) == before  # the page Stripe answered was not stored
    lost(error, "acme:stripe:pull")
    with engine.connect() as conn:
        cursors = conn.execute(
            select(stripe_cursors_t.c.object, stripe_cursors_t.c.cursor, stripe_cursors_t.c.seen)
        ).all()
    assert [(c.object, c.cursor, c.seen) for c in cursors] == [("invoice", None, 0)]
    assert ok(cli, "payment", "list") == []

    pulled = ok(cli, "stripe", "pull")
    assert pulled["resumed"] == ["invoice"] and pulled["objects"]["invoice"] == 2
    assert len(pulled["applied"]) == 1 and not pulled["errors"]
    assert mirror(engine)[paid["id"]][0] == "paid"
    statuses = {i["number"]: i["status"] for i in ok(cli, "invoice", "list")}
    assert statuses[paid["metadata"]["neruba_invoice"]] == "paid"
    assert sorted(statuses.values()) == ["finalized", "paid"]
    assert len(ok(cli, "payment", "list")) == 1
    assert_check_ok(cli)


# --------------------------------------------------------------------------- payments


def test_a_payment_applier_whose_lease_expired_records_nothing(
    cli: Cli, tmp_path: Path, stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The applier's lease expires before its record commits (a holder paused past its
    expiry): no payment, no refund is recorded and the pull exits 5; with a lease that lasts,
    the next pull records each once."""
    stripe_shop(cli, tmp_path, 2, CATALOG)
    finalize_month(cli)
    ok(cli, "stripe", "push", "--period", PERIOD)
    paid = stripe.objects("invoice")[0]
    stripe.pay_invoice(paid["id"])

    with monkeypatch.context() as patch:
        patch.setattr(stripe_payments, "APPLY_TTL", timedelta(microseconds=1))
        lost(expect(cli, 5, "stripe", "pull"), "acme:stripe:apply")
    assert ok(cli, "payment", "list") == []
    assert {i["status"] for i in ok(cli, "invoice", "list")} == {"finalized"}
    applied = ok(cli, "stripe", "pull")["applied"]
    assert len(applied) == 1 and paid["metadata"]["neruba_invoice"] in applied[0]
    [payment] = ok(cli, "payment", "list")
    assert payment["reference"] == paid["id"]

    stripe.refund_charge(stripe.objects("charge")[0]["id"], 1000)
    with monkeypatch.context() as patch:
        patch.setattr(stripe_payments, "APPLY_TTL", timedelta(microseconds=1))
        lost(expect(cli, 5, "stripe", "pull"), "acme:stripe:apply")
    assert {i["status"] for i in ok(cli, "invoice", "list")} == {"paid", "finalized"}
    assert ok(cli, "payment", "list")[0]["refunded"] == "0.00"
    refunded = ok(cli, "stripe", "pull")["applied"]
    assert len(refunded) == 1 and "10.00 USD refunded" in refunded[0]
    assert ok(cli, "payment", "list")[0]["refunded"] == "10.00"
    assert ok(cli, "stripe", "pull")["applied"] == []
    assert_check_ok(cli)


# --------------------------------------------------------------------------- retention

AS_OF = "2026-12-01T00:00:00Z"
OLDER = "11m"
BATCH = 10


def october_changed(engine: Engine) -> int:
    """October's events whose personal properties are gone."""
    with engine.connect() as conn:
        texts = conn.execute(
            select(events_t.c.properties).where(events_t.c.idempotency_key.like("2025-10%"))
        ).scalars()
        return sum(1 for text in texts if "email" not in text)


def test_a_retention_run_whose_lease_is_released_rewrites_no_further_batch(
    cli: Cli, tmp_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of 10 events: the lease is released after the first batch committed (and
    the run renewed its lease), before the second is written. The second batch rolls back
    and the run exits 5; the first stays, and the rerun finishes the month."""
    shop = retention_shop(cli, tmp_path)
    rewrite = event_properties.rewrite
    release = ReleaseFromAnotherProcess(cli.db_url or "", "acme:retention")

    def released_after_first_batch(*args: Any, **kwargs: Any) -> Iterator[event_properties.Batch]:
        batches = rewrite(*args, **{**kwargs, "batch_size": BATCH})
        first = next(batches, None)
        if first is None:
            return
        yield first
        release()  # the run asks for its next batch: the lease is gone from here on
        yield from batches

    with monkeypatch.context() as patch:
        patch.setattr(event_properties, "rewrite", released_after_first_batch)
        error = expect(
            shop, 5, "retention", "apply", "--older-than", OLDER, "--as-of", AS_OF, "--yes"
        )
    release.assert_released_once()
    assert october_changed(engine) == BATCH  # the first batch only
    lost(error, "acme:retention")
    with engine.connect() as conn:
        [run] = conn.execute(select(retention_runs_t)).all()
    assert (run.status, run.events_touched, run.finished_at) == ("running", BATCH, None)

    again = ok(shop, "retention", "apply", "--older-than", OLDER, "--as-of", AS_OF, "--yes")
    assert again["periods"] == ["2025-10"] and again["events"] == 48 - BATCH
    assert october_changed(engine) == 48
    runs = {r["run"]: r for r in ok(shop, "retention", "list")}
    assert runs[run.id]["status"] == "failed" and runs[run.id]["message"] is not None
    verified = ok(shop, "invoice", "verify", "--period", "2025-10")
    assert verified["mismatches"] == 0, verified
    assert_check_ok(shop)
