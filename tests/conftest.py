"""The root of the test suite: every fixture in tests/support/fixtures.py (databases per
dialect, the CLI runner, the fake Stripe) is available to every test, and each test is marked
with its lane (unit, integration, cli, reliability: the folder it lives in), so one lane runs
with `pytest tests/LANE` or `pytest -m LANE`. tests/README.md tells how to run each.

`Cli` and `Outcome` are re-exported here for modules that import them from `tests.conftest`;
new code imports them from `tests.support.cli`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.support.cli import Cli, Outcome

pytest_plugins = ["tests.support.fixtures"]

__all__ = ["Cli", "Outcome"]

# Property tests judge results, never speed: on a loaded machine (CI, parallel workers) an
# example may take seconds, which is neither a failure nor a reason to generate fewer.
settings.register_profile(
    "neruba", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("neruba")

TESTS = Path(__file__).resolve().parent
LANES = ("unit", "integration", "cli", "api", "reliability")
# What the unit lane may not ask for: it runs without a database and without the CLI.
NOT_UNIT = {"cli", "bare_cli", "sqlite_cli", "db_url", "empty_db_url", "engine", "stripe"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(item.path).resolve().relative_to(TESTS).parts
        lane = parts[0] if len(parts) > 1 and parts[0] in LANES else None
        if lane is None:
            continue
        item.add_marker(lane)
        if lane == "unit":
            callspec = getattr(item, "callspec", None)
            parametrized = set(callspec.params) if callspec else set()
            needs = NOT_UNIT.intersection(getattr(item, "fixturenames", ())) - parametrized
            if needs:
                raise pytest.UsageError(
                    f"{item.nodeid} is in tests/unit but uses {sorted(needs)}: a test that "
                    "needs a database or the CLI belongs in tests/integration or tests/cli"
                )
