"""The root of the test suite: every fixture in tests/support/fixtures.py (databases per
dialect, the CLI runner, the fake Stripe) is available to every test.

`Cli` and `Outcome` are re-exported here for modules that import them from `tests.conftest`;
new code imports them from `tests.support.cli`.
"""

from __future__ import annotations

from tests.support.cli import Cli, Outcome

pytest_plugins = ["tests.support.fixtures"]

__all__ = ["Cli", "Outcome"]
