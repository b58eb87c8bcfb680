"""Lint and type checks are part of the test run, so CI fails when they do."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_ruff_is_clean() -> None:
    result = _run("ruff", "check", "neruba_cli", "migrations", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_on_the_domain() -> None:
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


def test_every_table_has_a_typed_handle() -> None:
    """db/tables.py holds a `Table` for each table of the schema, named `<table>_t`."""
    from sqlalchemy import Table

    from neruba_cli.db import tables
    from neruba_cli.db.schema import Base

    handles = {name: value for name, value in vars(tables).items() if isinstance(value, Table)}
    assert {f"{table}_t" for table in Base.metadata.tables} == set(handles)
    assert all(handle.name == name.removesuffix("_t") for name, handle in handles.items())
