"""report.html: a comparison report a finance reviewer opens in any browser.

Pure: the report's dict forms (summary.json, the customers and the lines) in, one HTML string
out. Self-contained: inline CSS and an inline SVG bar chart, no scripts, no fonts or images
from anywhere, so it renders the same offline, from a mail attachment or an archive. Every
value from the data is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from html import escape
from typing import Any

CHART_BARS = 40  # the customers with the most drift; the tables list every one
CHART_WIDTH = 960
LABEL_WIDTH = 190
VALUE_WIDTH = 250
BAR_HEIGHT = 18
BAR_GAP = 6

POSITIVE = "#c0392b"  # ours billed more
NEGATIVE = "#2471a3"  # theirs billed more
NEUTRAL = "#7d3c98"  # the currencies differ: no sign to show

REASON_TEXT = {
    "rounding": "within one minor unit per line: rounding",
    "proration": "a base fee off by a whole number of days of the period",
    "late_event": "usage that arrived after the period ended",
    "missing_price_mapping": "a line only one side has (a price or charge not mapped)",
    "missing_customer": "the customer is on one side only",
    "currency_mismatch": "the two sides bill in different currencies",
    "other": "none of the above: look at the lines",
    "price_change": "the candidate catalog prices the line differently",
    "new_charge": "the candidate catalog adds the line",
    "dropped_charge": "the candidate catalog drops the line",
    "new_customer": "the candidate catalog bills a customer nothing was issued to",
}

_STYLE = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1b1f23;
       margin: 24px 32px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.sub { color: #57606a; margin: 0 0 18px; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; }
.card { border: 1px solid #d0d7de; border-radius: 6px; padding: 10px 14px; min-width: 150px; }
.card .n { font-size: 22px; font-weight: 600; } .card .l { color: #57606a; font-size: 12px; }
table { border-collapse: collapse; margin: 6px 0 12px; }
th, td { border-bottom: 1px solid #d8dee4; padding: 4px 10px; text-align: left;
         vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; } td.num, th.num { text-align: right;
     font-variant-numeric: tabular-nums; white-space: nowrap; }
.pos { color: #c0392b; } .neg { color: #2471a3; } .ok { color: #1a7f37; }
.bad { color: #c0392b; font-weight: 600; }
.status { white-space: nowrap; } .muted { color: #57606a; }
details summary { cursor: pointer; margin: 8px 0; }
svg text { font: 12px -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
"""


def render(
    summary: Mapping[str, Any],
    customers: Sequence[Mapping[str, Any]],
    lines: Sequence[Mapping[str, Any]],
) -> str:
    """The whole document. `customers` are every compared customer (dict form), `lines` the
    lines that differ."""
    ours, theirs = summary["sides"]
    title = f"Neruba {summary['kind']}: {summary['period']}"
    if summary.get("catalog"):
        title += f" on {summary['catalog']}"
    differing = [c for c in customers if c["status"] != "matched"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">{_e(ours)} against {_e(theirs)} ({_e(summary["baseline"])}); '
        f"tolerance {_e(summary['tolerance'])} per customer; differences are "
        f"{_e(ours)} − {_e(theirs)}.</p>",
        _cards(summary),
        _currencies(summary, ours, theirs),
        _verdict(summary),
        "<h2>Drift by customer</h2>",
        _chart(differing, ours, theirs),
        f"<h2>Differences ({len(differing)})</h2>",
        _customer_table(differing, ours, theirs, "differences"),
        f"<h2>Lines that differ ({len(lines)})</h2>",
        _line_table(lines, ours, theirs),
        _reasons(summary),
        f"<details><summary>All {len(customers)} customers</summary>",
        _customer_table(customers, ours, theirs, "customers"),
        "</details>",
        _notes(summary),
        "</body></html>",
    ]
    return "\n".join(part for part in parts if part) + "\n"


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _cards(summary: Mapping[str, Any]) -> str:
    match_rate = summary["match_rate"]
    cards = [
        ("customers", summary["customers"], "customers compared"),
        ("matched", summary["matched"], "matched"),
        ("differences", summary["differences"], "differences"),
        ("match_rate", "—" if match_rate is None else f"{match_rate}%", "match rate"),
    ]
    cells = "".join(
        f'<div class="card" data-key="{key}"><div class="n">{_e(value)}</div>'
        f'<div class="l">{_e(label)}</div></div>'
        for key, value, label in cards
    )
    return f'<section id="summary"><div class="cards">{cells}</div></section>'


