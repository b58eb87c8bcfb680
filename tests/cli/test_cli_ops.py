"""init, doctor, audit, demo, help and the error contract of the CLI."""

from __future__ import annotations

import os
import re
import tomllib
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
import typer
from typer.main import get_command

from neruba_cli import __version__
from neruba_cli.cli.app import app
from neruba_cli.db import locks
from neruba_cli.db.engine import create_db_engine
from tests.support.cli import Cli
from tests.support.databases import sqlite_only

UNREACHABLE_MYSQL = "mysql://root@127.0.0.1:1/neruba"


def test_version(bare_cli: Cli) -> None:
    result = bare_cli("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"neruba {__version__}"


def _command_paths(group: typer.Typer) -> list[list[str]]:
    root = get_command(group)
    paths: list[list[str]] = []

    def walk(command, prefix: list[str]) -> None:
        children = getattr(command, "commands", None)
        if not children:
            paths.append(prefix)
            return
        for name, child in children.items():
            walk(child, [*prefix, name])

    walk(root, [])
    return paths


def test_every_command_has_help_and_the_common_options(bare_cli: Cli) -> None:
    paths = _command_paths(app)
    assert ["project", "create"] in paths and ["doctor"] in paths and len(paths) >= 15
    for path in paths:
        result = bare_cli(*path, "--help")
        assert result.exit_code == 0, path
        for option in ("--db", "--project", "--json", "--quiet", "--config"):
            assert option in result.stdout, (path, option)


def test_init_writes_config_and_migrates(bare_cli: Cli, isolated: Path) -> None:
    first = bare_cli("init", "--json")
    assert first.exit_code == 0, first.stderr
    assert first.json()["config_written"] is True and first.json()["from"] is None
    config = tomllib.loads((isolated / "neruba.toml").read_text())
    assert config == {"database": {"url": f"sqlite:///{isolated / 'neruba.db'}"}}
    assert (isolated / "neruba.db").exists()
    second = bare_cli("init", "--json")
    assert second.exit_code == 0 and second.json()["config_written"] is False
    doctor = bare_cli("doctor", "--json")
    assert doctor.exit_code == 0, doctor.stdout
    assert doctor.json()["healthy"] is True
    assert [c["name"] for c in doctor.json()["checks"]] == [
        "config",
        "database",
        "schema",
        "locks",
        "runs",
        "unbilled",
        "imports",
        "webhooks",
        "stripe",
        "clock",
        "project",
    ]


def test_init_with_db_and_config_path(bare_cli: Cli, isolated: Path) -> None:
    result = bare_cli("init", "--db", "sqlite:///./other.db", "--config", "conf/n.toml")
    assert result.exit_code == 1 and "conf" in result.stderr  # folder does not exist
    (isolated / "conf").mkdir()
    result = bare_cli("init", "--db", "sqlite:///./other.db", "--config", "conf/n.toml")
    assert result.exit_code == 0, result.stderr
    assert "other.db" in (isolated / "conf" / "n.toml").read_text()
    assert bare_cli("project", "create", "acme", "--config", "conf/n.toml").exit_code == 0
    assert (isolated / "other.db").exists() and not (isolated / "neruba.db").exists()


def test_doctor_reports_unreachable_database(bare_cli: Cli) -> None:
    result = bare_cli("doctor", "--db", UNREACHABLE_MYSQL, "--json")
    assert result.exit_code == 1
    report = result.json()
    assert report["healthy"] is False
    database = report["checks"][1]
    assert database["name"] == "database" and database["status"] == "fail"
    assert "127.0.0.1" in database["detail"] and "refused" in database["detail"].lower()
    plain = bare_cli("doctor", "--db", UNREACHABLE_MYSQL)
    assert plain.exit_code == 1 and "Traceback" not in plain.stdout + plain.stderr


def test_commands_on_unreachable_database_fail_cleanly(bare_cli: Cli) -> None:
    for argv in (("project", "list"), ("project", "create", "acme"), ("db", "upgrade")):
        result = bare_cli(*argv, "--db", UNREACHABLE_MYSQL)
        assert result.exit_code == 1, argv
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: database {UNREACHABLE_MYSQL}: ")
        assert "Connection refused" in lines[0]
    bad = bare_cli("project", "list", "--db", "nonsense")
    assert bad.exit_code == 1 and "database URL 'nonsense' is not valid" in bad.stderr


def test_reading_never_creates_a_sqlite_file(bare_cli: Cli, isolated: Path) -> None:
    for argv in (("project", "list"), ("db", "current"), ("audit", "list")):
        result = bare_cli(*argv)
        assert result.exit_code == 1, argv
        assert "neruba.db does not exist" in result.stderr and "neruba init" in result.stderr
    doctor = bare_cli("doctor", "--json")
    assert doctor.exit_code == 1 and "does not exist" in doctor.json()["checks"][1]["detail"]
    assert not (isolated / "neruba.db").exists()


def test_bad_database_urls_are_one_clear_line(bare_cli: Cli) -> None:
    cases = {
        "mysql://root:pw@127.0.0.1:abc/x": "database URL 'mysql://root:***@127.0.0.1:abc/x'",
        "mysql://root@127.0.0.1:3306/": "names no database",
        "mysql+mysqldb://root@127.0.0.1/x": "no driver for",
        "oracle://u@h/x": "Neruba does not support",
    }
    for url, fragment in cases.items():
        for argv in (("project", "list"), ("project", "create", "x")):
            result = bare_cli(*argv, "--db", url)
            assert result.exit_code == 1, (url, argv, result)
            assert fragment in result.stderr and "Traceback" not in result.stderr, result
            assert "pw" not in result.stderr


def test_doctor_flags_schema_and_unknown_default_project(empty_db_url: str) -> None:
    cli = Cli(empty_db_url)
    report = cli("doctor", "--json")
    assert report.exit_code == 1
    schema = report.json()["checks"][2]
    assert schema["status"] == "fail" and "neruba db upgrade" in schema["detail"]
    assert cli("db", "upgrade").exit_code == 0
    missing = cli("doctor", "--project", "ghost", "--json")
    assert missing.exit_code == 1
    assert missing.json()["checks"][-1]["detail"].startswith("project 'ghost'")


def test_doctor_warns_about_stale_locks_but_stays_healthy(cli: Cli, db_url: str) -> None:
    engine = create_db_engine(db_url)
    try:
        lease = locks.acquire(engine, "run:acme:2026-10", holder="cron@a:1")
        ago = lease.acquired_at - timedelta(hours=1)
        locks.acquire(engine, "old", holder="cron@b:2", ttl=timedelta(seconds=1), clock=lambda: ago)
    finally:
        engine.dispose()
    result = cli("doctor", "--json")
    assert result.exit_code == 0
    check = result.json()["checks"][3]
    assert check["status"] == "warn" and "old" in check["detail"]
    assert "run:acme" not in check["detail"]


def test_audit_records_mutations_with_outcome(cli: Cli) -> None:
    assert cli("project", "create", "acme", "--name", "Acme").exit_code == 0
    assert cli("project", "create", "acme").exit_code == 1
    assert cli("customer", "create", "c1", "--project", "acme", "--email", "a@b.co").exit_code == 0
    assert cli("customer", "list", "--project", "acme").exit_code == 0  # reads are not audited
    everything = cli("audit", "list", "--json").json()
    assert [(e["command"], e["outcome"], e["exit_code"]) for e in everything] == [
        ("customer create", "ok", 0),
        ("project create", "error", 1),
        ("project create", "ok", 0),
    ]
    assert everything[1]["message"] == "project 'acme' already exists"
    assert everything[2]["arguments"] == {
        "name": "Acme",
        "slug": "acme",
        "currency": "USD",
        "timezone": "UTC",
        "rounding": "half_even",
        "mode": "live",
    }
    assert all(e["project"] == "acme" and e["actor_kind"] == "operator" for e in everything)
    assert all(e["at"].endswith("Z") and e["id"].startswith("aud_") for e in everything)
    unknown = cli("audit", "list", "--project", "other", "--json")
    assert unknown.exit_code == 1 and unknown.error()["type"] == "not_found"
    recent = cli("audit", "list", "--since", "1h", "--limit", "1", "--json").json()
    assert len(recent) == 1 and recent[0]["command"] == "customer create"
    future = cli("audit", "list", "--since", "2999-01-01", "--json").json()
    assert future == []
    bad = cli("audit", "list", "--since", "yesterday")
    assert bad.exit_code == 2 and "--since: 'yesterday' is not an RFC 3339" in bad.stderr


@sqlite_only  # output routing, the same on every database
def test_quiet_and_json_keep_stdout_for_data(cli: Cli) -> None:
    quiet = cli("project", "create", "acme", "--quiet")
    assert quiet.exit_code == 0 and quiet.stdout == "" and quiet.stderr == ""
    loud = cli("project", "create", "beta")
    assert loud.stdout == "" and "Created project beta" in loud.stderr


def test_demo_runs_on_its_own_sqlite_database(bare_cli: Cli, isolated: Path) -> None:
    # the figures below are October's (a 31-day month): pin the clock to November
    result = bare_cli("demo", "--dir", "demo-out", "--as-of", "2026-11-20T09:00:00Z", "--json")
    assert result.exit_code == 0, result.stderr
    demo = result.json()
    assert demo["database"] == f"sqlite:///{isolated / 'demo-out' / 'neruba-demo.db'}"
    assert demo["project"]["slug"] == "demo"
    assert [c["external_id"] for c in demo["customers"]] == [
        "cus_acme",
        "cus_globex",
        "cus_initech",
        "cus_umbrella",
    ]
    assert demo["customer_import"]["rejected"] == 1
    assert demo["customer_import"]["rejects"][0]["line"] == 6
    assert "lacks the 'read' scope" in demo["steps"][3]
    assert "nrb_live_" in demo["steps"][3] and len(re.findall(r"nrb_live_\w+", result.stdout)) == 1
    assert re.search(r"nrb_live_\w{38}", result.stdout) is None  # the secret is never shown
    assert demo["quote"]["plan"] == "pro" and demo["quote"]["total"] == "251.93"
    assert any(step.startswith("subscribed to pro: cus_acme") for step in demo["steps"])
    assert any("1 rejected (a naive timestamp" in step for step in demo["steps"])
    assert any("802 duplicates" in step for step in demo["steps"])
    assert any(step.endswith("unchanged (no changes)") for step in demo["steps"])
    invoices = demo["invoices"]
    assert [(i["number"], i["customer"], i["kind"], i["status"]) for i in invoices] == [
        ("DEMO-000001", "cus_acme", "invoice", "paid"),
        ("DEMO-000002", "cus_initech", "invoice", "finalized"),
        ("DEMO-000003", "cus_acme", "supplemental", "finalized"),
    ]
    # cus_initech's 50.00 welcome credit is spent at finalization; cus_acme paid by wire.
    assert (invoices[1]["credits_applied"], invoices[1]["amount_due"]) == ("50.00", "138.58")
    assert invoices[1]["total"] == "138.58" and invoices[1]["subtotal"] == "188.58"
    assert (invoices[0]["amount_due"], invoices[0]["credits_applied"]) == ("0.00", "0.00")
    assert any(s.startswith("granted cus_initech 50.00 USD promotional") for s in demo["steps"])
    assert any("for DEMO-000001: paid, 0.00 due" in step for step in demo["steps"])
    assert demo["steps"][-1].startswith("checked the ledger: consistent")
    # The late event: 900,000 tokens at 0.0000125 each, past the free 100,000 already.
    assert invoices[2]["total"] == "11.25"
    assert not (isolated / "neruba.db").exists()
    again = bare_cli("demo", "--dir", "demo-out")
    assert again.exit_code == 0 and "Customers of project demo" in again.stdout
    listed = bare_cli("customer", "list", "--db", demo["database"], "--project", "demo", "--json")
    assert len(listed.json()) == 4
    refused = bare_cli("demo", "--db", "sqlite:///x.db")
    assert refused.exit_code == 2


@pytest.mark.parametrize("debug", ["0", "1"])
def test_internal_errors_have_no_locals_unless_debug(
    bare_cli: Cli, monkeypatch: pytest.MonkeyPatch, debug: str
) -> None:
    import neruba_cli.services.tenancy.projects as projects

    def boom(*_args, **_kwargs):
        secret_value = "s3cr3t-local"  # noqa: F841 - must never be printed without debug
        raise RuntimeError("kaboom")

    monkeypatch.setenv("NERUBA_DEBUG", debug)
    monkeypatch.setattr(projects, "list_projects", boom)
    assert bare_cli("init").exit_code == 0
    result = bare_cli("project", "list")
    assert result.exit_code == 1
    assert "internal error: RuntimeError: kaboom" in result.stderr
    assert ("s3cr3t-local" in result.stderr) is (debug == "1")


def test_usage_errors_are_json_with_json(isolated: Path) -> None:
    """Through the real console entry point, where Typer's own usage errors are raised."""
    import subprocess
    import sys

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "neruba_cli", *argv],
            capture_output=True,
            text=True,
            check=False,
            cwd=isolated,
            env={**os.environ, "NO_COLOR": "1"},
        )

    missing = run("key", "create", "--json")
    assert missing.returncode == 2 and missing.stdout == ""
    error = orjson.loads(missing.stderr)["error"]
    assert error["type"] == "usage_error" and "--scope" in error["message"]
    plain = run("key", "create")
    assert plain.returncode == 2 and "--scope" in plain.stderr and not plain.stderr.startswith("{")
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("neruba ")


def test_the_demo_catalog_is_the_documented_example() -> None:
    root = Path(__file__).resolve().parents[2]
    shipped = root / "neruba_cli" / "resources" / "demo_catalog.toml"
    assert shipped.read_text() == (root / "examples" / "configs" / "catalog.toml").read_text()
