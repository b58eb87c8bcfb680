"""`neruba compare`, end to end: a CSV baseline with planted differences on every dialect,
the report files (report.html rendered in headless Chromium), late events, the Stripe mirror
as the baseline, bad input, and the demo's comparison.

The shop: project acme (UTC), plan pro at 49.00 a month in arrears, prorated by day, plus
api_calls at 0.01 each; customer cNNN starts on October (NNN - 1) % 28 + 1.
"""

from __future__ import annotations

import csv
import struct
import zlib
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, select, update

from neruba_cli.db.engine import create_db_engine
from neruba_cli.db.schema import Customer, Invoice
from neruba_cli.db.tables import events_t
from neruba_cli.domain.invoice import plain_fee_description
from tests.fakes.stripe import FakeStripe
from tests.support.browser import chromium, require_chromium
from tests.support.cli import Cli, expect, ok
from tests.support.shops import (
    PERIOD,
    billed_lines,
    finalize_month,
    metered_pro,
    subscribed_shop,
)

ROOT = Path(__file__).resolve().parents[2]
CATALOG = metered_pro()
COLUMNS = ["customer", "description", "meter", "quantity", "amount", "currency"]
FEE = "Pro base fee (in arrears)"
CENT = Decimal("0.01")


def total(lines: list[dict[str, Any]]) -> Decimal:
    return sum((Decimal(line["amount"]) for line in lines), Decimal(0))


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def baseline_rows(lines: dict[str, list[dict[str, Any]]]) -> list[list[str]]:
    """The billed lines as a legacy system would export them, one row per line."""
    return [
        [
            customer,
            line["description"],
            line["meter"] or "",
            line["quantity"] or "",
            line["amount"],
            "USD",
        ]
        for customer, items in lines.items()
        for line in items
    ]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------- acceptance


def planted_baseline(
    tmp_path: Path, lines: dict[str, list[dict[str, Any]]]
) -> tuple[Path, Decimal]:
    """The billed lines with exactly five differences planted (and one within tolerance);
    the drift they make."""
    rows = []
    drift = Decimal(0)
    for customer, items in lines.items():
        if customer == "c007":  # 1. a customer the legacy system never billed
            drift += total(items)
            continue
        for line in items:
            amount, currency = Decimal(line["amount"]), "USD"
            if line["kind"] == "base_fee" and customer == "c010":  # 2. two cents off
                amount += 2 * CENT
                drift += 2 * CENT
            if line["kind"] == "base_fee" and customer == "c020":  # (one cent: tolerated)
                amount += CENT
            if line["kind"] == "base_fee" and customer == "c040":  # 3. two days less
                shorter = Decimal(line["amount_exact"]) - 2 * Decimal(49) / 31
                drift += amount - shorter.quantize(CENT)
                amount = shorter.quantize(CENT)
            if customer == "c030":  # 4. billed in another currency
                currency = "EUR"
            row = [customer, line["description"], line["meter"] or "", line["quantity"] or ""]
            rows.append([*row, str(amount), currency])
        if customer == "c030":
            drift += total(items)
    rows.append(["zz-ghost", FEE, "", "", "10.00", "USD"])  # 5. a customer unknown here
    drift += Decimal("10.00")
    return write_csv(tmp_path / "legacy.csv", COLUMNS, rows), drift


