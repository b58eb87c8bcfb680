"""One rule for bad flag values: a value that cannot be read is a usage error, exit 2, with a
message that names the flag (or the argument), on every command, with --json too; a value that
is well formed but names something missing is an error, exit 1; values inside input files keep
being reported as rejected lines, exit 3.

Values are checked before any SQL runs, so the table below runs on SQLite only, against a
database file that is never created: a check that let a bad value through would end in
"SQLite database ... does not exist" (exit 1) instead.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from neruba_cli.cli.app import command_policies
from neruba_cli.cli.runtime import CHECKED
from neruba_cli.services.export.kinds import KINDS
from tests.support.cli import Cli, fails

COMMANDS = command_policies()  # every group loaded: the CLI imports a group only when used
NEVER_OPENED = "sqlite:////nonexistent/flag-values/neruba.db"
T = "2026-10-01T00:00:00Z"
REPLACE = ("ingest", "e.jsonl", "--replace", "--customer", "c1", "--meter", "m")

# (command line with one bad value, the flag or argument the message starts with)
BAD: list[tuple[tuple[str, ...], str]] = [
    (("run", "bill", "--period", "2026-13"), "--period"),
    (("run", "bill", "--period", "2026-10", "--as-of", "2026-10-01"), "--as-of"),
    (("run", "list", "--period", "previous"), "--period"),
    (("invoice", "list", "--period", "october"), "--period"),
    (("invoice", "list", "--status", "open"), "--status"),
    (("invoice", "finalize", "--period", "2026-00"), "--period"),
    (("invoice", "verify", "--period", "26-10"), "--period"),
    (("invoice", "preview", "nobody", "--at", "now"), "--at"),
    (("usage", "show", "nobody", "--period", "2026-13"), "--period"),
    (("usage", "show", "nobody", "--by", "week"), "--by"),
    (("usage", "show", "nobody", "--as-of", "2026-10-01T00:00:00"), "--as-of"),
    (("compare", "stripe", "--period", "last"), "--period"),
    (("compare", "stripe", "--period", "2026-10", "--preset", "chargebee"), "--preset"),
    (("compare", "stripe", "--period", "2026-10", "--tolerance", "abc"), "--tolerance"),
    (("compare", "stripe", "--period", "2026-10", "--fail-over", "lots"), "--fail-over"),
    (("compare", "stripe", "--period", "2026-10", "--by", "customer"), "--by"),
    (("simulate", "--catalog", "c.toml", "--period", "2026-13"), "--period"),
    (("reconcile", "stripe", "--period", "2026-13"), "--period"),
    (("reconcile", "stripe", "--period", "2026-10", "--format", "xml"), "--format"),
    (("stripe", "push", "--period", "2026-13"), "--period"),
    (("stripe", "pull", "--since", "7d"), "--since"),
    (("stripe", "webhook", "list", "--status", "done"), "--status"),
    (("events", "list", "--since", "yesterday"), "--since"),
    (("audit", "list", "--since", "yesterday"), "--since"),
    (("ledger", "show", "--since", "2026-10-01"), "--since"),
    (("ingest", "e.jsonl", "--max-future", "1m"), "--max-future"),
    (("ingest", "e.jsonl", "--assume-timezone", "Mars/Base"), "--assume-timezone"),
    (("ingest", "e.jsonl", "--format", "xml"), "--format"),
    ((*REPLACE, "--from", "2026-10-01", "--to", T), "--from"),
    ((*REPLACE, "--from", T, "--to", "tomorrow"), "--to"),
    (
        (
            "charge",
            "add",
            "nobody",
            "--amount",
            "0",
            "--description",
            "d",
            "--idempotency-key",
            "k",
        ),
        "--amount",
    ),
    (
        (
            "charge",
            "add",
            "nobody",
            "--amount",
            "5",
            "--description",
            "d",
            "--idempotency-key",
            "k",
            "--at",
            "tomorrow",
        ),
        "--at",
    ),
    (("credits", "grant", "nobody", "ten"), "AMOUNT"),
    (("credits", "grant", "nobody", "0"), "AMOUNT"),
    (("credits", "grant", "nobody", "5", "--category", "gift"), "--category"),
    (("credits", "grant", "nobody", "5", "--currency", "XXQ"), "--currency"),
    (("credits", "grant", "nobody", "5", "--expires", "tomorrow"), "--expires"),
    (("credits", "expire", "--as-of", "2026-13-01T00:00:00Z"), "--as-of"),
    (("wallet", "show", "nobody", "--as-of", "yesterday"), "--as-of"),
    (("payment", "record", "ACME-999999", "1e999"), "AMOUNT"),
    (("payment", "record", "ACME-999999", "5", "--at", "noon"), "--at"),
    (("payment", "refund", "pay_nope", "0"), "AMOUNT"),
    (("project", "create", "Bad!"), "SLUG"),
    (("project", "create", "ok", "--name", "a\x07b"), "--name"),
    (("project", "create", "ok", "--currency", "XXQ"), "--currency"),
    (("project", "create", "ok", "--timezone", "Mars/Base"), "--timezone"),
    (("project", "create", "ok", "--rounding", "up"), "--rounding"),
    (("project", "create", "ok", "--mode", "demo"), "--mode"),
    (("project", "update", "acme", "--name", "x" * 201), "--name"),
    (("project", "update", "acme", "--rounding", "up"), "--rounding"),
    (("project", "update", "acme", "--late-events", "later"), "--late-events"),
    (("project", "update", "acme", "--credit-returns", "never"), "--credit-returns"),
    (("customer", "create", "bad id"), "EXTERNAL_ID"),
    (("customer", "create", "c9", "--name", "a\x00b"), "--name"),
    (("customer", "create", "c9", "--email", "nope"), "--email"),
    (("customer", "create", "c9", "--currency", "XXQ"), "--currency"),
    (("customer", "create", "c9", "--timezone", "Mars/Base"), "--timezone"),
    (("customer", "create", "c9", "--stripe-id", "acct_1"), "--stripe-id"),
    (("catalog", "quote", "pro@x"), "PLAN"),
    (("catalog", "quote", "pro", "--usage", "api_calls"), "--usage"),
    (("catalog", "quote", "pro", "--usage", "api_calls=-1"), "--usage"),
    (("catalog", "quote", "pro", "--period", "previous"), "--period"),
    (("catalog", "quote", "pro", "--currency", "XXQ"), "--currency"),
    (("subscription", "create", "nobody", "pro@latest", "--start", T), "PLAN"),
    (("subscription", "create", "nobody", "pro", "--start", "2026-10-01"), "--start"),
    (("subscription", "create", "nobody", "pro", "--start", T, "--anchor", "monthly"), "--anchor"),
    (("subscription", "change", "sub_nope", "--plan", "pro@v2", "--at", T), "--plan"),
    (("subscription", "change", "sub_nope", "--plan", "pro", "--at", "soon"), "--at"),
    (("subscription", "cancel", "sub_nope", "--at", "soon"), "--at"),
    (("key", "create", "--scope", "write"), "--scope"),
    (("key", "create", "--scope", "read", "--expires", "2020-01-01T00:00:00Z"), "--expires"),
    (("key", "create", "--scope", "read", "--member", "ann"), "--member"),
    (("key", "create", "--scope", "read", "--name", "a\nb"), "--name"),
    (("member", "add", "ann", "--role", "viewer"), "EMAIL"),
    (("member", "add", "ann@example.com", "--role", "boss"), "--role"),
    (("invite", "create", "ann", "--role", "viewer"), "EMAIL"),
    (("invite", "create", "ann@example.com", "--role", "boss"), "--role"),
    (("invite", "create", "ann@example.com", "--role", "viewer", "--expires", "0d"), "--expires"),
    (("retention", "apply", "--older-than", "5h"), "--older-than"),
    (("retention", "apply", "--older-than", "2y", "--as-of", "2026"), "--as-of"),
    (("demo", "--as-of", "noon"), "--as-of"),
]
for _kind in KINDS:
    BAD += [
        (("export", _kind, "--period", "2026-13"), "--period"),
        (("export", _kind, "--since", "yesterday"), "--since"),
        (("export", _kind, "--format", "xml"), "--format"),
        (("export", _kind, "--name", "a b"), "--name"),
        (("export", _kind, "--overlap", "1m"), "--overlap"),
    ]
BAD.append((("export", "invoices", "--since", "42"), "--since"))  # an id: journals only


def command_of(args: tuple[str, ...]) -> str:
    """The command a command line runs: its longest prefix that is a command."""
    words = [word for word in args if not word.startswith("-")]
    return next(
        " ".join(words[:n]) for n in range(len(words), 0, -1) if " ".join(words[:n]) in COMMANDS
    )


@pytest.fixture(scope="module")
def unopened() -> Cli:
    """`neruba` pointed at a SQLite file that does not exist: a value let through would fail
    there, exit 1."""
    return Cli(NEVER_OPENED)


@pytest.mark.parametrize(("args", "named"), BAD, ids=[" ".join(args) for args, _ in BAD])
def test_a_bad_value_is_a_usage_error_naming_its_flag(
    unopened: Cli, args: tuple[str, ...], named: str
) -> None:
    result = unopened(*args, "--project", "acme", "--json")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()  # one JSON document, nothing else
    error = orjson.loads(line)["error"]
    assert (error["type"], error["exit_code"]) == ("usage_error", 2)
    assert error["message"].startswith(named), error["message"]


def test_every_checked_value_has_a_row() -> None:
    """A value a command checks (cli/values.py) is in the table above, so each one is seen to
    refuse a bad value with its own flag's name."""
    assert set(CHECKED) == set(COMMANDS)
    declared = {
        (command, item.name) for command, items in CHECKED.items() for item in items.values()
    }
    covered = {(command_of(args), named) for args, named in BAD}
    assert declared - covered == set()


