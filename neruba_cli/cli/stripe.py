"""`neruba stripe push|pull|webhook ingest|webhook list|webhook reprocess`"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.text import Text

from neruba_cli.cli import values
from neruba_cli.cli.help import NerubaGroup
from neruba_cli.cli.output import plural, table
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.timestamps import parse_ts
from neruba_cli.domain.webhook_signature import DEFAULT_TOLERANCE, SECRET_ENV, parse_secrets
from neruba_cli.services.invoices import read as invoices_read
from neruba_cli.services.stripe import pull as stripe_pull
from neruba_cli.services.stripe import push as stripe_push
from neruba_cli.services.stripe import webhooks as stripe_webhooks
from neruba_cli.services.stripe.gateway import Gateway
from neruba_cli.services.stripe.webhooks import Delivery

EXIT_REJECTED = 3

app = typer.Typer()
webhook_app = typer.Typer()
app.add_typer(
    webhook_app,
    name="webhook",
    help="Stripe webhook deliveries: verify, apply, retry.",
    cls=NerubaGroup,
    no_args_is_help=True,
)

_ACTION_STYLE = {"failed": "red", "created": "green", "recreated": "yellow", "replaced": "yellow"}
# What a dry run says it would do (the JSON keeps the action names).
_WOULD = {
    "created": "would create",
    "recreated": "would recreate",
    "replaced": "would replace",
    "resumed": "would resume",
    "voided": "would void",
    "skipped": "would skip",
}


def _action(action: str, *, dry_run: bool) -> str:
    shown = _WOULD.get(action, action) if dry_run else action
    return shown.replace("_", " ")  # up_to_date


@command(app, "push", group="stripe", scope="billing", mutating=True)
def push(
    rt: Runtime,
    period: Annotated[str, typer.Option(help="YYYY-MM, previous or current."), values.MONTH],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be pushed; Stripe is not called.")
    ] = False,
    replace: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NUMBER",
            help="Void this invoice's Stripe invoice and push it anew (repeatable), e.g. after "
            "it was changed in Stripe.",
        ),
    ] = None,
) -> int:
    """Finalized invoices of the period → Stripe invoices (one item per line), finalized.
    Safe to repeat or resume: nothing is created twice. Exit 3 when Stripe refused some."""
    project = rt.read_project()
    label = invoices_read.period_label(period, project, rt.now())
    with ExitStack() as stack:
        report = stripe_push.push(
            rt.engine(),
            project,
            label,
            gateway=Gateway.from_environment,
            dry_run=dry_run,
            replace=replace or (),
            now=rt.now(),
            progress=lambda total: stack.enter_context(rt.out.progress("Pushing to Stripe", total)),
        )
    data = report.as_dict()
    errors = any(item["error"] for item in data["outcomes"])
    columns = ("invoice", "kind", "action", "stripe", "total", "error")[: 6 if errors else 5]
    rows = [
        (
            item["invoice"],
            item["kind"],
            Text(
                _action(item["action"], dry_run=dry_run),
                style=_ACTION_STYLE.get(item["action"], ""),
            ),
            item["stripe_id"] or "",
            f"{item['total']} {item['currency']}" if item["total"] else "",
            item["error"] or "",
        )[: len(columns)]
        for item in data["outcomes"]
    ]
    title = f"Stripe push {label}" + (" (dry run)" if dry_run else "")
    rt.out.emit(data, table(title, columns, rows, empty=f"No finalized invoices of {label}."))
    counts = ", ".join(
        f"{count} {_action(action, dry_run=dry_run)}"
        for action, count in sorted(data["counts"].items())
    )
    rt.out.say(f"{plural(len(rows), 'invoice')}: {counts or 'nothing to push'}.")
    if report.failed:
        rt.out.warn(f"{report.failed} invoices were refused by Stripe; see the errors above")
        return EXIT_REJECTED
    return 0


@command(app, "pull", group="stripe", scope="billing", mutating=True)
def pull(
    rt: Runtime,
    since: Annotated[
        str | None,
        typer.Option(metavar="TS", help="Only objects created at or after this time (RFC 3339)."),
        values.TIMESTAMP,
    ] = None,
    apply: Annotated[
        bool,
        typer.Option(
            "--apply/--no-apply", help="Record Stripe payments and refunds in the ledger."
        ),
    ] = True,
) -> int:
    """Mirror Stripe invoices, invoice payments, payment intents, charges, refunds and credit
    notes; apply Stripe payments and refunds to the invoices. Resumes an interrupted pull."""
    project = rt.read_project()
    with rt.out.progress("Pulling from Stripe") as bar:
        seen: dict[str, int] = {}

        def advance(kind: str, count: int) -> None:
            seen[kind] = count
            bar(sum(seen.values()))

        report = stripe_pull.pull(
            rt.engine(),
            project,
            gateway=Gateway.from_environment,
            since=parse_ts(since, field="--since") if since else None,
            actor=rt.actor.id,
            now=rt.now(),
            apply=apply,
            progress=advance,
        )
    data = report.as_dict()
    rows = [
        (kind, str(count), str(data["deleted"].get(kind, 0)))
        for kind, count in data["objects"].items()
    ]

    def render(console: Console) -> None:
        table("Stripe pull", ("object", "seen", "gone from Stripe"), rows)(console)
        for message in data["applied"]:
            console.print(Text("applied: ", style="green") + Text(message))

    rt.out.emit(data, render)
    if report.resumed:
        rt.out.say(f"Resumed the interrupted pull of {', '.join(report.resumed)}.")
    for error in report.errors:
        rt.out.warn(error)
    return EXIT_REJECTED if report.errors else 0


@command(webhook_app, "ingest", group="stripe webhook", scope="billing", mutating=True)
def webhook_ingest(
    rt: Runtime,
    file: Annotated[
        str,
        typer.Argument(
            help='The raw body (with --signature), or JSONL of {"headers", "body"}; - for stdin.'
        ),
    ],
    signature: Annotated[
        str | None,
        typer.Option(metavar="HEADER", help="The Stripe-Signature header of a single raw body."),
    ] = None,
    tolerance: Annotated[
        int,
        typer.Option(metavar="SECONDS", help="Seconds a signature may be old (or ahead).", min=0),
    ] = DEFAULT_TOLERANCE,
) -> int:
    """Verify deliveries against STRIPE_WEBHOOK_SECRET (comma-separated for rotation), store
    each event once, apply it. A refused single delivery (forged, stale, not JSON) exits 1; a
    batch exits 3 when some deliveries were refused or failed to apply."""
    project = rt.read_project()
    secrets = parse_secrets(os.environ.get(SECRET_ENV))
    raw = _read(file)
    where = "stdin" if file == "-" else file
    deliveries = (
        [Delivery(raw, signature, where)] if signature is not None else list(_batch(raw, where))
    )
    report = stripe_webhooks.ingest(
        rt.engine(),
        project,
        deliveries,
        secrets=secrets,
        tolerance=tolerance,
        actor=rt.actor.id,
        now=rt.now(),
        strict=signature is not None,
    )
    data = report.as_dict()
    rows = [(e["event"], e["type"], e["result"], e["note"] or "") for e in data["events"]]
    rejected = [(r["where"], r["error"]) for r in data["rejected"]]

    def render(console: Console) -> None:
        if rows:
            table("Webhook events", ("event", "type", "result", "note"), rows)(console)
        if rejected:
            table("Refused deliveries", ("where", "why"), rejected)(console)

    rt.out.emit(data, render)
    counts = data["counts"]
    rt.out.say(", ".join(f"{count} {name}" for name, count in counts.items() if count) or "none")
    return EXIT_REJECTED if report.rejected or counts["failed"] else 0


def _read(file: str) -> bytes:
    if file == "-":
        return sys.stdin.buffer.read()
    path = Path(file)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {file}: {exc.strerror or exc}") from None


def _batch(raw: bytes, where: str) -> Iterator[Delivery]:
    """JSONL: one delivery per line, `{"headers": {...}, "body": "<raw body>"}`; the body is
    a string so the bytes Stripe signed survive (re-serialising JSON would change them)."""
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        place = f"{where}:{number}"
        try:
            item: Any = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield Delivery(b"", None, place, problem=f"the line is not JSON ({exc})")
            continue
        headers = item.get("headers") if isinstance(item, dict) else None
        body = item.get("body") if isinstance(item, dict) else None
        if not isinstance(headers, dict) or not isinstance(body, str):
            problem = 'expected {"headers": {...}, "body": "<raw body>"}'
            yield Delivery(b"", None, place, problem=problem)
            continue
        signature = next(
            (str(value) for key, value in headers.items() if key.lower() == "stripe-signature"),
            None,
        )
        yield Delivery(body.encode(), signature, place)


@command(webhook_app, "list", group="stripe webhook", scope="read")
def webhook_list(
    rt: Runtime,
    status: Annotated[
        str | None,
        typer.Option(help="received | processed | ignored | failed"),
        values.one_of(stripe_webhooks.STATUSES),
    ] = None,
) -> None:
    """Stored webhook events, oldest first."""
    with rt.transaction() as session:
        project = rt.project(session)
        data = stripe_webhooks.list_events(session.connection(), project, status=status)
    columns = ("event", "type", "status", "attempts", "received_at", "error")
    shown = [[item[c] for c in columns] for item in data]
    rt.out.emit(data, table(None, columns, shown, empty="No webhook events."))


@command(webhook_app, "reprocess", group="stripe webhook", scope="billing", mutating=True)
def webhook_reprocess(
    rt: Runtime,
    events: Annotated[
        list[str] | None,
        typer.Argument(metavar="EVENT", help="Event ids (default: every failed one)."),
    ] = None,
) -> int:
    """Apply again the webhook events that failed (after `stripe pull`, say). Exit 3 when some
    still fail."""
    project = rt.read_project()
    results = stripe_webhooks.reprocess(
        rt.engine(), project, events or [], actor=rt.actor.id, now=rt.now()
    )
    rows = [(e["event"], e["type"], e["result"], e["note"] or "") for e in results]
    columns = ("event", "type", "result", "note")
    rt.out.emit(results, table(None, columns, rows, empty="Nothing waits for reprocessing."))
    failed = sum(1 for item in results if item["result"] == "failed")
    rt.out.say(f"{plural(len(results), 'event')} reprocessed, {failed} still failing.")
    if not results:
        rt.out.say("Nothing waits for reprocessing.")
    return EXIT_REJECTED if failed else 0