def test_a_planted_baseline_yields_exactly_its_five_differences(
    cli: Cli, engine: Engine, tmp_path: Path
) -> None:
    subscribed_shop(cli, tmp_path, 200, CATALOG, digits=3, usage={"c003": 7, "c010": 3})
    finalize_month(cli)
    lines = billed_lines(engine, PERIOD)
    assert len(lines) == 200
    baseline, drift = planted_baseline(tmp_path, lines)
    out = tmp_path / "report"

    report = expect(
        cli,
        4,
        "compare",
        str(baseline),
        "--period",
        PERIOD,
        "--fail-over",
        "0",
        "--output",
        str(out),
    )
    summary = report["summary"]
    assert (summary["customers"], summary["matched"], summary["differences"]) == (201, 196, 5)
    assert summary["match_rate"] == "97.51" and summary["fail_over_exceeded"] is True
    assert summary["statuses"] == {
        "matched": 196,
        "amount_differs": 2,
        "currency_differs": 1,
        "only_in_neruba": 1,
        "only_in_baseline": 1,
    }
    assert summary["reasons"] == {
        "missing_customer": 2,
        "currency_mismatch": 1,
        "other": 1,
        "proration": 1,
    }
    found = {d["customer"]: d for d in report["differences"]}
    assert set(found) == {"c007", "c010", "c030", "c040", "zz-ghost"}
    assert (found["c007"]["status"], found["c007"]["reason"]) == (
        "only_in_neruba",
        "missing_customer",
    )
    assert (found["zz-ghost"]["status"], found["zz-ghost"]["difference"]) == (
        "only_in_baseline",
        "-10.00",
    )
    assert found["zz-ghost"]["baseline"]["known"] is False
    assert (found["c010"]["difference"], found["c010"]["reason"]) == ("-0.02", "other")
    assert found["c040"]["reason"] == "proration"
    (fee_line,) = found["c040"]["lines"]
    # the line as the invoice names it (with its days); matched by the days-less text
    assert fee_line["line"].startswith("Pro base fee, ") and fee_line["kind"] == "base_fee"
    assert plain_fee_description(fee_line["line"]) == FEE
    assert (found["c030"]["status"], found["c030"]["difference"]) == ("currency_differs", None)
    assert found["c030"]["baseline"]["currency"] == "EUR"
    usd = summary["currencies"]["USD"]
    assert usd["drift"] == f"{drift:.2f}" and usd["tolerated"] == "0.01"
    neruba_total = sum((total(items) for items in lines.values()), Decimal(0))
    assert usd["neruba_total"] == f"{neruba_total:.2f}"
    assert usd["drift_percent"] == f"{(drift * 100 / neruba_total).quantize(CENT)}"
    assert usd["p50_drift"] == "0.00" and usd["customers"] == 201  # c030 counts in USD
    assert summary["currencies"]["EUR"]["baseline_total"] == f"{total(lines['c030']):.2f}"
    assert [item["customer"] for item in summary["largest"]][-1] == "c010"  # largest first

    # the files: summary.json is the summary; every customer; the lines that differ
    assert orjson.loads((out / "summary.json").read_bytes()) == summary
    customers = {row["customer"]: row for row in read_csv(out / "customers.csv")}
    assert len(customers) == 201
    assert customers["c020"]["status"] == "matched" and customers["c020"]["tolerated"] == "0.01"
    assert customers["c010"]["difference"] == "-0.02" and customers["c010"]["drift"] == "0.02"
    assert (
        customers["c007"]["baseline_total"] == ""
        and customers["c030"]["baseline_currency"] == "EUR"
    )
    assert customers["c003"]["neruba_documents"].startswith("ACME-")
    line_rows = read_csv(out / "lines.csv")
    assert sorted((r["customer"], r["customer_status"], r["reason"]) for r in line_rows) == [
        ("c007", "only_in_neruba", "missing_price_mapping"),
        ("c010", "amount_differs", "other"),
        ("c020", "matched", "rounding"),
        ("c040", "amount_differs", "proration"),
        ("zz-ghost", "only_in_baseline", "missing_price_mapping"),
    ]
    html = (out / "report.html").read_text()
    assert "97.51%" in html and f"{drift:.2f}" in html and "<svg" in html

    # no --fail-over: differences alone exit 0; a threshold above the drift too
    assert (
        expect(cli, 0, "compare", str(baseline), "--period", PERIOD)["summary"]["differences"] == 5
    )
    assert expect(cli, 0, "compare", str(baseline), "--period", PERIOD, "--fail-over", "99%")
    human = cli(
        "compare",
        str(baseline),
        "--period",
        PERIOD,
        "--project",
        "acme",
        "--by",
        "line",
        "--fail-over",
        f"{drift - CENT}",
    )
    assert human.exit_code == 4, human.stderr
    assert "201 customers compared: 196 matched (97.51%), 5 differ" in human.stdout
    assert (
        "proration" in human.stdout and f"drift exceeds --fail-over {drift - CENT}" in human.stdout
    )


# --------------------------------------------------------------------------- the reasons


