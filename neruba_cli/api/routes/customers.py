"""Customers: the same service as `neruba customer ...`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from neruba_cli.api.auth import Caller, requires
from neruba_cli.api.errors import COMMON_ERRORS, ErrorResponse
from neruba_cli.services.tenancy import customers

router = APIRouter(prefix="/v1/customers", tags=["customers"], responses=COMMON_ERRORS)


@router.get(
    "/{external_id}",
    summary="One customer, by your external id",
    responses={404: {"model": ErrorResponse, "description": "No such customer"}},
)
def get_customer(external_id: str, caller: Caller = Depends(requires("read"))) -> dict[str, Any]:
    with caller.transaction() as session:
        project = caller.project(session)
        return customers.to_dict(customers.get_customer(session, project, external_id))
