"""`neruba project ...` and `neruba customer ...` end to end on every dialect."""

from __future__ import annotations

from pathlib import Path

import orjson
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from neruba_cli.db.schema import Customer
from tests.support.cli import Cli

HEADER = "external_id,name,email,currency,timezone,stripe_id\n"


def test_create_list_show_project(cli: Cli) -> None:
    created = cli(
        "project",
        "create",
        "acme",
        "--name",
        "Acme Inc",
        "--currency",
        "eur",
        "--timezone",
        "Europe/Paris",
        "--rounding",
        "half_up",
        "--json",
    )
    assert created.exit_code == 0, created.stderr
    data = created.json()
    assert data["id"].startswith("proj_")
    assert {k: data[k] for k in ("slug", "name", "currency", "timezone", "rounding")} == {
        "slug": "acme",
        "name": "Acme Inc",
        "currency": "EUR",
        "timezone": "Europe/Paris",
        "rounding": "half_up",
    }
    assert data["created_at"].endswith("Z")
    listed = cli("project", "list", "--json").json()
    assert [p["slug"] for p in listed] == ["acme"]
    shown = cli("project", "show", "acme", "--json").json()
    assert shown == data
    table = cli("project", "list")
    assert table.exit_code == 0 and "acme" in table.stdout and "Acme Inc" in table.stdout


def test_duplicate_project_is_one_clear_line_and_exit_1(cli: Cli) -> None:
    assert cli("project", "create", "acme").exit_code == 0
    again = cli("project", "create", "acme")
    assert again.exit_code == 1
    assert again.stderr.strip() == "error: project 'acme' already exists"
    assert "Traceback" not in again.stdout + again.stderr
    as_json = cli("project", "create", "acme", "--json")
    assert as_json.exit_code == 1 and as_json.stdout == ""
    assert as_json.error() == {
        "type": "already_exists",
        "message": "project 'acme' already exists",
        "hint": None,
        "exit_code": 1,
    }


def test_invalid_project_values_are_refused(cli: Cli) -> None:
    for args, fragment in [
        (("Bad Slug",), "SLUG: project slug 'Bad Slug' is not valid"),
        (("ok", "--currency", "XXY"), "--currency: unknown currency 'XXY'"),
        (("ok", "--timezone", "Mars/Base"), "--timezone: unknown time zone 'Mars/Base'"),
        (("ok", "--rounding", "up"), "--rounding: 'up' is not one of: half_even, half_up"),
        (("ok", "--mode", "demo"), "--mode: 'demo' is not one of: live, test"),
    ]:
        result = cli("project", "create", *args)
        assert result.exit_code == 2 and fragment in result.stderr, (args, result.stderr)
    assert cli("project", "list", "--json").json() == []


def test_unknown_project_and_missing_project(cli: Cli) -> None:
    missing = cli("customer", "list", "--project", "nope")
    assert missing.exit_code == 1 and "project 'nope' does not exist" in missing.stderr
    unset = cli("customer", "list")
    assert unset.exit_code == 2 and "no project selected" in unset.stderr


def test_customer_create_defaults_and_duplicates(cli: Cli) -> None:
    cli("project", "create", "acme", "--currency", "EUR", "--timezone", "Europe/Paris")
    created = cli(
        "customer",
        "create",
        "c-1",
        "--name",
        "One",
        "--email",
        "one@example.com",
        "--project",
        "acme",
        "--json",
    )
    assert created.exit_code == 0, created.stderr
    customer = created.json()
    assert customer["id"].startswith("cus_")
    assert (customer["currency"], customer["timezone"]) == ("EUR", "Europe/Paris")
    dup = cli("customer", "create", "c-1", "--project", "acme")
    assert dup.exit_code == 1 and "customer 'c-1' already exists" in dup.stderr
    bad = cli("customer", "create", "c-2", "--email", "nope", "--project", "acme")
    assert bad.exit_code == 2 and "--email: email 'nope' is not an e-mail address" in bad.stderr
    blank = cli("customer", "create", "c-3", "--email", "", "--currency", " ", "--project", "acme")
    assert blank.exit_code == 0, blank.stderr  # a blank value is the default
    by_ext = cli("customer", "show", "c-1", "--project", "acme", "--json").json()
    by_id = cli("customer", "show", customer["id"], "--project", "acme", "--json").json()
    assert by_ext == by_id == customer