def test_late_events_and_rounding_are_told_apart(cli: Cli, engine: Engine, tmp_path: Path) -> None:
    subscribed_shop(cli, tmp_path, 3, CATALOG, digits=3, usage={"c001": 14, "c002": 10})
    late_keys = [f"c001-{n}" for n in range(10, 14)]
    with engine.begin() as conn:  # the legacy system closed October with all but 4 events
        conn.execute(
            update(events_t)
            .where(events_t.c.idempotency_key.not_in(late_keys))
            .values(received_at=datetime(2026, 10, 31, 12, tzinfo=UTC))
        )
        conn.execute(
            update(events_t)
            .where(events_t.c.idempotency_key.in_(late_keys))
            .values(received_at=datetime(2026, 11, 3, 9, tzinfo=UTC))
        )
    finalize_month(cli)
    lines = billed_lines(engine, PERIOD)
    rows = baseline_rows(lines)
    for row in rows:
        if row[0] == "c001" and row[2] == "api_calls":  # 10 of the 14 calls
            row[3], row[4] = "10", "0.10"
        if row[0] == "c002" and row[2] == "api_calls":  # lost 2 calls, none of them late
            row[3], row[4] = "8", "0.08"
        if row[0] == "c003":  # a cent per line
            row[4] = str(Decimal(row[4]) + CENT)
    baseline = write_csv(tmp_path / "legacy.csv", COLUMNS, rows)
    report = expect(cli, 0, "compare", str(baseline), "--period", PERIOD, "--tolerance", "0")
    reasons = {d["customer"]: (d["reason"], d["difference"]) for d in report["differences"]}
    assert reasons == {
        "c001": ("late_event", "0.04"),
        "c002": ("other", "0.02"),
        "c003": ("rounding", "-0.02"),
    }
    late = next(d for d in report["differences"] if d["customer"] == "c001")["lines"]
    assert [(x["neruba"]["quantity"], x["baseline"]["quantity"]) for x in late] == [("14", "10")]


# --------------------------------------------------------------------------- Stripe


def test_compare_stripe_finds_an_amount_changed_in_stripe(
    cli: Cli,
    tmp_path: Path,
    stripe: FakeStripe,
) -> None:
    subscribed_shop(cli, tmp_path, 6, CATALOG, digits=3, usage={"c002": 4})
    ok(cli, "credits", "grant", "c004", "5.00")  # a "Credits applied" item: not a charge
    finalize_month(cli)
    assert ok(cli, "stripe", "push", "--period", PERIOD)["failed"] == 0
    ok(cli, "stripe", "pull")
    clean = ok(cli, "compare", "stripe", "--period", PERIOD)
    assert (clean["summary"]["customers"], clean["summary"]["differences"]) == (6, 0)
    assert clean["summary"]["baseline"] == "stripe"

    invoice = next(
        i for i in stripe.objects("invoice") if i["metadata"]["neruba_customer"] == "c003"
    )
    stripe.set_invoice_total(invoice["id"], invoice["total"] + 150)
    ok(cli, "stripe", "pull")
    report = expect(cli, 4, "compare", "stripe", "--period", PERIOD, "--fail-over", "1.00")
    (found,) = report["differences"]
    assert (found["customer"], found["status"], found["difference"]) == (
        "c003",
        "amount_differs",
        "-1.50",
    )
    assert found["reason"] == "other" and found["baseline"]["documents"] == [invoice["id"]]
    (line,) = found["lines"]
    assert line["line"] == "(not itemized in the Stripe mirror)" and line["difference"] == "-1.50"
    assert report["summary"]["currencies"]["USD"]["drift"] == "1.50"
    assert any(invoice["id"] in note for note in report["summary"]["notes"])
    assert expect(cli, 2, "compare", "stripe", "--period", PERIOD, "--preset", "stripe")


# --------------------------------------------------------------------------- CSV formats


