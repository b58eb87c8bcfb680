"""Customers: the same services as `neruba customer ...`, `neruba wallet show` and
`neruba invoice preview`.

An external id may hold a `/` (`team/a`): the routes take the rest of the path, so
`/v1/customers/team/a` and `/v1/customers/team%2Fa` both name it, and `/usage` and
`/wallet` at the end name those reads of the customer before it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from neruba_cli.api import pagination
from neruba_cli.api.auth import Caller, requires
from neruba_cli.api.errors import COMMON_ERRORS, ErrorResponse, not_found
from neruba_cli.api.idempotency import Idempotent, idempotency, with_session
from neruba_cli.api.models import Customer, Usage, Wallet
from neruba_cli.api.pagination import Page, PageRequest
from neruba_cli.api.params import Text, identifier, moment
from neruba_cli.api.responses import JsonResponse
from neruba_cli.db.schema import Project
from neruba_cli.services.invoices import preview
from neruba_cli.services.ledger import credits
from neruba_cli.services.tenancy import customers

CREATE_SCOPE = "billing"  # as `neruba customer create`
WALLET_SCOPE = "read"  # as `neruba wallet show`

router = APIRouter(prefix="/v1/customers", tags=["customers"], responses=COMMON_ERRORS)

NOT_FOUND = not_found("customer")


class NewCustomer(BaseModel):
    """The fields of `neruba customer create`; blank optional fields take the project's
    defaults (currency, time zone)."""

    model_config = ConfigDict(extra="forbid")

    external_id: Text = Field(description="Your id for the customer, unique per project.")
    name: Text | None = Field(None, description="Display name.")
    email: Text | None = Field(None, description="Billing e-mail.")
    currency: Text | None = Field(None, description="ISO 4217 (default: the project's).")
    timezone: Text | None = Field(None, description="IANA zone (default: the project's).")
    stripe_id: Text | None = Field(None, description="Existing Stripe customer id (cus_...).")


@router.get(
    "",
    response_model=Page[Customer],
    summary="The project's customers, by external id",
)
def list_customers(
    caller: Caller = Depends(requires("read")),
    page: PageRequest = Depends(pagination.pages("customers")),
) -> dict[str, Any]:
    with caller.transaction() as session:
        project = caller.project(session)
        rows = customers.list_customers(session, project, after=page.after, limit=page.fetch)
        shown, cursor = pagination.page("customers", page, rows, lambda row: row.external_id)
        return {"data": [customers.to_dict(row) for row in shown], "next_cursor": cursor}


def create_customer(caller: Caller, body: NewCustomer, idempotent: Idempotent) -> JsonResponse:
    """`POST /v1/customers` over an authenticated caller and a parsed body."""
    now = caller.now()

    def work(session: Session, project: Project) -> tuple[int, Any]:
        created = customers.create(session, project, **body.model_dump(), now=now)
        return 201, customers.to_dict(created)

    return idempotent.respond(caller, with_session(work))


@router.post(
    "",
    status_code=201,
    response_model=Customer,
    summary="Create a customer",
    responses={
        409: {
            "model": ErrorResponse,
            "description": "The external id is taken, or the Idempotency-Key was used with "
            "another body or on another route",
        }
    },
)
def post_customer(
    body: NewCustomer,
    caller: Caller = Depends(requires(CREATE_SCOPE)),
    idempotent: Idempotent = Depends(idempotency),
) -> JsonResponse:
    return create_customer(caller, body, idempotent)


@router.get(
    "/{external_id:path}/usage",
    response_model=Usage,
    summary="What the customer's open billing periods would bill now",
    responses=NOT_FOUND,
)
def get_usage(
    external_id: str,
    at: Annotated[
        str | None,
        Query(description="A moment in the open period, RFC 3339 (default: now)."),
    ] = None,
    caller: Caller = Depends(requires("read")),
) -> dict[str, Any]:
    identifier(external_id, "customer")
    when = moment(at, "at", caller.now())
    with caller.transaction() as session:
        project = caller.project(session)
    found = preview.preview(caller.engine, project, external_id, at=when)
    return {"customer": external_id, "at": found[0]["at"], "periods": found}


@router.get(
    "/{external_id:path}/wallet",
    response_model=Wallet,
    summary="The customer's credit balance and grants",
    responses=NOT_FOUND,
)
def get_wallet(
    external_id: str,
    as_of: Annotated[
        str | None, Query(description="The balance at this moment, RFC 3339 (default: now).")
    ] = None,
    caller: Caller = Depends(requires(WALLET_SCOPE)),
) -> dict[str, Any]:
    identifier(external_id, "customer")
    now = caller.now()
    when = moment(as_of, "as_of", now)
    with caller.transaction() as session:
        project = caller.project(session)
        return credits.wallet(session.connection(), project, external_id, as_of=when, now=now)


@router.get(
    "/{external_id:path}",
    response_model=Customer,
    summary="One customer, by your external id (or Neruba's cus_ id)",
    responses=NOT_FOUND,
)
def get_customer(external_id: str, caller: Caller = Depends(requires("read"))) -> dict[str, Any]:
    identifier(external_id, "customer")
    with caller.transaction() as session:
        project = caller.project(session)
        return customers.to_dict(customers.get_customer(session, project, external_id))
