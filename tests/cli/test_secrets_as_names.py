"""A secret pasted where a name or id is expected is refused, never stored in clear.

Customer external ids, display names, e-mails, project slugs, key names, export names and
catalog codes all go through one domain rule (`domain/keys.refuse_secret`): exit 2 for a flag
or argument, a rejected row for a file, and a message that names the field, not the value.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from sqlalchemy import Engine

from neruba_cli.db.schema import Base
from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.keys import compose, looks_like_secret, refuse_secret
from neruba_cli.services.tenancy.tokens import new_secret
from tests.support.catalogs import EXAMPLE
from tests.support.cli import Cli

SECRET = new_secret("nrb_live_")
LOWER_CASE = compose("nrb_test_", "abcdefghijklmnopqrstuvwxyz012345")  # a valid catalog code


def _nowhere_in_the_database(engine: Engine, secret: str) -> None:
    body = secret[9:]
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(table.select()):
                assert all(body not in str(cell) for cell in row), table.name


@pytest.fixture
def shop(cli: Cli) -> Cli:
    assert cli("project", "create", "acme").exit_code == 0
    return cli


def test_the_rule_names_the_field_and_never_the_value() -> None:
    for text in (SECRET, f"copied {SECRET} here", new_secret("nrb_inv_"), "sk_live_" + "a1" * 12):
        assert looks_like_secret(text)
        with pytest.raises(InvalidInput) as caught:
            refuse_secret(text, field="external_id")
        assert text not in str(caught.value) and "external_id looks like a secret" in str(
            caught.value
        )
    for text in ("cus_42", "nrb_live_short", "warehouse", "ann@example.com"):
        assert refuse_secret(text, field="name") == text


@pytest.mark.parametrize(
    "argv",
    [
        ["customer", "create", SECRET],
        ["customer", "create", "c1", "--name", f"key {SECRET}"],
        ["customer", "create", "c1", "--email", f"{SECRET}@example.com"],
        ["key", "create", "--scope", "read", "--name", SECRET],
        ["member", "add", f"{SECRET}@example.com", "--role", "viewer"],
        ["invite", "create", f"{SECRET}@example.com", "--role", "viewer"],
        ["export", "events", "--name", SECRET, "--output", "ev.csv"],
        ["project", "update", "acme", "--name", SECRET],
    ],
    ids=lambda argv: " ".join(argv[:2]) + (f" {argv[2]}" if argv[2].startswith("-") else ""),
)
def test_a_secret_as_a_name_or_id_is_a_usage_error(
    shop: Cli, engine: Engine, argv: list[str]
) -> None:
    result = shop(*argv, "--project", "acme", "--json")
    assert result.exit_code == 2, result
    assert "looks like a secret" in result.error()["message"]
    assert SECRET[9:] not in result.stdout + result.stderr
    _nowhere_in_the_database(engine, SECRET)


def test_customer_import_rejects_the_row_and_keeps_the_others(shop: Cli, engine: Engine) -> None:
    with open("customers.csv", "w", encoding="utf-8") as file:
        file.write(f"external_id,name\n{SECRET},Pasted\nc2,Two\n")
    result = shop("customer", "import", "customers.csv", "--project", "acme", "--json")
    assert result.exit_code == 3, result
    listed = shop("customer", "list", "--project", "acme", "--json").json()
    assert [customer["external_id"] for customer in listed] == ["c2"]
    _nowhere_in_the_database(engine, SECRET)


def test_a_catalog_code_shaped_like_a_secret_is_a_catalog_error(shop: Cli, engine: Engine) -> None:
    with open("catalog.toml", "w", encoding="utf-8") as file:
        file.write(f'[[meters]]\ncode = "{LOWER_CASE}"\naggregation = "count"\n')
    result = shop("catalog", "apply", "catalog.toml", "--project", "acme", "--json")
    assert result.exit_code == 1, result
    assert "looks like a secret" in result.error()["message"]
    assert LOWER_CASE[9:] not in result.stderr
    _nowhere_in_the_database(engine, LOWER_CASE)


def test_a_project_slug_cannot_be_one(shop: Cli) -> None:
    result = shop("project", "create", LOWER_CASE, "--json")
    assert result.exit_code == 2 and "looks like a secret" in result.error()["message"]
    assert LOWER_CASE[9:] not in result.stderr


def test_an_event_or_charge_keyed_by_a_secret_is_rejected_and_the_others_stored(
    shop: Cli, engine: Engine
) -> None:
    """Idempotency keys and customer ids of events and charges are stored in clear: a pasted
    secret there rejects its line, with a reason that does not repeat it."""
    assert shop("customer", "create", "c1", "--project", "acme").exit_code == 0
    assert shop("catalog", "apply", str(EXAMPLE), "--project", "acme").exit_code == 0
    ts = "2026-10-03T12:00:00Z"
    lines = [
        {"idempotency_key": SECRET, "customer": "c1", "meter": "api_calls", "timestamp": ts},
        {"idempotency_key": "e2", "customer": SECRET, "meter": "api_calls", "timestamp": ts},
        {
            "type": "charge",
            "idempotency_key": f"setup-{SECRET}",
            "customer": "c1",
            "amount": "5.00",
            "description": "Setup",
            "timestamp": ts,
        },
        {"idempotency_key": "e4", "customer": "c1", "meter": "api_calls", "timestamp": ts},
    ]
    with open("usage.jsonl", "w", encoding="utf-8") as file:
        file.writelines(orjson.dumps(line).decode() + "\n" for line in lines)
    result = shop("ingest", "usage.jsonl", "--project", "acme", "--json")
    assert result.exit_code == 3, result
    summary = result.json()
    assert (summary["accepted"], summary["rejected"]) == (1, 3)
    shape = "looks like a secret (an API key, invite token or Stripe key), not an id"
    assert {item["line"]: item["reason"] for item in summary["rejects"]} == {
        1: f"idempotency_key {shape}",
        2: f"customer {shape}",
        3: f"idempotency_key {shape}",
    }
    # the summary shows the lines with the secret cut to its prefix; the rejects file keeps
    # them as they were, to be fixed and sent again
    assert SECRET[9:] not in result.stdout + result.stderr
    assert SECRET[:17] + "…" in summary["rejects"][0]["raw"]
    kept = Path("usage.jsonl.rejects.jsonl").read_text(encoding="utf-8")
    assert kept.count(SECRET) == 3
    _nowhere_in_the_database(engine, SECRET)
