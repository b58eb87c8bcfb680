"""Invoices: the same services as `neruba invoice list`, `show` and `explain`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from neruba_cli.api import pagination
from neruba_cli.api.auth import Caller, requires
from neruba_cli.api.errors import COMMON_ERRORS, naming, not_found
from neruba_cli.api.models import Explanation, InvoiceDocument, InvoiceSummary
from neruba_cli.api.pagination import Page, PageRequest
from neruba_cli.api.params import identifier, storable
from neruba_cli.services.invoices import explain as invoices_explain
from neruba_cli.services.invoices import read as invoices_read

router = APIRouter(prefix="/v1/invoices", tags=["invoices"], responses=COMMON_ERRORS)

NOT_FOUND = not_found("invoice")
STATUS_PATTERN = "^(" + "|".join(invoices_read.STATUSES) + ")$"


@router.get(
    "",
    response_model=Page[InvoiceSummary],
    summary="The project's invoices, by number",
)
def list_invoices(
    period: Annotated[
        str | None,
        Query(description="A month: YYYY-MM, previous or current (project time zone)."),
    ] = None,
    customer: Annotated[str | None, Query(description="Customer external id.")] = None,
    status: Annotated[
        str | None,
        Query(pattern=STATUS_PATTERN, description=", ".join(invoices_read.STATUSES) + "."),
    ] = None,
    caller: Caller = Depends(requires("read")),
    page: PageRequest = Depends(pagination.pages("invoices")),
) -> dict[str, Any]:
    if customer is not None and not storable(customer):
        return {"data": [], "next_cursor": None}  # no stored customer has that id
    with caller.transaction() as session, naming("period"):
        rows = invoices_read.listing(
            session.connection(),
            caller.project(session),
            period=period,
            status=status,
            customer=customer,
            now=caller.now(),
            after=page.after,
            limit=page.fetch,
        )
    shown, cursor = pagination.page("invoices", page, rows, lambda row: str(row["number"]))
    return {"data": shown, "next_cursor": cursor}


@router.get(
    "/{number}",
    response_model=InvoiceDocument,
    summary="One invoice: the invoice JSON",
    responses=NOT_FOUND,
)
def get_invoice(number: str, caller: Caller = Depends(requires("read"))) -> dict[str, Any]:
    identifier(number, "invoice")
    with caller.transaction() as session:
        return invoices_read.show(session.connection(), caller.project(session), number)


@router.get(
    "/{number}/explain",
    response_model=Explanation,
    summary="Why each amount of an invoice is what it is",
    responses=NOT_FOUND,
)
def explain_invoice(number: str, caller: Caller = Depends(requires("read"))) -> dict[str, Any]:
    identifier(number, "invoice")
    with caller.transaction() as session:
        conn = session.connection()
        return invoices_explain.explain_number(conn, caller.project(session), number)
