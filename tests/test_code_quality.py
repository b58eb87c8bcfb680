"""Lint and type checks are part of the test run, so CI fails when they do."""

from __future__ import annotations

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