def test_csv_columns_map_presets_periods_and_invoices(sqlite_cli: Cli, tmp_path: Path) -> None:
    cli = sqlite_cli
    subscribed_shop(cli, tmp_path, 2, CATALOG, digits=3)
    finalize_month(cli)
    shown = ok(cli, "invoice", "list", "--period", PERIOD)
    amounts = {row["customer"]: row["total"] for row in shown}
    # --map: other column names; rows of other months are left out
    mapped = write_csv(
        tmp_path / "mapped.csv",
        ["Account", "Month", "Item", "Total", "Ccy"],
        [
            ["c001", "2026-10", FEE, amounts["c001"], "usd"],
            ["c002", "2026-10", FEE, amounts["c002"], ""],
            ["c002", "2026-09", FEE, "49.00", "USD"],
        ],
    )
    report = expect(
        cli,
        0,
        "compare",
        str(mapped),
        "--period",
        PERIOD,
        "--map",
        "customer=Account",
        "--map",
        "period=Month",
        "--map",
        "description=Item",
        "--map",
        "amount=Total",
        "--map",
        "currency=Ccy",
    )
    assert report["summary"]["differences"] == 0 and report["summary"]["matched"] == 2
    assert report["summary"]["notes"] == [
        "1 row(s) of mapped.csv belong to other periods and were left out"
    ]
    # --preset stripe: Stripe's export columns, the Stripe customer id, the invoice's period
    ok(cli, "customer", "create", "c900", "--stripe-id", "cus_Legacy900")
    exported = write_csv(
        tmp_path / "stripe-export.csv",
        [
            "Invoice Line Item ID",
            "Invoice ID",
            "Customer ID",
            "Description",
            "Amount",
            "Currency",
            "Quantity",
            "Period Start (UTC)",
            "Period End (UTC)",
        ],
        [
            [
                "il_1",
                "in_1",
                "c001",
                FEE,
                amounts["c001"],
                "usd",
                "1",
                "2026-10-01 00:00",
                "2026-11-01 00:00",
            ],
            [
                "il_2",
                "in_2",
                "c002",
                FEE,
                amounts["c002"],
                "usd",
                "1",
                "2026-10-02 00:00",
                "2026-11-01 00:00",
            ],
            [
                "il_3",
                "in_2",
                "c002",
                "Next month in advance",
                "49.00",
                "usd",
                "1",
                "2026-11-01 00:00",
                "2026-12-01 00:00",
            ],
            [
                "il_4",
                "in_3",
                "cus_Legacy900",
                "Legacy plan",
                "12.00",
                "usd",
                "1",
                "2026-10-01 00:00",
                "2026-11-01 00:00",
            ],
        ],
    )
    report = expect(cli, 0, "compare", str(exported), "--period", PERIOD, "--preset", "stripe")
    found = {d["customer"]: d for d in report["differences"]}
    assert set(found) == {"c002", "c900"}  # the advance line belongs to in_2, an October invoice
    assert found["c900"]["status"] == "only_in_baseline"
    assert found["c900"]["baseline"]["known"] is True
    assert found["c002"]["lines"][0]["line"] == "Next month in advance"
    assert found["c002"]["baseline"]["documents"] == ["in_2"]


def test_bad_baselines_name_the_file_and_the_lines(sqlite_cli: Cli, tmp_path: Path) -> None:
    cli = sqlite_cli
    subscribed_shop(cli, tmp_path, 1, CATALOG, digits=3)
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "customer,description,amount,currency\n"
        "c001,Fee,12.00,USD\n"
        "c001,Fee,twelve,USD\n"
        ",Fee,1.00,USD\n"
        "c001,Fee,1.00,XYZ\n"
        "c001,Fee\n"
    )
    error = expect(cli, 1, "compare", str(bad), "--period", PERIOD)
    assert error["type"] == "invalid_input"
    message = error["message"]
    assert message.startswith(f"{bad}: 4 bad line(s): line 3: amount: 'twelve' is not a decimal")
    assert "line 4: customer is empty" in message and "line 5: unknown currency 'XYZ'" in message
    assert "line 6: 2 fields, the header has 4" in message
    missing = write_csv(tmp_path / "missing.csv", ["customer", "price"], [["c001", "1"]])
    error = expect(cli, 1, "compare", str(missing), "--period", PERIOD)
    assert "line 1: no column for amount, description (or meter)" in error["message"]
    assert "--map amount=COLUMN" in error["hint"]
    mixed = write_csv(
        tmp_path / "mixed.csv",
        ["customer", "description", "amount", "currency"],
        [["c001", "a", "1.00", "USD"], ["c001", "b", "1.00", "EUR"]],
    )
    error = expect(cli, 1, "compare", str(mixed), "--period", PERIOD)
    assert "line 3: c001 is billed in EUR here and in USD on line 2" in error["message"]
    bad_period = write_csv(
        tmp_path / "p.csv",
        ["customer", "period", "description", "amount"],
        [["c001", "October", "a", "1.00"]],
    )
    assert (
        "line 2: period 'October'"
        in expect(cli, 1, "compare", str(bad_period), "--period", PERIOD)["message"]
    )
    (tmp_path / "binary.csv").write_bytes(b"customer,description,amount\nc001,\xff,1\n")
    assert (
        "binary.csv: line 2: not UTF-8"
        in expect(cli, 1, "compare", str(tmp_path / "binary.csv"), "--period", PERIOD)["message"]
    )
    assert "cannot read" in expect(cli, 1, "compare", "nope.csv", "--period", PERIOD)["message"]
    good = write_csv(tmp_path / "good.csv", ["customer", "description", "amount"], [])
    assert expect(cli, 2, "compare", str(good), "--period", PERIOD, "--by", "meter")
    assert expect(cli, 2, "compare", str(good), "--period", PERIOD, "--map", "price=Total")
    assert expect(cli, 2, "compare", str(good), "--period", PERIOD, "--preset", "chargebee")
    assert (
        "--fail-over"
        in expect(cli, 2, "compare", str(good), "--period", PERIOD, "--fail-over", "lots")[
            "message"
        ]
    )
    assert (
        "--tolerance"
        in expect(cli, 2, "compare", str(good), "--period", PERIOD, "--tolerance", "-1")["message"]
    )
    (tmp_path / "taken").write_text("a file")
    assert (
        "not a folder"
        in expect(
            cli, 1, "compare", str(good), "--period", PERIOD, "--output", str(tmp_path / "taken")
        )["message"]
    )


