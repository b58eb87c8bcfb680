"""`neruba init` writes a config file that names the same SQLite database from any working
directory: cron runs in $HOME, an operator in another folder."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from tests.support.cli import Cli


def config_url(path: Path) -> str:
    return str(tomllib.loads(path.read_text())["database"]["url"])


def test_the_config_names_one_database_from_any_folder(
    bare_cli: Cli, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project, home = isolated / "project", isolated / "home"
    project.mkdir()
    home.mkdir()
    monkeypatch.chdir(project)
    made = bare_cli("init")
    assert made.exit_code == 0, made.stderr
    assert config_url(project / "neruba.toml") == f"sqlite:///{project / 'neruba.db'}"
    assert f"Database sqlite:///{project / 'neruba.db'} is at " in made.stderr
    assert bare_cli("project", "create", "acme").exit_code == 0

    monkeypatch.chdir(home)  # as cron, which starts in $HOME
    config = str(project / "neruba.toml")
    listed = bare_cli("project", "list", "--config", config, "--json")
    assert listed.exit_code == 0, listed.stderr
    assert [p["slug"] for p in listed.json()] == ["acme"]
    assert not (home / "neruba.db").exists()


def test_a_config_elsewhere_gets_its_database_beside_it(
    bare_cli: Cli, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (isolated / "etc").mkdir()
    made = bare_cli("init", "--config", "etc/neruba.toml")
    assert made.exit_code == 0, made.stderr
    assert config_url(isolated / "etc" / "neruba.toml") == f"sqlite:///{isolated}/etc/neruba.db"
    assert (isolated / "etc" / "neruba.db").is_file() and not (isolated / "neruba.db").exists()

    # a relative --db is read where it was typed, and written down absolute
    (isolated / "work").mkdir()
    monkeypatch.chdir(isolated / "work")
    made = bare_cli("init", "--db", "sqlite:///./here.db", "--config", "../etc/other.toml")
    assert made.exit_code == 0, made.stderr
    assert config_url(isolated / "etc" / "other.toml") == f"sqlite:///{isolated}/work/here.db"
    assert (isolated / "work" / "here.db").is_file()


def test_a_hand_written_relative_path_is_read_beside_its_config_file(
    bare_cli: Cli, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (isolated / "etc").mkdir()
    (isolated / "etc" / "neruba.toml").write_text('[database]\nurl = "sqlite:///./neruba.db"\n')
    upgraded = bare_cli("db", "upgrade", "--config", "etc/neruba.toml")
    assert upgraded.exit_code == 0, upgraded.stderr
    assert (isolated / "etc" / "neruba.db").is_file() and not (isolated / "neruba.db").exists()


def test_a_missing_database_is_shown_with_its_absolute_path_and_origin(
    bare_cli: Cli, isolated: Path
) -> None:
    default = bare_cli("project", "list")
    assert default.exit_code == 1
    assert f"SQLite database {isolated / 'neruba.db'} does not exist" in default.stderr
    assert "its URL is the default" in default.stderr and "neruba init" in default.stderr

    (isolated / "neruba.toml").write_text('[database]\nurl = "sqlite:///data/gone.db"\n')
    configured = bare_cli("project", "list")
    expected = f"{isolated / 'data' / 'gone.db'} does not exist; its URL is from config file "
    assert configured.exit_code == 1 and expected in configured.stderr
    doctor = bare_cli("doctor", "--json")
    assert expected in doctor.json()["checks"][1]["detail"]


def test_init_and_doctor_show_the_url_as_written_and_the_server_by_name(
    bare_cli: Cli, db_url: str, dialect: str
) -> None:
    shown = re.sub(r"\+\w+://", "://", db_url)  # no driver Neruba picked
    made = bare_cli("init", "--db", db_url)
    assert made.exit_code == 0, made.stderr
    assert f"Database {shown} is at " in made.stderr
    doctor = bare_cli("doctor", "--db", db_url)
    product = {"sqlite": "SQLite", "mariadb": "MariaDB", "postgresql": "PostgreSQL"}[dialect]
    assert re.search(rf"│ database +│ ok +│ {product} [\d.]+ at {re.escape(shown)} ", doctor.stdout)
    assert "+pymysql" not in doctor.stdout + made.stderr
    assert "+psycopg" not in doctor.stdout + made.stderr