def test_customers_are_per_project(cli: Cli) -> None:
    cli("project", "create", "alpha")
    cli("project", "create", "beta")
    assert cli("customer", "create", "same", "--project", "alpha").exit_code == 0
    assert cli("customer", "create", "same", "--project", "beta").exit_code == 0
    hidden = cli("customer", "show", "same", "--project", "beta", "--json").json()
    alpha = cli("customer", "show", "same", "--project", "alpha", "--json").json()
    assert hidden["id"] != alpha["id"]


def test_customer_import_keeps_good_rows_and_reports_bad_ones(
    cli: Cli, tmp_path: Path, engine
) -> None:
    cli("project", "create", "acme")
    source = tmp_path / "customers.csv"
    source.write_text(
        "\ufeff"
        + HEADER
        + "c1,One,one@example.com,USD,,\n"  # line 2
        + "c2,Two,not-mail,,,\n"  # line 3: bad e-mail
        + 'c3,"Multi\nline name",,,Mars/X,\n'  # lines 4-5: bad zone
        + "c4,Four,,JPY,Asia/Tokyo,cus_A1\n"  # line 6
        + "c1,Again,,,,\n"  # line 7: duplicate in file
        + "c5,too,many,fields,,,,\n"  # line 8: field count
        + "\n"  # blank line: skipped
        + "c6,Six,,,,\n",  # line 10
        encoding="utf-8",
    )
    result = cli("customer", "import", str(source), "--project", "acme", "--json")
    assert result.exit_code == 3, result.stderr
    summary = result.json()
    assert {k: summary[k] for k in ("lines", "created", "updated", "unchanged", "rejected")} == {
        "lines": 7,
        "created": 3,
        "updated": 0,
        "unchanged": 0,
        "rejected": 4,
    }
    assert [(r["line"], r["reason"].split(" ")[0]) for r in summary["rejects"]] == [
        (3, "email"),
        (4, "name"),
        (7, "external_id"),
        (8, "row"),
    ]
    assert summary["rejects"][2]["reason"] == "external_id 'c1' already appears on line 2"
    assert summary["rejects"][1]["raw"] == 'c3,"Multi\nline name",,,Mars/X,'
    rejects_file = Path(summary["rejects_file"])
    assert rejects_file == tmp_path / "customers.csv.rejects.jsonl"
    lines = [orjson.loads(line) for line in rejects_file.read_bytes().splitlines()]
    assert lines == summary["rejects"]
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Customer)) == 3
    listed = cli("customer", "list", "--project", "acme", "--json").json()
    assert [c["external_id"] for c in listed] == ["c1", "c4", "c6"]
    assert listed[1]["stripe_id"] == "cus_A1" and listed[1]["currency"] == "JPY"


def test_customer_import_twice_is_unchanged_and_updates_changes(cli: Cli, tmp_path: Path) -> None:
    cli("project", "create", "acme")
    source = tmp_path / "c.csv"
    source.write_text(HEADER + "c1,One,,,,\nc2,Two,,,,\n")
    first = cli("customer", "import", str(source), "--project", "acme", "--json")
    assert first.exit_code == 0 and first.json()["created"] == 2
    assert not (tmp_path / "c.csv.rejects.jsonl").exists()
    second = cli("customer", "import", str(source), "--project", "acme", "--json").json()
    assert (second["created"], second["unchanged"], second["updated"]) == (0, 2, 0)
    source.write_text(HEADER + "c1,One Renamed,,,,\nc2,Two,,,,\n")
    third = cli("customer", "import", str(source), "--project", "acme", "--json").json()
    assert (third["created"], third["unchanged"], third["updated"]) == (0, 1, 1)
    shown = cli("customer", "show", "c1", "--project", "acme", "--json").json()
    assert shown["name"] == "One Renamed"