def _currencies(summary: Mapping[str, Any], ours: str, theirs: str) -> str:
    heads = (
        "currency",
        "customers",
        f"{ours} total",
        f"{theirs} total",
        "net difference",
        "drift",
        "drift %",
        "p50 drift",
        "p95 drift",
        "tolerated",
    )
    rows = []
    for code, data in summary["currencies"].items():
        net = data["net_difference"]
        rows.append(
            "<tr>"
            f"<td>{_e(code)}</td>"
            f'<td class="num">{_e(data["customers"])}</td>'
            f'<td class="num">{_e(data[f"{ours}_total"])}</td>'
            f'<td class="num">{_e(data[f"{theirs}_total"])}</td>'
            f'<td class="num {_sign(net)}">{_e(_signed(net))}</td>'
            f'<td class="num" data-key="drift-{_e(code)}">{_e(data["drift"])}</td>'
            f'<td class="num">{_e(_pct(data["drift_percent"]))}</td>'
            f'<td class="num">{_e(data["p50_drift"])}</td>'
            f'<td class="num">{_e(data["p95_drift"])}</td>'
            f'<td class="num">{_e(data["tolerated"])}</td>'
            "</tr>"
        )
    if not rows:
        return '<p class="muted">Nothing to compare: neither side billed anything.</p>'
    head = "".join(
        f'<th class="{"" if i == 0 else "num"}">{_e(h)}</th>' for i, h in enumerate(heads)
    )
    return f'<table id="currencies"><tr>{head}</tr>{"".join(rows)}</table>'


def _verdict(summary: Mapping[str, Any]) -> str:
    threshold = summary.get("fail_over")
    if threshold is None:
        return ""
    if summary["fail_over_exceeded"]:
        return f'<p class="bad">Drift exceeds --fail-over {_e(threshold)}.</p>'
    return f'<p class="ok">Drift is within --fail-over {_e(threshold)}.</p>'


def _number(text: Any) -> Decimal | None:
    if text is None:
        return None
    try:
        return Decimal(str(text))
    except InvalidOperation:
        return None


def _sign(text: Any) -> str:
    value = _number(text)
    if value is None or value == 0:
        return ""
    return "pos" if value > 0 else "neg"


def _signed(text: Any) -> str:
    value = _number(text)
    if value is None:
        return "—"
    return f"+{text}" if value > 0 else str(text)


def _pct(text: Any) -> str:
    return "—" if text is None else f"{text}%"


def _chart(customers: Sequence[Mapping[str, Any]], ours: str, theirs: str) -> str:
    """Horizontal bars of drift, largest first, coloured by the sign of the difference (each
    customer's amount is in its own currency)."""
    shown = [c for c in customers if (_number(c["drift"]) or 0) > 0][:CHART_BARS]
    if not shown:
        return '<p class="ok">No drift: every customer matched.</p>'
    largest = max(_number(c["drift"]) or Decimal(0) for c in shown)
    span = CHART_WIDTH - LABEL_WIDTH - VALUE_WIDTH
    height = len(shown) * (BAR_HEIGHT + BAR_GAP) + BAR_GAP + 22
    items = []
    for index, customer in enumerate(shown):
        drift = _number(customer["drift"]) or Decimal(0)
        width = max(int(drift / largest * span), 1)
        y = BAR_GAP + index * (BAR_HEIGHT + BAR_GAP)
        difference = _number(customer["difference"])
        colour = NEUTRAL if difference is None else POSITIVE if difference > 0 else NEGATIVE
        label = customer["customer"]
        value = f"{_signed(customer['difference'])} {customer['currency']}"
        if difference is None:
            value = f"{customer['drift']} {customer['currency']} at stake"
        value += f" · {customer['reason'] or customer['status']}"
        items.append(
            f'<text x="{LABEL_WIDTH - 8}" y="{y + 13}" text-anchor="end">{_e(label)}</text>'
            f'<rect x="{LABEL_WIDTH}" y="{y}" width="{width}" height="{BAR_HEIGHT}" '
            f'fill="{colour}"><title>{_e(label)}: {_e(value)}</title></rect>'
            f'<text x="{LABEL_WIDTH + width + 6}" y="{y + 13}">{_e(value)}</text>'
        )
    legend_y = height - 8
    legend = (
        f'<rect x="{LABEL_WIDTH}" y="{legend_y - 10}" width="10" height="10" fill="{POSITIVE}"/>'
        f'<text x="{LABEL_WIDTH + 14}" y="{legend_y}">{_e(ours)} billed more</text>'
        f'<rect x="{LABEL_WIDTH + 170}" y="{legend_y - 10}" width="10" height="10" '
        f'fill="{NEGATIVE}"/>'
        f'<text x="{LABEL_WIDTH + 184}" y="{legend_y}">{_e(theirs)} billed more</text>'
        f'<rect x="{LABEL_WIDTH + 350}" y="{legend_y - 10}" width="10" height="10" '
        f'fill="{NEUTRAL}"/>'
        f'<text x="{LABEL_WIDTH + 364}" y="{legend_y}">currencies differ</text>'
    )
    more = len([c for c in customers if (_number(c["drift"]) or 0) > 0]) - len(shown)
    note = f'<p class="muted">… and {more} more in the table below.</p>' if more > 0 else ""
    return (
        f'<svg id="drift-chart" xmlns="http://www.w3.org/2000/svg" width="{CHART_WIDTH}" '
        f'height="{height}" viewBox="0 0 {CHART_WIDTH} {height}" role="img" '
        f'aria-label="Drift by customer">{"".join(items)}{legend}</svg>{note}'
    )