def test_without_json_the_error_is_one_line_naming_the_flag(unopened: Cli) -> None:
    result = unopened("run", "bill", "--period", "2026-13", "--project", "acme")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        "error: --period: '2026-13' is not a month (YYYY-MM, previous or current)\n"
    )
    repeated = unopened(
        "key", "create", "--scope", "read", "--scope", "read,owner", "--project", "x"
    )
    assert repeated.exit_code == 2
    assert repeated.stderr.startswith("error: --scope: unknown scope 'owner'")


# --------------------------------------------------------------------------- on a database
# (SQLite only: nothing below depends on the SQL dialect)


@pytest.fixture
def shop(sqlite_cli: Cli, tmp_path: Path) -> Cli:
    shop = sqlite_cli
    assert shop("project", "create", "acme").exit_code == 0
    assert shop("customer", "create", "c1", "--project", "acme").exit_code == 0
    catalog = tmp_path / "catalog.toml"
    catalog.write_text('[[meters]]\ncode = "api_calls"\naggregation = "sum"\n')
    assert shop("catalog", "apply", str(catalog), "--project", "acme").exit_code == 0
    return shop


def test_a_well_formed_value_naming_nothing_is_an_error(shop: Cli) -> None:
    for args in [
        ("usage", "show", "nobody"),
        ("invoice", "show", "ACME-999999"),
        ("payment", "record", "ACME-999999", "5.00"),
        ("credits", "grant", "nobody", "5.00"),
        ("subscription", "create", "c1", "ghost", "--start", T),
        ("run", "show", "run_nope"),
    ]:
        assert fails(shop, 1, *args)["type"] == "not_found", args
    # the same commands with a bad value: the value is refused first
    assert fails(shop, 2, "credits", "grant", "nobody", "ten")["type"] == "usage_error"
    assert fails(shop, 2, "usage", "show", "nobody", "--by", "week")["type"] == "usage_error"


