"""`invoice verify`, `run bill` and `check` say the same thing about late usage.

Plan metered: no base fee, api_calls at 0.001 each. c1 makes 1,000 calls in October: 1.00.
One late call (1,001 × 0.001 = 1.001) moves no rounded amount: `run bill` writes nothing
("no changes"), `check` is clean, and `verify` says ok with a note, instead of asking forever
for a rerun that will never write anything. Ten more late calls (1.011 → 1.01) do move the
amount: `verify` asks for the correction, `run bill` writes it (0.01), and all three agree again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.catalogs import apply_catalog, catalog, meter, per_unit, plan
from tests.support.cli import Cli, expect, ok

AS_OF = "2026-11-02T00:00:00Z"
CATALOG = catalog(
    meters=[meter("api_calls", "count")],
    plans=[plan("metered", "0.00", per_unit("api_calls", "0.001"))],
)


def calls(cli: Cli, path: Path, keys: range) -> None:
    lines = (
        orjson.dumps(
            {
                "idempotency_key": f"call-{i}",
                "customer": "c1",
                "meter": "api_calls",
                "timestamp": "2026-10-15T12:00:00Z",
            }
        )
        for i in keys
    )
    path.write_bytes(b"\n".join(lines) + b"\n")
    ok(cli, "ingest", str(path))


def verify(cli: Cli, code: int) -> dict[str, Any]:
    report: dict[str, Any] = expect(cli, code, "invoice", "verify", "--period", "2026-10")
    return report


@pytest.fixture
def billed(cli: Cli, tmp_path: Path) -> Cli:
    assert cli("project", "create", "acme").exit_code == 0
    apply_catalog(cli, tmp_path, CATALOG)
    ok(cli, "customer", "create", "c1")
    ok(cli, "subscription", "create", "c1", "metered", "--start", "2026-10-01T00:00:00Z")
    calls(cli, tmp_path / "october.jsonl", range(1000))
    report = ok(cli, "run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--finalize")
    assert [row["total"] for row in ok(cli, "invoice", "list", "--period", "2026-10")] == ["1.00"]
    assert report["finalized"]
    return cli


def test_late_usage_that_moves_no_amount_is_ok_everywhere(billed: Cli, tmp_path: Path) -> None:
    calls(billed, tmp_path / "late.jsonl", range(1000, 1001))

    rerun = ok(billed, "run", "bill", "--period", "2026-10", "--as-of", AS_OF)
    assert [row["total"] for row in ok(billed, "invoice", "list", "--period", "2026-10")] == [
        "1.00"
    ]
    assert rerun["failed"] == []
    (verdict,) = verify(billed, 0)["invoices"]
    assert verdict["result"] == "ok" and verdict["checks"]["recomputed"] == "ok"
    assert any("nothing to correct" in note for note in verdict["notes"]), verdict
    assert "+1 events" in verdict["notes"][0], verdict
    assert billed("check", "--project", "acme", "--json").exit_code == 0


def test_late_usage_that_moves_an_amount_is_corrected_then_ok(billed: Cli, tmp_path: Path) -> None:
    calls(billed, tmp_path / "late.jsonl", range(1000, 1011))

    (verdict,) = verify(billed, 4)["invoices"]
    assert "write the correction" in verdict["problems"][0], verdict
    ok(billed, "run", "bill", "--period", "2026-10", "--as-of", AS_OF)
    totals = sorted(row["total"] for row in ok(billed, "invoice", "list", "--period", "2026-10"))
    assert totals == ["0.01", "1.00"]
    report = verify(billed, 0)
    assert report["mismatches"] == 0, report
    assert billed("check", "--project", "acme", "--json").exit_code == 0