def _customer_table(
    customers: Sequence[Mapping[str, Any]], ours: str, theirs: str, table_id: str
) -> str:
    if not customers:
        return '<p class="ok">None.</p>'
    head = (
        "<tr><th>customer</th><th>status</th><th>reason</th>"
        f'<th class="num">{_e(ours)}</th><th class="num">{_e(theirs)}</th>'
        '<th class="num">difference</th><th class="num">drift</th><th>currency</th></tr>'
    )
    rows = []
    for c in customers:
        mine, other = c[ours], c[theirs]
        status_class = "ok" if c["status"] == "matched" else "bad"
        rows.append(
            "<tr>"
            f"<td>{_e(c['customer'])}</td>"
            f'<td class="status {status_class}">{_e(c["status"])}</td>'
            f"<td>{_e(c['reason'] or '')}</td>"
            f'<td class="num">{_e(_side_total(mine))}</td>'
            f'<td class="num">{_e(_side_total(other))}</td>'
            f'<td class="num {_sign(c["difference"])}">{_e(_signed(c["difference"]))}</td>'
            f'<td class="num">{_e(c["drift"])}</td>'
            f"<td>{_e(c['currency'])}</td>"
            "</tr>"
        )
    return f'<table id="{table_id}">{head}{"".join(rows)}</table>'


def _side_total(side: Mapping[str, Any] | None) -> str:
    if side is None:
        return "—"
    return f"{side['total']} {side['currency']}"


def _line_table(lines: Sequence[Mapping[str, Any]], ours: str, theirs: str) -> str:
    if not lines:
        return '<p class="ok">None.</p>'
    head = (
        "<tr><th>customer</th><th>line</th><th>status</th><th>reason</th>"
        f'<th class="num">{_e(ours)} qty</th><th class="num">{_e(theirs)} qty</th>'
        f'<th class="num">{_e(ours)}</th><th class="num">{_e(theirs)}</th>'
        '<th class="num">difference</th></tr>'
    )
    rows = []
    for line in lines:
        mine, other = line[ours] or {}, line[theirs] or {}
        rows.append(
            "<tr>"
            f"<td>{_e(line['customer'])}</td>"
            f"<td>{_e(line['line'])}</td>"
            f'<td class="status">{_e(line["status"])}</td>'
            f"<td>{_e(line['reason'] or '')}</td>"
            f'<td class="num">{_e(mine.get("quantity") or "")}</td>'
            f'<td class="num">{_e(other.get("quantity") or "")}</td>'
            f'<td class="num">{_e(mine.get("amount") or "—")}</td>'
            f'<td class="num">{_e(other.get("amount") or "—")}</td>'
            f'<td class="num {_sign(line["difference"])}">{_e(_signed(line["difference"]))}</td>'
            "</tr>"
        )
    return f'<table id="lines">{head}{"".join(rows)}</table>'


def _reasons(summary: Mapping[str, Any]) -> str:
    if not summary["reasons"]:
        return ""
    rows = "".join(
        f'<tr><td>{_e(reason)}</td><td class="num">{_e(count)}</td>'
        f"<td>{_e(REASON_TEXT.get(reason, ''))}</td></tr>"
        for reason, count in summary["reasons"].items()
    )
    return (
        "<h2>Probable reasons</h2>"
        '<table id="reasons"><tr><th>reason</th><th class="num">customers</th>'
        f"<th>meaning</th></tr>{rows}</table>"
    )


def _notes(summary: Mapping[str, Any]) -> str:
    notes = summary.get("notes") or []
    if not notes:
        return ""
    items = "".join(f"<li>{_e(note)}</li>" for note in notes)
    return f"<h2>Notes</h2><ul>{items}</ul>"
