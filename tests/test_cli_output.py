"""What an operator sees: tables that never split a number.

Rendering touches no SQL, so these run on SQLite only, against a copy of one `neruba demo`
database (three invoices, payments, credit, runs, a compare baseline).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli

AS_OF = "2026-11-20T09:00:00Z"  # the demo then bills October 2026
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo")
    made = Cli(None)("demo", "--dir", str(folder), "--as-of", AS_OF, "--quiet")
    assert made.exit_code == 0, made.stderr
    return folder


@pytest.fixture
def demo(demo_folder: Path, tmp_path: Path) -> Cli:
    """A runner on a private copy of the demo database (commands below change it)."""
    copy = tmp_path / "demo.db"
    shutil.copyfile(demo_folder / "neruba-demo.db", copy)
    return Cli(f"sqlite:///{copy}")


def on_demo(cli: Cli, *args: str, env: dict[str, str] | None = None) -> Any:
    return cli(*args, "--project", "demo", env=env)


def data(cli: Cli, *args: str) -> Any:
    result = on_demo(cli, *args, "--json")
    assert result.exit_code == 0, (args, result.stderr)
    return result.json()


# --------------------------------------------------------------------------- table widths


@pytest.mark.parametrize("columns", ["30", "80", "200"])
def test_off_a_terminal_every_row_is_printed_whole(demo: Cli, columns: str) -> None:
    """`neruba invoice list | grep DEMO-000003` finds the whole row, whatever COLUMNS says."""
    listed = on_demo(demo, "invoice", "list", env={"COLUMNS": columns})
    assert listed.exit_code == 0, listed.stderr
    rows = [line for line in listed.stdout.splitlines() if "DEMO-000003" in line]
    assert len(rows) == 1
    assert re.search(r"DEMO-000003 .* supplemental .* finalized .* 11\.25 .* DEMO-000001", rows[0])

    runs = on_demo(demo, "run", "list", env={"COLUMNS": columns})
    assert runs.stdout == on_demo(demo, "run", "list", env={"COLUMNS": "1000"}).stdout
    for run in data(demo, "run", "list"):
        shown = [line for line in runs.stdout.splitlines() if run["id"] in line]
        assert len(shown) == 1 and run["period"] in shown[0] and run["status"] in shown[0]


def test_on_a_narrow_terminal_words_wrap_but_numbers_stay_whole(demo: Cli) -> None:
    terminal = {"TTY_COMPATIBLE": "1", "COLUMNS": "60"}
    listed = on_demo(demo, "invoice", "list", env=terminal)
    assert listed.exit_code == 0, listed.stderr
    text = ANSI.sub("", listed.stdout)
    for number in ("DEMO-000001", "DEMO-000002", "DEMO-000003", "138.58", "supplemental"):
        assert number in text, number

    customers = ANSI.sub(
        "", on_demo(demo, "customer", "list", env={**terminal, "COLUMNS": "100"}).stdout
    )
    lines = customers.splitlines()
    assert max(len(line) for line in lines) <= 100  # it fits: the names wrap at a space
    assert any("│ Acme " in line for line in lines) and any("│ Rockets " in line for line in lines)
    for whole in ("cus_umbrella", "accounts@umbrella.example", "America/New_York"):
        assert whole in customers, whole
