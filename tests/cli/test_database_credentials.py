"""A database password is never shown and never written to the config file.

`customer list`, `init`, `doctor` and `doctor --json` show the URL (or a driver's message
about it) with every credential hidden, whether the password is in the user information
(even with an unescaped `@`) or in a query parameter; `init` writes the URL without it and
says to keep the full URL in NERUBA_DATABASE_URL.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from tests.support.cli import Cli, Outcome

PASSWORD = "hunter2secret"


def _with_query_password(db_url: str) -> str:
    return db_url + ("&" if "?" in db_url else "?") + f"password={PASSWORD}"


def _with_split_password(db_url: str) -> str:
    """A password `s3cr@tPw` pasted unescaped into the user information."""
    scheme, rest = db_url.split("://", 1)
    user = rest.split("@", 1)[0].split(":", 1)[0]
    return f"{scheme}://{user}:s3crXy@tPw@{rest.split('@', 1)[1]}"


def _shown(*outcomes: Outcome) -> str:
    return "".join(outcome.stdout + outcome.stderr for outcome in outcomes)


def test_a_password_in_the_query_is_never_shown(bare_cli: Cli, db_url: str, dialect: str) -> None:
    url = _with_query_password(db_url)
    listed = bare_cli("customer", "list", "--db", url, "--project", "acme")
    doctor = bare_cli("doctor", "--db", url)
    doctor_json = bare_cli("doctor", "--db", url, "--json")
    init = bare_cli("init", "--db", url, "--config", "etc.toml")
    everything = _shown(listed, doctor, doctor_json, init)
    assert PASSWORD not in everything
    assert "password=***" in doctor.stdout + doctor_json.stdout
    if dialect == "mariadb":  # the server refuses a password root does not have
        assert init.exit_code == 1 and "password=***" in init.stderr
        assert not Path("etc.toml").exists()
        return
    assert init.exit_code == 0, init.stderr
    written = Path("etc.toml").read_text()
    assert PASSWORD not in written and "password=" not in tomllib.loads(written)["database"]["url"]
    assert "the database password was not written to etc.toml" in init.stderr
    assert "set NERUBA_DATABASE_URL to the full URL" in init.stderr
    as_json = bare_cli("init", "--db", url, "--config", "other.toml", "--json")
    assert as_json.json()["password_left_out"] is True and PASSWORD not in as_json.stdout
    plain = bare_cli("init", "--db", db_url, "--config", "plain.toml", "--json")
    assert plain.json()["password_left_out"] is False


def test_a_password_with_an_unescaped_at_is_hidden_whole(
    bare_cli: Cli, db_url: str, dialect: str
) -> None:
    if dialect == "sqlite":
        return  # a SQLite URL has no user information
    url = _with_split_password(db_url)
    outcomes = [
        bare_cli("customer", "list", "--db", url, "--project", "acme"),
        bare_cli("doctor", "--db", url),
        bare_cli("doctor", "--db", url, "--json"),
        bare_cli("init", "--db", url, "--config", "etc.toml"),
    ]
    everything = _shown(*outcomes)
    assert all(outcome.exit_code == 1 for outcome in outcomes)
    assert "s3crXy" not in everything and "tPw" not in everything
    assert ":***@" in everything
