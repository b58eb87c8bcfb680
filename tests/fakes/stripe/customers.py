"""/v1/customers: create, update, delete, list."""

from __future__ import annotations

import re
import secrets

from tests.fakes.stripe.errors import FakeStripeError
from tests.fakes.stripe.params import (
    LIST_PARAMS,
    Obj,
    Params,
    allow_only,
    created_filter,
    merge_metadata,
    str_param,
)
from tests.fakes.stripe.store import Store


class Customers(Store):
    """Customer handlers."""

    def _create_customer(self, params: Params) -> Obj:
        allow_only(params, ("name", "email", "description", "metadata", "invoice_prefix", "expand"))
        prefix = str_param(params, "invoice_prefix")
        if prefix is not None and not re.fullmatch(r"[A-Z0-9]{3,12}", prefix):
            raise FakeStripeError(
                400,
                "Invoice prefix must be 3 to 12 uppercase letters or numbers.",
                param="invoice_prefix",
            )
        customer = self._new(
            "customer",
            {
                "name": str_param(params, "name"),
                "email": str_param(params, "email"),
                "description": str_param(params, "description"),
                "metadata": merge_metadata(params),
                "balance": 0,
                "currency": None,
                "delinquent": False,
                "invoice_prefix": prefix or secrets.token_hex(4).upper(),
                "next_invoice_sequence": 1,
            },
        )
        return self._render(customer)

    def _update_customer(self, params: Params, customer_id: str) -> Obj:
        allow_only(params, ("name", "email", "description", "metadata", "expand"))
        customer = self._find("customer", customer_id)
        for name in ("name", "email", "description"):
            if name in params:
                value = str_param(params, name)
                customer[name] = value or None  # "" unsets, as in Stripe
        customer["metadata"] = merge_metadata(params, customer["metadata"])
        return self._render(customer)

    def _delete_customer(self, params: Params, customer_id: str) -> Obj:
        allow_only(params, ())
        customer = self._find("customer", customer_id)
        self._deleted.add(customer["id"])
        return {"id": customer["id"], "object": "customer", "deleted": True}

    def _list_customers(self, params: Params) -> Obj:
        allow_only(params, LIST_PARAMS | {"email", "created"})
        email = str_param(params, "email")
        created = created_filter(params)
        return self._page_top(
            "customer",
            params,
            "/v1/customers",
            lambda c: (email is None or c["email"] == email) and created(c),
        )