def test_a_refused_value_is_audited_with_exit_2(shop: Cli) -> None:
    fails(shop, 2, "credits", "grant", "c1", "5", "--category", "gift")
    (record,) = [
        r
        for r in orjson.loads(shop("audit", "list", "--project", "acme", "--json").stdout)
        if r["command"] == "credits grant"
    ]
    assert (record["exit_code"], record["outcome"]) == (2, "error")
    assert record["message"].startswith("--category: 'gift' is not one of: paid, promotional")


def test_values_in_input_files_are_still_rejected_lines(shop: Cli, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    good = {"idempotency_key": "e1", "customer": "c1", "meter": "api_calls", "timestamp": T}
    bad = {**good, "idempotency_key": "e2", "timestamp": "yesterday"}
    events.write_bytes(orjson.dumps(good) + b"\n" + orjson.dumps(bad) + b"\n")
    ingested = shop("ingest", str(events), "--project", "acme", "--json")
    assert ingested.exit_code == 3, ingested.stderr
    summary = ingested.json()
    assert (summary["accepted"], summary["rejected"]) == (1, 1)
    assert "yesterday" in summary["rejects"][0]["reason"]

    customers = tmp_path / "customers.csv"
    customers.write_text("external_id,name,email,currency,timezone,stripe_id\nc2,,nope,,,\n")
    imported = shop("customer", "import", str(customers), "--project", "acme", "--json")
    assert imported.exit_code == 3, imported.stderr
    assert "email 'nope' is not an e-mail address" in imported.json()["rejects"][0]["reason"]
