"""Credit grants: the same service and rules as `neruba credits grant`.

The customer is named as in routes/customers.py (an external id may hold a `/`)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt
from pydantic_core import PydanticCustomError
from sqlalchemy import Connection

from neruba_cli.api.auth import Caller, requires
from neruba_cli.api.errors import COMMON_ERRORS, not_found
from neruba_cli.api.idempotency import IDEMPOTENCY_ERRORS, Idempotent, idempotency
from neruba_cli.api.models import Grant
from neruba_cli.api.params import Text, identifier
from neruba_cli.api.responses import JsonResponse
from neruba_cli.db.schema import Project
from neruba_cli.domain.credits import MAX_PRIORITY
from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.money import parse_amount
from neruba_cli.domain.timestamps import parse_ts
from neruba_cli.services.ledger import credits

router = APIRouter(prefix="/v1/customers", tags=["credits"], responses=COMMON_ERRORS)


def _invalid(exc: InvalidInput) -> PydanticCustomError:
    return PydanticCustomError("invalid_value", str(exc).replace("{", "(").replace("}", ")"))


def _amount(value: Any) -> str:
    """Money is a decimal string: a JSON number is refused (a float cannot hold most decimal
    amounts exactly, and an integer is refused too so one rule covers every amount)."""
    if isinstance(value, bool) or not isinstance(value, str):
        shown = repr(value) if isinstance(value, float) else str(value)
        raise PydanticCustomError(
            "money_string",
            f'write money as a decimal string, e.g. "{shown}", not a JSON '
            f"{'boolean' if isinstance(value, bool) else 'number'} "
            "(floats cannot hold most decimal amounts exactly)",
        )
    try:
        amount = parse_amount(value, field="amount")
    except InvalidInput as exc:
        raise _invalid(exc) from None
    if amount <= Decimal(0):
        raise PydanticCustomError(
            "money_positive", f"{value!r} must be positive: a grant adds credit"
        )
    return value


def _timestamp(value: Any) -> Any:
    if isinstance(value, str):
        try:
            parse_ts(value, field="expires_at")
        except InvalidInput as exc:
            raise _invalid(exc) from None
    return value


class GrantBody(BaseModel):
    """What `neruba credits grant CUSTOMER AMOUNT [options]` takes."""

    model_config = ConfigDict(extra="forbid")

    amount: Annotated[str, BeforeValidator(_amount)] = Field(
        description="A positive amount in major units, as a decimal string (a JSON number is "
        "refused).",
        examples=["50.00"],
    )
    currency: Text | None = Field(
        default=None,
        min_length=3,
        max_length=3,
        description="ISO 4217 code (default: the customer's currency).",
    )
    expires_at: Annotated[str | None, BeforeValidator(_timestamp)] = Field(
        default=None,
        description="When the credit expires (RFC 3339); null: never.",
        examples=["2027-01-01T00:00:00Z"],
    )
    priority: StrictInt = Field(
        default=credits.DEFAULT_PRIORITY,
        ge=1,
        le=MAX_PRIORITY,
        description="1 is spent before 2.",
    )
    category: Literal["paid", "promotional"] = "promotional"
    reason: Text | None = Field(default=None, max_length=500, description="Why (kept).")
    allow_other_currency: StrictBool = Field(
        default=False,
        description="Grant in a currency the customer is not billed in (only invoices in "
        "that currency spend it).",
    )

    def request(self, customer: str) -> credits.GrantRequest:
        return credits.GrantRequest(
            customer=customer,
            amount=self.amount,
            currency=self.currency,
            expires_at=None
            if self.expires_at is None
            else parse_ts(self.expires_at, field="expires_at"),
            priority=self.priority,
            category=self.category,
            reason=self.reason,
            other_currency=self.allow_other_currency,
        )


@router.post(
    "/{external_id:path}/credits",
    status_code=201,
    response_model=Grant,
    summary="Grant credit to a customer (`neruba credits grant`)",
    responses={**not_found("customer"), **IDEMPOTENCY_ERRORS},
)
def grant_credits(
    external_id: str,
    body: GrantBody,
    caller: Caller = Depends(requires("credits")),
    idempotent: Idempotent = Depends(idempotency),
) -> JsonResponse:
    request = body.request(identifier(external_id, "customer"))
    now = caller.now()

    def work(conn: Connection, project: Project) -> tuple[int, Any]:
        data, _created = credits.grant_in(
            conn, project, request, actor=caller.access.actor.id, now=now
        )
        return 201, data

    return idempotent.respond(caller, work)
