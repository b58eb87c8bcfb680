"""The tenant boundary: API keys, scopes, require_key, members and invites.

The matrix at the top lists every command with sample arguments; a test fails when a command
exists that the matrix does not name, so each new command joins it with one line.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, select, text, update

from neruba_cli.cli.app import command_policies
from neruba_cli.db.schema import ApiKey, Base, Invite
from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.keys import (
    BASE62,
    KEY_PATTERN,
    ROLES,
    SCOPES,
    checksum,
    compose,
    parse_scopes,
    parse_secret,
)
from neruba_cli.services.tenancy.access import OPERATOR, PUBLIC
from neruba_cli.services.tenancy.tokens import new_secret
from tests.support.cli import Cli, Outcome
from tests.support.databases import sqlite_only

COMMANDS = command_policies()  # every group loaded: the CLI imports a group only when used

# One line per command: sample arguments; {project} is the project the command targets.
MATRIX: dict[str, list[str]] = {
    "init": [],
    "demo": ["--dir", "demo-out"],
    "doctor": [],
    "stats": [],
    "serve": [],
    "db upgrade": [],
    "db current": [],
    "db downgrade": ["base", "--yes"],
    "project create": ["gamma"],
    "project update": ["{project}", "--name", "Renamed"],
    "project list": [],
    "project show": ["{project}"],
    "customer create": ["c-new"],
    "customer import": ["customers.csv"],
    "customer list": [],
    "customer show": ["c1"],
    "customer forget": ["c1", "--yes"],
    "retention apply": ["--older-than", "13m", "--yes"],
    "retention list": [],
    "key create": ["--scope", "admin"],
    "key list": [],
    "key revoke": ["key_00000000000000000000000000"],
    "member add": ["new@example.com", "--role", "viewer"],
    "member list": [],
    "member remove": ["someone@example.com", "--yes"],
    "invite create": ["new@example.com", "--role", "viewer"],
    "invite accept": ["nrb_inv_" + "0" * 38],
    "catalog apply": ["catalog.toml"],
    "catalog show": [],
    "catalog export": [],
    "catalog quote": ["starter", "--usage", "api_calls=10"],
    "subscription create": ["c1", "starter", "--start", "2026-10-01T00:00:00Z"],
    "subscription change": ["sub_x", "--plan", "starter", "--at", "2026-10-15T00:00:00Z"],
    "subscription cancel": ["sub_x", "--at", "2026-10-20T00:00:00Z"],
    "subscription list": [],
    "subscription import": ["subscriptions.csv"],
    "ingest": ["events.jsonl"],
    "events list": [],
    "events receipts": [],
    "events void": ["no-such-event", "--reason", "test"],
    "events amend": ["no-such-event", "--quantity", "2", "--reason", "test"],
    "charge add": ["c1", "--amount", "5", "--description", "Setup", "--idempotency-key", "k1"],
    "run bill": ["--period", "2026-10", "--as-of", "2026-11-02T00:00:00Z"],
    "run list": [],
    "run show": ["run_00000000000000000000000000"],
    "run diff": ["run_00000000000000000000000000", "run_00000000000000000000000001"],
    "invoice list": [],
    "invoice show": ["ACME-000001"],
    "invoice explain": ["ACME-000001"],
    "invoice finalize": ["--period", "2026-10"],
    "invoice void": ["ACME-000001", "--reason", "test", "--yes"],
    "invoice verify": ["--period", "2026-10"],
    "invoice preview": ["c1", "--at", "2026-10-15T00:00:00Z"],
    "credits grant": ["c1", "10.00"],
    "credits revoke": ["grt_x", "--reason", "test"],
    "credits list": ["c1"],
    "credits expire": [],
    "wallet show": ["c1"],
    "ledger show": [],
    "ledger balances": [],
    "payment record": ["ACME-000001", "1.00"],
    "payment refund": ["pay_x"],
    "payment list": [],
    "stripe push": ["--period", "2026-10"],
    "stripe pull": [],
    "stripe webhook ingest": ["missing.jsonl"],
    "stripe webhook list": [],
    "stripe webhook reprocess": [],
    "reconcile stripe": ["--period", "2026-10"],
    "check": [],
    "export invoices": ["--output", "export-invoices.out"],
    "export lines": ["--output", "export-lines.out"],
    "export ledger": ["--output", "export-ledger.out"],
    "export events": ["--output", "export-events.out"],
    "export usage": ["--output", "export-usage.out"],
    "export credits": ["--output", "export-credits.out"],
    "export payments": ["--output", "export-payments.out"],
    "locks list": [],
    "usage show": ["c1"],
    "locks release": ["{project}:billing", "--yes"],
    "audit list": [],
    "compare": ["stripe", "--period", "2026-10"],
    "simulate": ["--catalog", "catalog.toml", "--period", "2026-10"],
}

ALL = ",".join(SCOPES)


def argv_for(command: str, project: str) -> list[str]:
    args = [arg.replace("{project}", project) for arg in MATRIX[command]]
    return [*command.split(" "), *args, "--project", project, "--json"]


def make_key(cli: Cli, project: str, scopes: str, *extra: str) -> str:
    created = cli("key", "create", "--scope", scopes, "--project", project, *extra, "--json")
    assert created.exit_code == 0, created.stderr
    return str(created.json()["secret"])


def denied(result: Outcome) -> bool:
    return result.exit_code == 1 and result.error()["type"] == "access_denied"


@pytest.fixture
def tenants(cli: Cli, isolated: Path) -> Cli:
    """Two projects, alpha and beta, each with a customer c1."""
    for slug in ("alpha", "beta"):
        assert cli("project", "create", slug).exit_code == 0
        assert cli("customer", "create", "c1", "--project", slug).exit_code == 0
    (isolated / "customers.csv").write_text("external_id,name\nc2,Two\n")
    (isolated / "catalog.toml").write_text(
        '[[meters]]\ncode = "api_calls"\naggregation = "count"\n'
        '[[plans]]\ncode = "starter"\ncurrency = "USD"\ninterval = "month"\n'
        '[[plans.charges]]\nmeter = "api_calls"\nmodel = "per_unit"\nunit_amount = "0.01"\n'
    )
    (isolated / "events.jsonl").write_text(
        '{"idempotency_key": "e1", "customer": "c1", "meter": "api_calls", '
        '"timestamp": "2026-10-01T00:00:00Z"}\n'
    )
    (isolated / "subscriptions.csv").write_text(
        "customer,plan,start\nc1,starter,2026-10-01T00:00:00Z\n"
    )
    return cli


# --- the key format, offline -------------------------------------------------------------


def test_key_format_matches_the_documented_regex() -> None:
    secret = new_secret("nrb_live_")
    assert re.fullmatch(r"nrb_(live|test)_[0-9A-Za-z]{38}", secret)
    assert KEY_PATTERN.pattern == r"^nrb_(live|test)_[0-9A-Za-z]{38}$"
    assert secret[-6:] == checksum(secret[:-6])
    parsed = parse_secret(secret)
    assert parsed.kind == "live" and parsed.prefix == secret[:17]


@given(st.text(alphabet=BASE62, min_size=32, max_size=32), st.integers(0, 37), st.data())
def test_any_single_character_change_fails_the_checksum(body: str, index: int, data) -> None:
    secret = compose("nrb_live_", body)
    position = 9 + index
    replacement = data.draw(st.sampled_from([c for c in BASE62 if c != secret[position]]))
    forged = secret[:position] + replacement + secret[position + 1 :]
    with pytest.raises(InvalidInput, match="checksum"):
        parse_secret(forged)


def test_scopes_and_roles() -> None:
    assert parse_scopes(["read", "ingest,billing"]) == {"read", "ingest", "billing"}
    with pytest.raises(InvalidInput, match="unknown scope 'write'"):
        parse_scopes(["write"])
    assert ROLES["viewer"] == {"read"}
    assert ROLES["billing"] == {"read", "billing", "credits", "ingest"}
    assert ROLES["admin"] == ROLES["owner"] == set(SCOPES)


# --- keys end to end ----------------------------------------------------------------------


def test_key_create_list_revoke(tenants: Cli) -> None:
    cli = tenants
    created = cli(
        "key",
        "create",
        "--scope",
        "ingest",
        "--scope",
        "read",
        "--name",
        "loader",
        "--expires",
        "90d",
        "--project",
        "alpha",
        "--json",
    )
    assert created.exit_code == 0, created.stderr
    data = created.json()
    assert KEY_PATTERN.match(data["secret"]) and data["secret"].startswith("nrb_live_")
    assert data["id"].startswith("key_") and data["prefix"] == data["secret"][:17]
    assert data["scopes"] == ["ingest", "read"]
    expires = datetime.fromisoformat(data["expires_at"].replace("Z", "+00:00"))
    assert timedelta(days=89) < expires - datetime.now(UTC) <= timedelta(days=90)
    plain = cli("key", "create", "--scope", "read", "--project", "alpha")
    assert KEY_PATTERN.match(plain.stdout.strip()) and "not shown again" in plain.stderr
    listed = cli("key", "list", "--project", "alpha", "--json")
    assert [k["id"] for k in listed.json()] == [data["id"], listed.json()[1]["id"]]
    assert data["secret"] not in listed.stdout and "secret" not in listed.json()[0]
    revoked = cli("key", "revoke", data["prefix"], "--project", "alpha", "--json")
    assert revoked.exit_code == 0 and revoked.json()["revoked_at"].endswith("Z")
    again = cli("key", "revoke", data["id"], "--project", "alpha")
    assert again.exit_code == 1 and "already revoked" in again.stderr
    refused = cli("customer", "list", "--json", env={"NERUBA_API_KEY": data["secret"]})
    assert denied(refused) and f"{data['id']} was revoked" in refused.error()["message"]
    assert cli("key", "list", "--project", "beta", "--json").json() == []


def test_key_create_validation(tenants: Cli) -> None:
    cli = tenants
    unknown = cli("key", "create", "--scope", "write", "--project", "alpha")
    assert unknown.exit_code == 2 and "--scope: unknown scope 'write'" in unknown.stderr
    past = cli(
        "key",
        "create",
        "--scope",
        "read",
        "--expires",
        "2020-01-01T00:00:00Z",
        "--project",
        "alpha",
    )
    assert (
        past.exit_code == 2
        and "--expires: '2020-01-01T00:00:00Z' is not in the future" in past.stderr
    )
    missing = cli("key", "create", "--project", "alpha")
    assert missing.exit_code == 2


def test_test_mode_projects_get_test_keys(cli: Cli) -> None:
    assert cli("project", "create", "sandbox", "--mode", "test").exit_code == 0
    secret = make_key(cli, "sandbox", "read")
    assert secret.startswith("nrb_test_")
    shown = cli("project", "show", env={"NERUBA_API_KEY": secret})
    assert shown.exit_code == 0 and "sandbox" in shown.stdout


def test_a_key_cannot_mint_a_stronger_key(tenants: Cli) -> None:
    admin_only = make_key(tenants, "alpha", "admin")
    env = {"NERUBA_API_KEY": admin_only}
    weaker = tenants("key", "create", "--scope", "admin", "--json", env=env)
    assert weaker.exit_code == 0
    stronger = tenants("key", "create", "--scope", "admin,billing", env=env)
    assert stronger.exit_code == 1 and "cannot grant scopes it lacks: billing" in stronger.stderr


# --- the acceptance scenario ------------------------------------------------------


def test_ingest_only_key_is_confined(tenants: Cli, engine: Engine) -> None:
    cli = tenants
    secret = make_key(cli, "alpha", "ingest")
    env = {"NERUBA_API_KEY": secret}
    listing = cli("customer", "list", "--json", env=env)
    assert denied(listing) and "lacks the 'read' scope" in listing.error()["message"]
    other = cli("customer", "import", "customers.csv", "--project", "beta", "--json", env=env)
    assert denied(other) and "belongs to project 'alpha', not 'beta'" in other.error()["message"]
    keys = cli("key", "create", "--scope", "ingest", "--json", env=env)
    assert denied(keys) and "lacks the 'admin' scope" in keys.error()["message"]
    forged = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    refused = cli("customer", "list", "--json", env={"NERUBA_API_KEY": forged})
    assert denied(refused) and "checksum" in refused.error()["message"]
    unknown = cli("customer", "list", "--json", env={"NERUBA_API_KEY": new_secret("nrb_live_")})
    assert denied(unknown) and "is not known" in unknown.error()["message"]
    for output in (listing, other, keys, refused, unknown):
        assert secret not in output.stdout + output.stderr
    assert_secret_not_stored(engine, secret)


def assert_secret_not_stored(engine: Engine, secret: str) -> None:
    """Dump every table and search for the secret (and its random body) in every cell."""
    body = secret[9:]
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(table.select()):
                for cell in row:
                    assert body not in str(cell), f"secret found in {table.name}"
        audit = conn.execute(text("SELECT arguments, message FROM audit_records")).all()
    assert audit, "the audit trail should have recorded the commands"


def test_actions_with_a_key_are_audited_under_the_key_id(tenants: Cli, engine: Engine) -> None:
    secret = make_key(tenants, "alpha", "billing,admin")
    created = tenants("customer", "create", "c9", "--json", env={"NERUBA_API_KEY": secret})
    assert created.exit_code == 0, created.stderr
    tenants("customer", "list", env={"NERUBA_API_KEY": "nrb_live_" + "x" * 38})
    tenants("project", "create", "zeta", env={"NERUBA_API_KEY": secret})
    records = tenants("audit", "list", "--json").json()
    by_command: dict[tuple[str, str], dict] = {}
    for record in records:  # newest first: keep the newest of each kind
        by_command.setdefault((record["command"], record["outcome"]), record)
    key_id = tenants("key", "list", "--project", "alpha", "--json").json()[0]["id"]
    mine = by_command[("customer create", "ok")]
    assert (mine["actor_kind"], mine["actor"], mine["project"]) == ("key", key_id, "alpha")
    refused = by_command[("project create", "error")]
    assert refused["actor_kind"] == "key" and "local operator" in refused["message"]
    assert_secret_not_stored(engine, secret)


def test_last_used_is_recorded_cheaply(tenants: Cli, engine: Engine) -> None:
    secret = make_key(tenants, "alpha", "read")
    with engine.connect() as conn:
        assert conn.execute(select(ApiKey.last_used_at)).scalar_one() is None
    assert tenants("customer", "list", env={"NERUBA_API_KEY": secret}).exit_code == 0
    with engine.connect() as conn:
        first = conn.execute(select(ApiKey.last_used_at)).scalar_one()
    assert first is not None
    assert tenants("customer", "list", env={"NERUBA_API_KEY": secret}).exit_code == 0
    with engine.connect() as conn:
        assert conn.execute(select(ApiKey.last_used_at)).scalar_one() == first


def test_expired_key_is_refused(tenants: Cli, engine: Engine) -> None:
    secret = make_key(tenants, "alpha", "read", "--expires", "1h")
    with engine.begin() as conn:
        conn.execute(update(ApiKey).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    result = tenants("customer", "list", "--json", env={"NERUBA_API_KEY": secret})
    assert denied(result) and "expired at" in result.error()["message"]


# --- require_key --------------------------------------------------------------------------


def test_require_key(tenants: Cli) -> None:
    cli = tenants
    updated = cli("project", "update", "alpha", "--require-key", "--json")
    assert updated.exit_code == 0 and updated.json()["require_key"] is True
    keyless = cli("customer", "list", "--project", "alpha", "--json")
    assert denied(keyless) and "requires an API key" in keyless.error()["message"]
    assert cli("customer", "list", "--project", "beta").exit_code == 0
    secret = make_key(cli, "alpha", "read")  # access administration stays open
    with_key = cli("customer", "list", "--json", env={"NERUBA_API_KEY": secret})
    assert with_key.exit_code == 0 and [c["external_id"] for c in with_key.json()] == ["c1"]
    assert cli("project", "update", "alpha", "--no-require-key").exit_code == 0
    assert cli("customer", "list", "--project", "alpha").exit_code == 0


def test_key_sees_only_its_project_in_listings(tenants: Cli) -> None:
    secret = make_key(tenants, "beta", "read,admin")
    env = {"NERUBA_API_KEY": secret}
    projects = tenants("project", "list", "--json", env=env).json()
    assert [p["slug"] for p in projects] == ["beta"]
    audit = tenants("audit", "list", "--json", env=env).json()
    assert audit and {r["project"] for r in audit} == {"beta"}


# --- members and invites ------------------------------------------------------------------


def test_members_roles_and_their_keys(tenants: Cli) -> None:
    cli = tenants
    added = cli(
        "member", "add", "Ann@Example.com", "--role", "billing", "--project", "alpha", "--json"
    )
    assert added.exit_code == 0, added.stderr
    assert added.json()["email"] == "ann@example.com"
    assert added.json()["scopes"] == ["billing", "credits", "ingest", "read"]
    dup = cli("member", "add", "ann@example.com", "--role", "viewer", "--project", "alpha")
    assert dup.exit_code == 1 and "already a member" in dup.stderr
    bad_role = cli("member", "add", "bob@example.com", "--role", "boss", "--project", "alpha")
    assert bad_role.exit_code == 2 and "--role: 'boss' is not one of: viewer," in bad_role.stderr
    too_much = cli(
        "key", "create", "--scope", "admin", "--member", "ann@example.com", "--project", "alpha"
    )
    assert too_much.exit_code == 1 and "does not allow: admin" in too_much.stderr
    secret = make_key(cli, "alpha", "read,ingest", "--member", "ann@example.com")
    listed = cli("member", "list", "--project", "alpha", "--json").json()
    assert [(m["email"], m["role"]) for m in listed] == [("ann@example.com", "billing")]
    refused = cli("member", "remove", "ann@example.com", "--project", "alpha")
    assert refused.exit_code == 2
    removed = cli("member", "remove", "ann@example.com", "--yes", "--project", "alpha", "--json")
    assert removed.exit_code == 0 and removed.json()["keys_revoked"] == 1
    after = cli("customer", "list", "--json", env={"NERUBA_API_KEY": secret})
    assert denied(after) and "revoked" in after.error()["message"]
    assert cli("member", "list", "--project", "alpha", "--json").json() == []


def test_invites(tenants: Cli, engine: Engine) -> None:
    cli = tenants
    created = cli(
        "invite", "create", "dev@example.com", "--role", "viewer", "--project", "beta", "--json"
    )
    assert created.exit_code == 0, created.stderr
    token = created.json()["token"]
    assert token.startswith("nrb_inv_") and created.json()["expires_at"].endswith("Z")
    with engine.connect() as conn:
        stored = conn.execute(select(Invite.token_hash)).scalar_one()
    assert token not in stored and len(stored) == 64
    accepted = cli("invite", "accept", token, "--json")
    assert accepted.exit_code == 0, accepted.stderr
    assert (accepted.json()["email"], accepted.json()["role"], accepted.json()["project"]) == (
        "dev@example.com",
        "viewer",
        "beta",
    )
    reused = cli("invite", "accept", token)
    assert reused.exit_code == 1 and "already used" in reused.stderr
    forged = cli("invite", "accept", token[:-1] + ("A" if token[-1] != "A" else "B"))
    assert forged.exit_code == 1 and "checksum" in forged.stderr
    late = cli(
        "invite", "create", "late@example.com", "--role", "admin", "--project", "beta", "--json"
    ).json()["token"]
    with engine.begin() as conn:
        conn.execute(
            update(Invite)
            .where(Invite.email == "late@example.com")
            .values(expires_at=datetime.now(UTC) - timedelta(minutes=1))
        )
    expired = cli("invite", "accept", late)
    assert expired.exit_code == 1 and "expired at" in expired.stderr
    members = cli("member", "list", "--project", "beta", "--json").json()
    assert [m["email"] for m in members] == ["dev@example.com"]
    audit = cli("audit", "list", "--project", "beta", "--json").json()
    accept_record = next(r for r in audit if r["command"] == "invite accept")
    assert accept_record["arguments"]["token"] == "[redacted]"
    assert_secret_not_stored(engine, token.replace("nrb_inv_", "nrb_live_"))


# --- the matrix: every command, every way a key can be wrong ------------------------------
# The decision is the same on every database (the dialect tests above cover key storage), so the
# matrix, which runs every command several times, runs on SQLite only.


def test_the_matrix_names_every_command() -> None:
    assert set(MATRIX) == set(COMMANDS)


def _scoped_commands() -> list[str]:
    return [name for name, policy in COMMANDS.items() if policy.scope in SCOPES]


@sqlite_only
def test_matrix_key_of_another_project_is_refused(tenants: Cli) -> None:
    secret = make_key(tenants, "alpha", ALL)
    for command, policy in COMMANDS.items():
        if policy.scope == PUBLIC:
            continue
        result = tenants(*argv_for(command, "beta"), env={"NERUBA_API_KEY": secret})
        assert denied(result), (command, result)
        assert secret not in result.stdout + result.stderr


@sqlite_only
def test_matrix_missing_scope_is_refused_and_present_scope_is_not(tenants: Cli) -> None:
    for command in _scoped_commands():
        scope = COMMANDS[command].scope
        without = make_key(tenants, "alpha", ",".join(s for s in SCOPES if s != scope))
        refused = tenants(*argv_for(command, "alpha"), env={"NERUBA_API_KEY": without})
        assert denied(refused), (command, refused)
        assert f"lacks the {scope!r} scope" in refused.error()["message"]
        exact = make_key(tenants, "alpha", scope)
        allowed = tenants(*argv_for(command, "alpha"), env={"NERUBA_API_KEY": exact})
        assert not denied(allowed), (command, allowed)
        # 4: discrepancies found (reconcile, compare, check), depending on the data earlier
        # commands of the matrix left
        assert allowed.exit_code in (0, 1, 3, 4), (command, allowed)
        assert "internal error" not in allowed.stderr, (command, allowed)


@sqlite_only
def test_matrix_operator_commands_refuse_every_key(tenants: Cli) -> None:
    secret = make_key(tenants, "alpha", ALL)
    operator_commands = [n for n, p in COMMANDS.items() if p.scope == OPERATOR]
    assert {"init", "db upgrade", "project create", "project update"} <= set(operator_commands)
    for command in operator_commands:
        result = tenants(*argv_for(command, "alpha"), env={"NERUBA_API_KEY": secret})
        assert denied(result) and "local operator" in result.error()["message"], command


@sqlite_only
def test_matrix_revoked_expired_and_forged_keys_are_refused(tenants: Cli, engine: Engine) -> None:
    revoked = make_key(tenants, "alpha", ALL)
    revoked_id = tenants("key", "list", "--project", "alpha", "--json").json()[0]["id"]
    assert tenants("key", "revoke", revoked_id, "--project", "alpha").exit_code == 0
    expired = make_key(tenants, "alpha", ALL, "--expires", "1h")
    with engine.begin() as conn:
        conn.execute(
            update(ApiKey)
            .where(ApiKey.prefix == expired[:17])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    forged = make_key(tenants, "alpha", ALL)
    forged = forged[:20] + ("a" if forged[20] != "a" else "b") + forged[21:]
    for command in _scoped_commands():
        for secret, reason in ((revoked, "revoked"), (expired, "expired"), (forged, "checksum")):
            result = tenants(*argv_for(command, "alpha"), env={"NERUBA_API_KEY": secret})
            assert denied(result), (command, reason, result)
            assert reason in result.error()["message"]
            assert secret not in result.stdout + result.stderr


def test_a_secret_passed_as_an_argument_is_never_echoed_or_stored(
    tenants: Cli, engine: Engine
) -> None:
    secret = make_key(tenants, "alpha", "read")
    wrong_project = tenants("key", "revoke", secret, "--project", "beta")
    assert wrong_project.exit_code == 1 and secret not in wrong_project.stderr
    assert secret[:17] + "…" in wrong_project.stderr
    revoked = tenants("key", "revoke", secret, "--project", "alpha", "--json")
    assert revoked.exit_code == 0 and revoked.json()["prefix"] == secret[:17]
    assert secret not in revoked.stdout + revoked.stderr
    shown = tenants("customer", "show", secret, "--project", "alpha")
    assert shown.exit_code == 1 and secret not in shown.stderr
    assert_secret_not_stored(engine, secret)


@pytest.mark.parametrize("route", ["positional", "env", "config"])
def test_confinement_holds_on_every_route_to_a_project(
    tenants: Cli, isolated: Path, route: str
) -> None:
    """A key for alpha reaching beta without --project: by argument, variable or config."""
    secret = make_key(tenants, "alpha", ALL)
    env = {"NERUBA_API_KEY": secret}
    if route == "positional":
        result = tenants("project", "show", "beta", "--json", env=env)
    elif route == "env":
        result = tenants("customer", "list", "--json", env={**env, "NERUBA_PROJECT": "beta"})
    else:
        (isolated / "neruba.toml").write_text('[defaults]\nproject = "beta"\n')
        result = tenants("customer", "list", "--json", env=env)
    assert denied(result) and "not 'beta'" in result.error()["message"]
    if route == "positional":
        release = tenants("locks", "release", "beta:billing", "--yes", "--json", env=env)
        assert denied(release)
        assert "does not belong to project 'alpha'" in release.error()["message"]


def test_require_key_also_guards_the_audit_trail(tenants: Cli) -> None:
    assert tenants("project", "update", "beta", "--require-key").exit_code == 0
    scoped = tenants("audit", "list", "--project", "beta", "--json")
    assert denied(scoped)
    everything = tenants("audit", "list", "--json").json()
    assert everything and all(record["project"] != "beta" for record in everything)


def test_doctor_with_a_key_shows_only_its_project_locks(tenants: Cli, engine: Engine) -> None:
    from neruba_cli.db import locks

    stale = datetime.now(UTC) - timedelta(hours=2)
    locks.acquire(
        engine, "beta:secret-run", holder="x", ttl=timedelta(seconds=1), clock=lambda: stale
    )
    secret = make_key(tenants, "alpha", "read")
    report = tenants("doctor", "--json", env={"NERUBA_API_KEY": secret}).json()
    assert "beta:secret-run" not in str(report)
    operator = tenants("doctor", "--json").json()
    assert "beta:secret-run" in str(operator)


def test_demo_ignores_a_key_meant_for_another_database(bare_cli: Cli, isolated: Path) -> None:
    result = bare_cli(
        "demo", "--dir", "d", "--json", env={"NERUBA_API_KEY": new_secret("nrb_live_")}
    )
    assert result.exit_code == 0, result.stderr
    assert not (isolated / "neruba.db").exists()
