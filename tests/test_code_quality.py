"""Lint, type and layer checks are part of the test run, so CI fails when they do."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = ROOT / "neruba_cli" / "domain"
# reading the clock: what domain functions take as a parameter instead
CLOCK_CALLS = {"now", "utcnow", "today"}
CLOCK_OWNERS = {"datetime", "date"}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_ruff_is_clean() -> None:
    result = _run("ruff", "check", "neruba_cli", "migrations", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_on_domain_db_and_services() -> None:
    """`files` in pyproject.toml's [tool.mypy] names the three packages."""
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert settings["strict"] is True
    assert set(settings["files"]) >= {"neruba_cli/domain", "neruba_cli/db", "neruba_cli/services"}
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports (`import a.b`, `from a.b import c`), absolute names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _is_test_module(name: str) -> bool:
    """tests.test_x, tests.cli.test_x, and the conftest of a folder below tests/."""
    parts = name.split(".")
    if parts[0] != "tests":
        return False
    last = parts[-1]
    return last.startswith("test_") or (last == "conftest" and len(parts) > 2)


def test_no_test_module_imports_another() -> None:
    """Shared helpers live in tests/support/ (and the fake Stripe in tests/fakes/): a test
    module that imports another test module (or a sub-folder's conftest) runs that module's
    tests' set-up for nothing and ties suites together; move the helper to tests/support/."""
    offenders = sorted(
        f"{path.relative_to(ROOT)} imports {name}"
        for path in (ROOT / "tests").rglob("*.py")
        for name in _imported_modules(path)
        if _is_test_module(name)
    )
    assert offenders == [], "\n".join(offenders)


def test_imports_follow_the_layers() -> None:
    """The contracts in pyproject.toml: cli | api -> services -> config -> db -> domain, and a
    domain without database, file system, clock or randomness."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _clock_reads(tree: ast.AST) -> list[int]:
    """Lines that call `datetime.now()`, `date.today()`, `datetime.datetime.utcnow()`...,
    under whatever name the module imported them."""
    owners = set(CLOCK_OWNERS)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom | ast.Import):
            owners |= {
                alias.asname
                for alias in node.names
                if alias.asname and alias.name.rpartition(".")[2] in CLOCK_OWNERS
            }
    lines = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
        if node.func.attr in CLOCK_CALLS and name in owners:
            lines.append(node.lineno)
    return lines


def test_the_domain_never_reads_the_clock() -> None:
    """import-linter keeps `time` out of domain; `datetime` is allowed for its types, so its
    clock calls are looked for here. The time comes in as a parameter (`now`, `as_of`)."""
    found = {
        str(path.relative_to(ROOT)): lines
        for path in sorted(DOMAIN.glob("**/*.py"))
        if (lines := _clock_reads(ast.parse(path.read_text(), str(path))))
    }
    assert found == {}, f"clock reads in the domain: {found}"


def test_the_clock_check_finds_what_it_looks_for() -> None:
    source = (
        "import datetime\n"
        "from datetime import date, datetime as dt\n"
        "a = datetime.datetime.now()\n"
        "b = date.today()\n"
        "c = datetime.utcnow()\n"
        "d = dt.fromisoformat('2026-01-01')\n"
        "e = moment.now\n"
        "f = dt.now(UTC)\n"
    )
    assert _clock_reads(ast.parse(source)) == [3, 4, 5, 8]


def test_every_table_has_a_typed_handle() -> None:
    """db/tables.py holds a `Table` for each table of the schema, named `<table>_t`."""
    from sqlalchemy import Table

    from neruba_cli.db import tables
    from neruba_cli.db.schema import Base

    handles = {name: value for name, value in vars(tables).items() if isinstance(value, Table)}
    assert {f"{table}_t" for table in Base.metadata.tables} == set(handles)
    assert all(handle.name == name.removesuffix("_t") for name, handle in handles.items())


def test_tables_are_reached_through_their_handles() -> None:
    """`Model.__table__` is typed as a bare FromClause; code takes `db.tables.<table>_t`."""
    offenders = sorted(
        f"{path.relative_to(ROOT)}:{number}"
        for folder in ("neruba_cli", "tests", "bench", "migrations", "scripts")
        for path in (ROOT / folder).rglob("*.py")
        if path != ROOT / "neruba_cli" / "db" / "tables.py" and path != Path(__file__)
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if ".__table__" in line
    )
    assert offenders == [], "\n".join(offenders)


def test_every_package_is_in_the_wheel() -> None:
    """The wheel lists its packages by name: a package folder missing from the list installs
    nowhere, and only a non-editable install (`pip install .`) would show it."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "neruba_cli").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