# --------------------------------------------------------------------------- the HTML report


def test_invoice_dated_files_mixed_currencies_and_formula_cells(
    sqlite_cli: Cli, tmp_path: Path
) -> None:
    cli = sqlite_cli
    subscribed_shop(cli, tmp_path, 2, CATALOG, digits=3)
    finalize_month(cli)
    amounts = {row["customer"]: row["total"] for row in ok(cli, "invoice", "list")}
    # only an invoice date: October's invoices dated 2026-11-01 must not all vanish silently
    dated = write_csv(
        tmp_path / "dated.csv",
        ["customer", "invoice_date", "description", "amount"],
        [["c001", "2026-11-01", FEE, amounts["c001"]], ["c002", "2026-11-01", FEE, "1.00"]],
    )
    message = expect(cli, 1, "compare", str(dated), "--period", PERIOD)["message"]
    assert "dated.csv" in message and "2026-11" in message and "period" in message
    # formula-like text gets a leading ', amounts (negative ones too) stay numbers
    tricky = write_csv(
        tmp_path / "tricky.csv",
        ["customer", "description", "amount"],
        [
            ["c001", FEE, amounts["c001"]],
            ["c001", "=HYPERLINK(1)", "-12.50"],
            ["c002", FEE, amounts["c002"]],
            ["=cmd", "@x", "3.00"],
        ],
    )
    expect(cli, 0, "compare", str(tricky), "--period", PERIOD, "--output", str(tmp_path / "out"))
    lines = {row["line"]: row for row in read_csv(tmp_path / "out" / "lines.csv")}
    assert set(lines) == {"'=HYPERLINK(1)", "'@x"}
    assert lines["'=HYPERLINK(1)"]["baseline_amount"] == "-12.50"
    assert lines["'=HYPERLINK(1)"]["difference"] == "12.50"
    assert lines["'@x"]["customer"] == "'=cmd"
    customers = {row["customer"]: row for row in read_csv(tmp_path / "out" / "customers.csv")}
    assert customers["'=cmd"]["difference"] == "-3.00"
    # one customer's documents in two currencies are never added up
    assert cli.db_url is not None
    engine = create_db_engine(cli.db_url)
    with engine.begin() as conn:
        c001 = conn.execute(select(Customer.id).where(Customer.external_id == "c001")).scalar()
        conn.execute(
            update(Invoice)
            .where(Invoice.customer_id != c001, Invoice.period == PERIOD)
            .values(customer_id=c001, currency="EUR", revision=99)
        )
    engine.dispose()
    message = expect(cli, 1, "compare", str(tricky), "--period", PERIOD)["message"]
    assert "c001" in message and "EUR" in message and "USD" in message


