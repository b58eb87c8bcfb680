"""`neruba payment record|refund|list`"""

from __future__ import annotations

from typing import Annotated

import typer

from neruba_cli.cli import values
from neruba_cli.cli.output import table
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.domain.timestamps import parse_ts
from neruba_cli.services.ledger import payments

app = typer.Typer()


@command(app, "record", group="payment", scope="billing", mutating=True)
def record(
    rt: Runtime,
    invoice: Annotated[str, typer.Argument(help="Invoice number, e.g. ACME-000001.")],
    amount: Annotated[
        str, typer.Argument(help="Amount received, in major units."), values.POSITIVE_AMOUNT
    ],
    reference: Annotated[
        str | None, typer.Option(help="Bank or PSP reference: names one payment (idempotent).")
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(metavar="TS", help="When it was received (RFC 3339)."),
        values.TIMESTAMP,
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(metavar="KEY", help="Record once per key (default: invoice + reference)."),
    ] = None,
) -> None:
    """Post a payment: the invoice owes less (paid when nothing is due); any overpayment
    becomes credit in the customer's wallet."""
    request = payments.PaymentRequest(
        invoice=invoice,
        amount=amount,
        reference=reference,
        at=parse_ts(at, field="--at") if at else None,
        idempotency_key=idempotency_key,
    )
    project = rt.read_project()
    data, created = payments.record(rt.engine(), project, request, actor=rt.actor.id, now=rt.now())
    data["created"] = created
    rt.out.emit(data)
    if not created:
        rt.out.say(f"Already recorded as {data['id']} (nothing changed).")
        return
    rt.out.say(
        f"Recorded {data['amount']} {data['currency']} on {data['invoice']}: "
        f"{data['invoice_status']}, {data['invoice_amount_due']} due."
    )
    if data["overpayment_grant"]:
        rt.out.say(
            f"Overpayment {data['overpayment']} {data['currency']} is wallet credit "
            f"({data['overpayment_grant']})."
        )


@command(app, "refund", group="payment", scope="billing", mutating=True)
def refund(
    rt: Runtime,
    payment: Annotated[str, typer.Argument(help="Payment id (pay_...).")],
    amount: Annotated[
        str | None,
        typer.Argument(help="Amount (default: all that is left).", show_default=False),
        values.POSITIVE_AMOUNT,
    ] = None,
    reason: Annotated[str | None, typer.Option(metavar="TEXT", help="Why.")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(metavar="KEY", help="Refund once per key.")
    ] = None,
) -> None:
    """Pay back (part of) a payment: the invoice owes it again."""
    project = rt.read_project()
    data, created = payments.refund(
        rt.engine(),
        project,
        payment,
        amount=amount,
        reason=reason,
        idempotency_key=idempotency_key,
        actor=rt.actor.id,
        now=rt.now(),
    )
    data["created"] = created
    rt.out.emit(data)
    rt.out.say(f"Refunded: {data['refunded']} {data['currency']} of {data['id']} in total.")


@command(app, "list", group="payment", scope="read")
def list_(
    rt: Runtime,
    invoice: Annotated[
        str | None, typer.Option(metavar="NUMBER", help="Only this invoice's payments.")
    ] = None,
    customer: Annotated[str | None, typer.Option(help="Only this customer's.")] = None,
) -> None:
    """Payments, oldest first."""
    with rt.transaction() as session:
        project = rt.project(session)
        data = payments.list_payments(
            session.connection(), project, invoice=invoice, customer=customer
        )
    columns = (
        "id",
        "invoice",
        "customer",
        "amount",
        "applied",
        "refunded",
        "currency",
        "reference",
    )
    shown = [[item[c] for c in columns] for item in data]
    rt.out.emit(data, table(None, columns, shown, empty="No payments."))
