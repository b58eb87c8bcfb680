"""`neruba demo` works at any instant: it bills the latest month that has ended for every demo
customer (cus_acme lives in New York, cus_initech in UTC), so the first hours of a month in UTC,
and the 1st anywhere from UTC-12 to UTC+14, still end in finalized invoices."""

from __future__ import annotations

import pytest

from tests.support.cli import Cli

INSTANTS = {
    # the instant: the month billed. All are in the past: an import's receipt keeps the real
    # time it finished, which `check` compares with the invoices' (pinned) computation time.
    "2026-12-01T00:30:00Z": "2026-10",  # November has not ended in New York yet
    "2026-11-30T23:59:59Z": "2026-10",
    "2026-12-01T05:00:00Z": "2026-11",  # midnight in New York
    "2026-12-01T00:30:00-12:00": "2026-11",
    "2026-11-30T23:30:00-12:00": "2026-11",
    "2026-12-01T00:30:00+14:00": "2026-10",
    "2026-01-01T00:30:00Z": "2025-11",
    "2026-03-01T00:00:00Z": "2026-01",  # February ends in New York at 05:00 UTC
    "2026-03-01T12:00:00+14:00": "2026-01",
}


@pytest.mark.parametrize("instant", INSTANTS)
def test_demo_bills_a_finished_month_at_any_instant(
    bare_cli: Cli, instant: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("demo")
    result = bare_cli("demo", "--dir", str(folder), "--as-of", instant, "--json")
    assert result.exit_code == 0, result.stderr
    demo = result.json()
    month = INSTANTS[instant]
    assert [(i["kind"], i["status"], i["period"]) for i in demo["invoices"]] == [
        ("invoice", "paid", month),
        ("invoice", "finalized", month),
        ("supplemental", "finalized", month),
    ]
    assert any(step.startswith(f"billed {month}: 2 invoices") for step in demo["steps"])
    assert demo["steps"][-1].startswith("checked the ledger: consistent")
