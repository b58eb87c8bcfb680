"""`neruba doctor`'s newer checks: stuck billing runs and imports, failed webhooks, the Stripe
key and the clock. The rules are tested with plain values (domain/health.py); the CLI on every
dialect with real rows, and a stuck run with a really killed `run bill` process."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select

from neruba_cli.db.schema import BillingRun, ImportBatch, Project, StripeWebhookEvent
from neruba_cli.domain import health
from neruba_cli.domain.health import BatchFacts, RunFacts
from neruba_cli.services.billing.run import ABANDONED
from tests.support.cli import Cli
from tests.support.events import ingest, write_jsonl
from tests.support.workload import AFTER_OCTOBER, generate, population, shop_for, spawn

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
CHECKS = ["config", "database", "schema", "locks"]
CHECKS += ["runs", "unbilled", "imports", "webhooks", "stripe", "clock", "project"]


def doctor(cli: Cli, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    result = cli("doctor", "--json", *args, env=env)
    report = result.json()
    assert [check["name"] for check in report["checks"]] == CHECKS, report
    assert report["healthy"] is (result.exit_code == 0)
    return result.exit_code, {check["name"]: check for check in report["checks"]}


# --------------------------------------------------------------------------- pure rules


def run_facts(**changes: Any) -> RunFacts:
    base: dict[str, Any] = {
        "id": "run_1",
        "period": "2026-10",
        "holder": "cron@a:7",
        "lock_token": 3,
        "lock_name": "acme:bill:2026-10",
        "lock_holder": "cron@a:7",
        "lock_token_now": 3,
        "lock_expires_at": NOW + timedelta(minutes=5),
        "holder_alive": None,
    }
    return RunFacts(**{**base, **changes})


def test_a_run_is_alive_only_while_its_lease_is() -> None:
    assert health.abandoned_reason(run_facts(), NOW) is None
    assert health.abandoned_reason(run_facts(holder_alive=True), NOW) is None
    released = run_facts(lock_holder=None, lock_token_now=None, lock_expires_at=None)
    assert health.abandoned_reason(released, NOW) == "its lease was released"
    taken = run_facts(lock_holder="cron@b:9", lock_token_now=4)
    assert health.abandoned_reason(taken, NOW) == "its lease passed to cron@b:9"
    retaken = run_facts(lock_token_now=4)  # same holder string, a later acquisition
    assert health.abandoned_reason(retaken, NOW) == "its lease passed to cron@a:7"
    expired = run_facts(lock_expires_at=NOW)
    assert health.abandoned_reason(expired, NOW) == "its lease expired"
    dead = run_facts(holder_alive=False)
    assert "process cron@a:7 is gone" in (health.abandoned_reason(dead, NOW) or "")


def test_stuck_runs_warn_and_say_how_to_fix() -> None:
    assert health.runs_check([], NOW).status == "ok"
    live = health.runs_check([run_facts()], NOW)
    assert (live.status, live.detail) == ("ok", "1 running, none stuck")
    dead = health.runs_check([run_facts(holder_alive=False), run_facts(id="run_2")], NOW)
    assert dead.status == "warn" and dead.detail.startswith("1 stuck: run_1 (2026-10)")
    assert "on this host (elsewhere, `neruba locks release acme:bill:2026-10` first)" in (
        dead.detail
    )
    assert "`neruba run bill --period 2026-10`" in dead.detail and "run_2" not in dead.detail
    expired = health.runs_check([run_facts(lock_expires_at=NOW - timedelta(seconds=1))], NOW)
    assert "locks release" not in expired.detail  # an expired lease is taken over by itself
    assert "marks the old run failed" in expired.detail


def test_imports_are_stuck_only_past_their_age() -> None:
    young = BatchFacts("bat_1", "a.jsonl", NOW - timedelta(minutes=59))
    old = BatchFacts("bat_2", "b.jsonl", NOW - timedelta(hours=3, minutes=5))
    assert health.imports_check([young], NOW).status == "ok"
    check = health.imports_check([young, old], NOW)
    assert check.status == "warn" and "bat_2 (b.jsonl, started 3h 5m ago)" in check.detail
    assert "bat_1" not in check.detail


def test_webhooks_and_stripe_key_rules() -> None:
    assert health.webhooks_check(0, None, NOW).status == "ok"
    failed = health.webhooks_check(2, NOW - timedelta(days=2, hours=1), NOW)
    assert failed.status == "warn" and "2 failed" in failed.detail and "2d 1h" in failed.detail
    assert "stripe webhook reprocess" in failed.detail
    assert health.stripe_check(False, False, None, None, 0).detail == "not configured"
    assert health.stripe_check(False, False, None, None, 0).status == "ok"
    assert health.stripe_check(False, False, None, None, 3).status == "warn"
    assert health.stripe_check(True, False, None, "bad shape", 0) == health.Check(
        "stripe", "fail", "bad shape"
    )
    assert health.stripe_check(True, True, "test", None, 0).status == "ok"


@pytest.mark.parametrize(
    ("seconds", "status"),
    [(0, "ok"), (5, "ok"), (-5, "ok"), (5.001, "warn"), (-300, "warn"), (300.5, "fail")],
)
def test_clock_skew_thresholds(seconds: float, status: str) -> None:
    server = NOW + timedelta(seconds=seconds)
    check = health.clock_check(NOW, server, None)
    assert check.status == status
    assert ("ahead of" if seconds > 0 else "behind") in check.detail or seconds == 0


def test_a_clock_behind_stored_records_went_backwards() -> None:
    assert health.clock_check(NOW, None, None).detail == "embedded database shares this clock"
    fine = health.clock_check(NOW, None, NOW + timedelta(seconds=4), newest_what="event")
    assert fine.status == "ok"
    back = health.clock_check(NOW, None, NOW + timedelta(minutes=2), newest_what="event")
    assert back.status == "warn" and "120.000 s earlier than the newest event" in back.detail
    far = health.clock_check(NOW, NOW, NOW + timedelta(hours=1))
    assert far.status == "fail" and "time went backwards" in far.detail


# --------------------------------------------------------------------------- CLI, every dialect


def project_id(engine: Engine, slug: str = "acme") -> str:
    with engine.connect() as conn:
        return str(conn.scalar(select(Project.id).where(Project.slug == slug)))


def test_healthy_database_is_all_ok(cli: Cli, dialect: str) -> None:
    assert cli("project", "create", "acme").exit_code == 0
    code, checks = doctor(cli, "--project", "acme")
    assert code == 0 and {c["status"] for c in checks.values()} == {"ok"}, checks
    clock = checks["clock"]["detail"]
    if dialect == "sqlite":
        assert clock == "embedded database shares this clock"
    else:
        assert clock.startswith("database clock is ") and "this machine's" in clock
    assert checks["stripe"]["detail"] == "not configured"


def test_failed_webhooks_and_stuck_imports_warn(cli: Cli, engine: Engine) -> None:
    assert cli("project", "create", "acme").exit_code == 0
    pid = project_id(engine)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for n, status in enumerate(("failed", "failed", "processed")):
            conn.execute(
                insert(StripeWebhookEvent).values(
                    id=f"swh_{n}",
                    project_id=pid,
                    event_id=f"evt_{n}",
                    type="invoice.paid",
                    status=status,
                    error="boom" if status == "failed" else None,
                    attempts=1,
                    payload="{}",
                    received_at=now - timedelta(hours=n + 1),
                )
            )
        for n, age in enumerate((timedelta(hours=2), timedelta(minutes=1))):
            conn.execute(
                insert(ImportBatch).values(
                    id=f"bat_{n}",
                    project_id=pid,
                    source=f"part{n}.jsonl",
                    format="jsonl",
                    status="running",
                    lines=0,
                    accepted=0,
                    duplicates=0,
                    conflicts=0,
                    rejected=0,
                    periods="[]",
                    actor="tests",
                    started_at=now - age,
                )
            )
    code, checks = doctor(cli)
    assert code == 0
    assert checks["webhooks"]["status"] == "warn"
    assert checks["webhooks"]["detail"].startswith("2 failed Stripe webhook event(s)")
    assert "oldest received 2h" in checks["webhooks"]["detail"]
    assert (
        checks["imports"]["status"] == "warn"
        and "bat_0 (part0.jsonl" in checks["imports"]["detail"]
    )
    assert "bat_1" not in checks["imports"]["detail"]


def test_stripe_key_is_validated_never_shown(cli: Cli, engine: Engine) -> None:
    secret = "sk_live_" + "x" * 5  # too short to be a key
    code, checks = doctor(cli, env={"STRIPE_API_KEY": secret})
    assert code == 1 and checks["stripe"]["status"] == "fail"
    assert "sk_... or rk_..." in checks["stripe"]["detail"]
    plain = cli("doctor", env={"STRIPE_API_KEY": secret})
    assert plain.exit_code == 1 and secret not in plain.stdout + plain.stderr
    good = "rk_test_" + "A1b2C3d4E5f6"
    code, checks = doctor(cli, env={"STRIPE_API_KEY": good})
    assert (
        code == 0 and checks["stripe"]["detail"] == "STRIPE_API_KEY is set (test mode; not called)"
    )


def test_a_killed_run_is_reported_then_closed_by_the_rerun(
    cli: Cli, engine: Engine, db_url: str, tmp_path: Path
) -> None:
    names, starts = population(3)
    shop_for(cli, tmp_path, names, starts)
    ingest(cli, write_jsonl(tmp_path / "usage.jsonl", generate(names, seed=3, starts=starts)))
    # lease 600 s, one customer per batch and transaction, a long pause after each one
    process = spawn(db_url, "600", "0", "1", "gate", "120")
    try:
        assert process.stdout is not None and process.stdin is not None
        assert process.stdout.readline().strip() == "ready"
        process.stdin.write("go\n")
        process.stdin.flush()
        assert process.stdout.readline().startswith("total ")
        assert process.stdout.readline().strip() == "step 1"  # one invoice committed
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    with engine.connect() as conn:
        run_id, status = conn.execute(select(BillingRun.id, BillingRun.status)).one()
    assert status == "running"

    code, checks = doctor(cli)
    assert code == 0  # nothing half-written: a warning, not a failure
    runs = checks["runs"]
    assert runs["status"] == "warn" and runs["detail"].startswith(f"1 stuck: {run_id} (2026-10)")
    assert "is gone (the lease still names it)" in runs["detail"]
    assert "2026-10` on this host (elsewhere, `neruba locks release" in runs["detail"]

    # the rerun, on this host, takes the dead process's lease over without waiting for it
    as_of = AFTER_OCTOBER.isoformat()
    rerun = cli("run", "bill", "--period", "2026-10", "--as-of", as_of, "--project", "acme")
    assert rerun.exit_code == 0, rerun.stderr
    with engine.connect() as conn:
        rows = dict(conn.execute(select(BillingRun.id, BillingRun.status)).all())
        message = conn.scalar(select(BillingRun.message).where(BillingRun.id == run_id))
    assert rows[run_id] == "failed" and message == ABANDONED
    assert sorted(rows.values()) == ["completed", "failed"]
    code, checks = doctor(cli)
    assert code == 0 and checks["runs"] == {
        "name": "runs",
        "status": "ok",
        "detail": "none stuck",
    }
