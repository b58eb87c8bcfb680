"""A `read` key changes nothing; a blank NERUBA_API_KEY is never the operator.

A named export (`export KIND --name N`) stores its watermark and holds a lease: with a key,
it needs the `export` scope as well as `read`, and it is audited like every command that
changes state. A plain export stays a read.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, func, select

from neruba_cli.db.schema import ExportWatermark
from neruba_cli.db.tables import locks_t
from tests.support.cli import Cli, Outcome


def _key(cli: Cli, scopes: str) -> str:
    created = cli("key", "create", "--scope", scopes, "--project", "acme", "--json")
    assert created.exit_code == 0, created.stderr
    return str(created.json()["secret"])


def _watermarks(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(ExportWatermark)).scalar_one())


def _export_locks(engine: Engine) -> int:
    with engine.connect() as conn:
        query = select(func.count()).select_from(locks_t).where(locks_t.c.name.like("%export%"))
        return int(conn.execute(query).scalar_one())


def _audited(cli: Cli, command: str) -> list[dict]:
    records = cli("audit", "list", "--project", "acme", "--json").json()
    return [record for record in records if record["command"] == command]


def _denied(result: Outcome) -> bool:
    return result.exit_code == 1 and result.error()["type"] == "access_denied"


@pytest.fixture
def shop(cli: Cli) -> Cli:
    assert cli("project", "create", "acme").exit_code == 0
    assert cli("customer", "create", "c1", "--project", "acme").exit_code == 0
    return cli


def test_a_read_key_cannot_store_a_named_exports_watermark(shop: Cli, engine: Engine) -> None:
    reader = {"NERUBA_API_KEY": _key(shop, "read")}
    named = shop(
        "export", "events", "--name", "warehouse", "--output", "ev.csv", "--json", env=reader
    )
    assert _denied(named), named
    message = named.error()["message"]
    assert "lacks the 'export' scope that `neruba export events --name` needs" in message
    moved = shop("export", "events", "--name", "warehouse", "--since", "0", "--json", env=reader)
    assert _denied(moved), moved
    assert _watermarks(engine) == 0 and _export_locks(engine) == 0
    plain = shop("export", "events", "--output", "plain.csv", "--json", env=reader)
    assert plain.exit_code == 0, plain.stderr
    # the refused attempts to move state are audited; the plain read is not
    assert [r["outcome"] for r in _audited(shop, "export events")] == ["error", "error"]


def test_a_key_with_the_export_scope_runs_a_named_export_and_it_is_audited(
    shop: Cli, engine: Engine
) -> None:
    writer = _key(shop, "read,export")
    result = shop(
        "export",
        "events",
        "--name",
        "warehouse",
        "--output",
        "ev.csv",
        "--json",
        env={"NERUBA_API_KEY": writer},
    )
    assert result.exit_code == 0, result.stderr
    assert _watermarks(engine) == 1
    records = _audited(shop, "export events")
    assert [(r["outcome"], r["actor_kind"], r["arguments"]["name"]) for r in records] == [
        ("ok", "key", "warehouse")
    ]
    export_only = _key(shop, "export")  # the data itself still needs `read`
    refused = shop(
        "export", "events", "--name", "warehouse", "--json", env={"NERUBA_API_KEY": export_only}
    )
    assert _denied(refused) and "lacks the 'read' scope" in refused.error()["message"]


def test_the_operator_runs_named_exports_and_they_are_audited(shop: Cli) -> None:
    result = shop(
        "export", "events", "--name", "nightly", "--project", "acme", "--json", "--output", "n.csv"
    )
    assert result.exit_code == 0, result.stderr
    assert [r["outcome"] for r in _audited(shop, "export events")] == ["ok"]


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_a_blank_api_key_is_an_error_not_the_operator(shop: Cli, blank: str) -> None:
    env = {"NERUBA_API_KEY": blank}
    for argv in (
        ["customer", "list", "--project", "acme"],
        ["key", "create", "--scope", "admin", "--project", "acme"],
        ["project", "create", "other"],  # an operator command
    ):
        result = shop(*argv, "--json", env=env)
        assert _denied(result), (argv, result)
        error = result.error()
        assert error["message"] == "NERUBA_API_KEY is set but empty"
        assert "unset it to run as the local operator" in error["hint"]
    listed = shop("project", "list", "--json").json()
    assert [project["slug"] for project in listed] == ["acme"]


def test_an_admin_key_that_reads_may_run_a_named_export(shop: Cli, engine: Engine) -> None:
    """`admin` moves every other kind of project state, so it implies `export`."""
    admin = _key(shop, "read,admin")
    result = shop(
        "export",
        "events",
        "--name",
        "warehouse",
        "--output",
        "ev.csv",
        "--json",
        env={"NERUBA_API_KEY": admin},
    )
    assert result.exit_code == 0, result.stderr
    assert _watermarks(engine) == 1
    assert [r["outcome"] for r in _audited(shop, "export events")] == ["ok"]