def test_customer_import_file_errors_write_nothing(cli: Cli, tmp_path: Path) -> None:
    cli("project", "create", "acme")
    wrong_header = tmp_path / "h.csv"
    wrong_header.write_text("external_id,emial\nc1,x@y.z\n")
    result = cli("customer", "import", str(wrong_header), "--project", "acme")
    assert result.exit_code == 1
    assert f"{wrong_header}: line 1: unknown column 'emial'" in result.stderr
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"external_id,\xff\xfe\nc1,One\n")
    result = cli("customer", "import", str(binary), "--project", "acme")
    assert result.exit_code == 1 and "line 1: the header is not UTF-8" in result.stderr
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    result = cli("customer", "import", str(empty), "--project", "acme")
    assert result.exit_code == 1 and "the file is empty" in result.stderr
    missing = cli("customer", "import", str(tmp_path / "nope.csv"), "--project", "acme")
    assert missing.exit_code == 1 and "cannot read" in missing.stderr
    assert cli("customer", "list", "--project", "acme", "--json").json() == []


def test_partial_reimport_never_erases_stored_fields(cli: Cli, tmp_path: Path) -> None:
    cli("project", "create", "acme")
    created = cli(
        "customer",
        "create",
        "c1",
        "--email",
        "a@b.co",
        "--currency",
        "EUR",
        "--timezone",
        "Europe/Paris",
        "--stripe-id",
        "cus_ABC",
        "--project",
        "acme",
    )
    assert created.exit_code == 0
    source = tmp_path / "partial.csv"
    source.write_text("external_id,name,email\nc1,New Name,\n")
    result = cli("customer", "import", str(source), "--project", "acme", "--json")
    assert result.exit_code == 0 and result.json()["updated"] == 1
    shown = cli("customer", "show", "c1", "--project", "acme", "--json").json()
    assert (shown["name"], shown["email"], shown["currency"], shown["timezone"]) == (
        "New Name",
        "a@b.co",
        "EUR",
        "Europe/Paris",
    )
    assert shown["stripe_id"] == "cus_ABC"


def test_import_rejects_what_a_server_would_refuse(cli: Cli, tmp_path: Path) -> None:
    """Values every database must accept, or a reject: never a failed import."""
    cli("project", "create", "acme")
    source = tmp_path / "odd.csv"
    source.write_bytes(
        HEADER.encode()
        + b"ok-1,Fine,,,,\r\n"  # line 2: CRLF is fine
        + b"long,Long,,,,cus_"
        + b"x" * 80
        + b"\n"  # line 3: stripe id too long
        + b"nul,Bad\x00Name,,,,\n"  # line 4: NUL byte
        + b"latin,Caf\xe9,,,,\n"  # line 5: not UTF-8
        + b"Acme-1,Upper,,,,\n"  # line 6
        + b"acme-1,Lower,,,,\n"  # line 7: another customer
        + b"big,"
        + b"n" * 300
        + b",,,,\n"  # line 8: name too long
        + "emoji,Caf\u00e9 \u2615 \U0001f680,,,,\n".encode()  # line 9: 4-byte UTF-8
    )
    result = cli("customer", "import", str(source), "--project", "acme", "--json")
    assert result.exit_code == 3, result.stderr
    summary = result.json()
    assert [r["line"] for r in summary["rejects"]] == [3, 4, 5, 8]
    assert "not UTF-8" in summary["rejects"][2]["reason"]
    assert summary["created"] == 4
    listed = cli("customer", "list", "--project", "acme", "--json").json()
    assert sorted(c["external_id"] for c in listed) == ["Acme-1", "acme-1", "emoji", "ok-1"]
    emoji = cli("customer", "show", "emoji", "--project", "acme", "--json").json()
    assert emoji["name"] == "Caf\u00e9 \u2615 \U0001f680"


