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
    currency_param,
    int_param,
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

    # -- the customer's invoice credit balance: a ledger of balance transactions -------------

    def _balance_move(
        self,
        customer: Obj,
        amount: int,
        kind: str,
        *,
        currency: str,
        invoice: str | None = None,
        description: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Obj:
        """Move `customer.balance` by `amount` (negative: a credit, the customer is owed;
        positive: a debit) and record the customer balance transaction that says so."""
        if customer["currency"] is not None and customer["currency"] != currency:
            raise FakeStripeError(
                400,
                f"The customer's balance is in {customer['currency']}; it cannot take an "
                f"amount in {currency}.",
                param="currency",
            )
        customer["currency"] = currency
        customer["balance"] += amount
        return self._new(
            "customer_balance_transaction",
            {
                "amount": amount,
                "currency": currency,
                "customer": customer["id"],
                "credit_note": None,
                "description": description,
                "ending_balance": customer["balance"],
                "invoice": invoice,
                "metadata": metadata or {},
                "type": kind,
            },
        )

    def _create_balance_transaction(self, params: Params, customer_id: str) -> Obj:
        allow_only(params, ("amount", "currency", "description", "metadata", "expand"))
        customer = self._find("customer", customer_id)
        amount = int_param(params, "amount", required=True)
        currency = currency_param(params)
        if currency is None:
            raise FakeStripeError(400, "Missing required param: currency.", param="currency")
        assert amount is not None
        made = self._balance_move(
            customer,
            amount,
            "adjustment",
            currency=currency,
            description=str_param(params, "description") or None,
            metadata=merge_metadata(params),
        )
        return self._render(made)

    def _list_balance_transactions(self, params: Params, customer_id: str) -> Obj:
        allow_only(params, LIST_PARAMS | {"created", "invoice"})
        self._find("customer", customer_id)
        invoice = str_param(params, "invoice")
        created = created_filter(params)
        return self._page_top(
            "customer_balance_transaction",
            params,
            f"/v1/customers/{customer_id}/balance_transactions",
            lambda t: (
                t["customer"] == customer_id
                and (invoice is None or t["invoice"] == invoice)
                and created(t)
            ),
        )