def png_colours(path: Path) -> tuple[int, int, set[bytes]]:
    """Width, height and the colours of a sample of pixels of an 8-bit RGB(A) PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, idat = 8, b""
    width = height = colour_type = 0
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour_type = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour_type in (2, 6)
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    size = 4 if colour_type == 6 else 3
    stride = width * size
    high = int.from_bytes(b"\x80" * stride, "big")
    previous = bytearray(stride)
    colours: set[bytes] = set()
    for y in range(height):
        kind = raw[y * (stride + 1)]
        row = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if kind == 2:  # "up", the usual one: every byte plus the byte above, mod 256 at once
            a, b = int.from_bytes(row, "big"), int.from_bytes(previous, "big")
            total = ((a & ~high) + (b & ~high)) ^ ((a ^ b) & high)
            row = bytearray(total.to_bytes(stride, "big"))
        elif kind in (1, 3, 4):
            for i in range(stride):
                left = row[i - size] if i >= size else 0
                up, corner = previous[i], previous[i - size] if i >= size else 0
                if kind == 1:
                    row[i] = (row[i] + left) & 255
                elif kind == 3:
                    row[i] = (row[i] + (left + up) // 2) & 255
                else:
                    guess = left + up - corner
                    nearest = min(
                        (abs(guess - left), 0, left),
                        (abs(guess - up), 1, up),
                        (abs(guess - corner), 2, corner),
                    )
                    row[i] = (row[i] + nearest[2]) & 255
        if y % 5 == 0:
            colours.update(bytes(row[x : x + 3]) for x in range(0, stride, size * 3))
        previous = row
    return width, height, colours


def test_the_html_report_renders_in_headless_chromium(sqlite_cli: Cli, tmp_path: Path) -> None:
    require_chromium()
    cli = sqlite_cli
    subscribed_shop(cli, tmp_path, 12, CATALOG, digits=3)
    finalize_month(cli)
    rows = [[c, FEE, "", "", "49.00", "USD"] for c in (f"c{n:03d}" for n in range(1, 12))]
    baseline = write_csv(tmp_path / "legacy.csv", COLUMNS, rows)
    out = tmp_path / "report"
    report = expect(
        cli,
        4,
        "compare",
        str(baseline),
        "--period",
        PERIOD,
        "--output",
        str(out),
        "--fail-over",
        "1%",
    )
    summary = report["summary"]
    page = (out / "report.html").resolve().as_uri()
    profile = f"--user-data-dir={tmp_path / 'chromium-profile'}"
    dom = chromium(profile, "--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    usd = summary["currencies"]["USD"]
    for text in (
        f"{summary['match_rate']}%",
        f">{summary['customers']}<",
        usd["drift"],
        f"{usd['drift_percent']}%",
        usd["p95_drift"],
        "Drift by customer",
        "Drift exceeds --fail-over 1%.",
        'id="drift-chart"',
        "c012",
    ):
        assert text in dom.stdout, text
    assert dom.stdout.count("<rect") == summary["differences"] + 3  # bars and legend
    shot = tmp_path / "out.png"
    done = chromium(profile, f"--screenshot={shot}", "--window-size=1280,2000", page)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    width, height, colours = png_colours(shot)
    assert (width, height) == (1280, 2000)
    assert len(colours) > 20, "the screenshot is blank"
    assert bytes.fromhex("2471a3") in colours  # a bar: the baseline billed more


# --------------------------------------------------------------------------- the demo


def test_the_demo_ends_with_a_comparison_that_differs_on_purpose(
    bare_cli: Cli, isolated: Path
) -> None:
    shipped = ROOT / "neruba_cli" / "resources" / "demo-baseline.csv"
    assert shipped.read_bytes() == (ROOT / "examples" / "demo-baseline.csv").read_bytes()
    result = bare_cli("demo", "--dir", "demo-out", "--json")
    assert result.exit_code == 0, result.stderr
    demo = result.json()
    compared = demo["compare"]
    assert (compared["customers"], compared["matched"], compared["differences"]) == (3, 0, 3)
    assert compared["reasons"] == {
        "late_event": 1,
        "missing_customer": 1,
        "missing_price_mapping": 1,
    }
    reasons = {item["customer"]: item["reason"] for item in compared["largest"]}
    assert reasons == {
        "cus_acme": "late_event",
        "cus_initech": "missing_price_mapping",
        "cus_globex": "missing_customer",
    }
    step = demo["steps"][-2]
    assert step.startswith("compared ") and "demo-baseline.csv" in step and "report.html" in step
    assert demo["steps"][-1].startswith("checked the ledger: consistent")
    folder = isolated / "demo-out" / "compare"
    assert sorted(p.name for p in folder.iterdir()) == [
        "customers.csv",
        "lines.csv",
        "report.html",
        "summary.json",
    ]
    again = bare_cli(
        "compare",
        str(isolated / "demo-out" / "demo-baseline.csv"),
        "--period",
        compared["period"],
        "--db",
        demo["database"],
        "--project",
        "demo",
        "--json",
    )
    assert again.exit_code == 0 and again.json()["summary"] == compared