TRIGGERS = {
    "sqlite": [
        "CREATE TRIGGER refuse_test BEFORE INSERT ON customers WHEN NEW.name = 'refuse-me' "
        "BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END",
    ],
    "mariadb": [
        "CREATE TRIGGER refuse_test BEFORE INSERT ON customers FOR EACH ROW BEGIN "
        "IF NEW.name = 'refuse-me' THEN SIGNAL SQLSTATE '45000' "
        "SET MESSAGE_TEXT = 'refused by test trigger'; END IF; END",
    ],
    "postgresql": [
        "CREATE FUNCTION refuse_test() RETURNS trigger AS $$ BEGIN "
        "IF NEW.name = 'refuse-me' THEN RAISE EXCEPTION 'refused by test trigger'; END IF; "
        "RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER refuse_test BEFORE INSERT ON customers "
        "FOR EACH ROW EXECUTE FUNCTION refuse_test()",
    ],
}
DROP = {
    "sqlite": ["DROP TRIGGER refuse_test"],
    "mariadb": ["DROP TRIGGER refuse_test"],
    "postgresql": ["DROP TRIGGER refuse_test ON customers", "DROP FUNCTION refuse_test()"],
}


def test_a_row_the_database_refuses_is_rejected_alone(
    cli: Cli, tmp_path: Path, engine, dialect: str
) -> None:
    cli("project", "create", "acme")
    with engine.begin() as conn:
        for statement in TRIGGERS[dialect]:
            conn.exec_driver_sql(statement)
    try:
        source = tmp_path / "c.csv"
        source.write_text(HEADER + "a,A,,,,\nb,refuse-me,,,,\nc,C,,,,\n")
        result = cli("customer", "import", str(source), "--project", "acme", "--json")
    finally:
        with engine.begin() as conn:
            for statement in DROP[dialect]:
                conn.exec_driver_sql(statement)
    assert result.exit_code == 3, result.stderr
    summary = result.json()
    assert (summary["created"], summary["rejected"]) == (2, 1)
    assert summary["rejects"][0]["line"] == 3
    assert "refused by test trigger" in summary["rejects"][0]["reason"]
    listed = cli("customer", "list", "--project", "acme", "--json").json()
    assert [c["external_id"] for c in listed] == ["a", "c"]


def test_a_failed_import_leaves_an_existing_rejects_file_alone(cli: Cli, tmp_path: Path) -> None:
    cli("project", "create", "acme")
    notes = tmp_path / "notes.txt"
    notes.write_text("precious\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("external_id,emial\nc1,x\n")
    result = cli("customer", "import", str(bad), "--rejects", str(notes), "--project", "acme")
    assert result.exit_code == 1 and notes.read_text() == "precious\n"
    good = tmp_path / "good.csv"
    good.write_text(HEADER + "c1,One,nope,,,\n")
    wrong_project = cli("customer", "import", str(good), "--rejects", str(notes), "--project", "zz")
    assert wrong_project.exit_code == 1 and notes.read_text() == "precious\n"
    assert not list(tmp_path.glob(".*partial"))


def test_markup_in_data_is_shown_as_written(cli: Cli, tmp_path: Path) -> None:
    cli("project", "create", "acme")
    created = cli(
        "customer", "create", "evil", "--name", "[/x] [bold]B[/bold]", "--project", "acme"
    )
    assert created.exit_code == 0, created.stderr
    listed = cli("customer", "list", "--project", "acme")
    assert listed.exit_code == 0 and "[/x] [bold]B[/bold]" in listed.stdout
    shown = cli("customer", "show", "[/foo]", "--project", "acme")
    assert shown.exit_code == 1 and "customer '[/foo]' does not exist" in shown.stderr
    source = tmp_path / "m.csv"
    source.write_text(HEADER + "z1,Fine,,,,\nz2,Bad,not-an-email[/x],,,\n")
    result = cli("customer", "import", str(source), "--project", "acme")
    assert result.exit_code == 3 and "not-an-email[/x]" in result.stderr
