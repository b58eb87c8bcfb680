"""Paying an invoice, and what a payment leaves behind: invoice payments, payment intents
and charges."""

from __future__ import annotations

from tests.fakes.stripe.errors import FakeStripeError
from tests.fakes.stripe.money import check_amount
from tests.fakes.stripe.params import (
    LIST_PARAMS,
    Obj,
    Params,
    allow_only,
    bool_param,
    created_filter,
    enum_param,
    str_param,
)
from tests.fakes.stripe.store import Store, now_ts


class Payments(Store):
    """Payment handlers."""

    def _pay_invoice_api(self, params: Params, invoice_id: str) -> Obj:
        allow_only(params, ("paid_out_of_band", "forgive", "off_session", "expand"))
        invoice = self._find("invoice", invoice_id)
        bool_param(params, "paid_out_of_band")  # either way the same path as FakeStripe.pay_invoice
        bool_param(params, "forgive")
        bool_param(params, "off_session")
        if invoice["status"] == "draft":  # Stripe finalizes a draft before paying it
            self._finalize(invoice)
            if invoice["status"] == "paid":
                return self._render(invoice)
        self._pay(invoice, None)
        return self._render(invoice)

    def _pay(self, invoice: Obj, amount: int | None) -> None:
        """Take a payment on an invoice: a succeeded payment intent, its charge and an invoice
        payment, then amount_paid/amount_remaining and, once nothing remains, status paid."""
        status = invoice["status"]
        if status == "paid" or (
            status in ("open", "uncollectible") and invoice["amount_remaining"] == 0
        ):
            raise FakeStripeError(400, "Invoice is already paid", code="invoice_already_paid")
        if status not in ("open", "uncollectible"):
            raise FakeStripeError(
                400,
                f"You can't pay an invoice with status {status}; only open or uncollectible "
                "invoices can be paid.",
            )
        remaining = invoice["amount_remaining"]
        amount = remaining if amount is None else amount
        if not 0 < amount <= remaining:
            raise FakeStripeError(
                400,
                f"The payment amount ({amount}) must be between 1 and the invoice's amount "
                f"remaining ({remaining}).",
                param="amount",
            )
        currency = invoice["currency"]
        check_amount(amount, currency, "amount")
        now = now_ts()
        intent = self._new(
            "payment_intent",
            {
                "amount": amount,
                "amount_capturable": 0,
                "amount_received": amount,
                "capture_method": "automatic",
                "currency": currency,
                "customer": invoice["customer"],
                "description": f"Payment for Invoice {invoice['number']}",
                "latest_charge": None,
                "metadata": {},
                "payment_method": None,
                "status": "succeeded",
            },
        )
        charge = self._new(
            "charge",
            {
                "amount": amount,
                "amount_captured": amount,
                "amount_refunded": 0,
                "captured": True,
                "currency": currency,
                "customer": invoice["customer"],
                "description": intent["description"],
                "disputed": False,
                "metadata": {},
                "paid": True,
                "payment_intent": intent["id"],
                "refunded": False,
                "status": "succeeded",
            },
        )
        intent["latest_charge"] = charge["id"]
        first = not any(p["invoice"] == invoice["id"] for p in self._live("invoice_payment"))
        self._new(
            "invoice_payment",
            {
                "amount_paid": amount,
                "amount_requested": amount,
                "currency": currency,
                "invoice": invoice["id"],
                "is_default": first,
                "payment": {"type": "payment_intent", "payment_intent": intent["id"]},
                "status": "paid",
                "status_transitions": {"canceled_at": None, "paid_at": now},
            },
        )
        invoice["amount_paid"] += amount
        invoice["attempted"] = True
        self._settle(invoice)
        if invoice["amount_remaining"] == 0:
            self._mark_paid(invoice, now)

    def _list_invoice_payments(self, params: Params) -> Obj:
        allow_only(params, LIST_PARAMS | {"invoice", "payment", "status", "created"})
        invoice = str_param(params, "invoice")
        status = enum_param(params, "status", ("canceled", "open", "paid"))
        created = created_filter(params)
        payment = params.get("payment")
        kind = intent = None
        if payment is not None:
            if not isinstance(payment, dict):
                raise FakeStripeError(
                    400, "Invalid object: payment must be a hash", param="payment"
                )
            allow_only(payment, ("type", "payment_intent"), where="payment")
            # Stripe requires payment[type] with any payment filter.
            kind = enum_param(
                payment,
                "type",
                ("payment_intent", "payment_record"),
                required=True,
                where="payment",
            )
            intent = str_param(payment, "payment_intent", where="payment")

        def keep(record: Obj) -> bool:
            return (
                (invoice is None or record["invoice"] == invoice)
                and (status is None or record["status"] == status)
                and (kind is None or record["payment"]["type"] == kind)
                and (intent is None or record["payment"]["payment_intent"] == intent)
                and created(record)
            )

        return self._page_top("invoice_payment", params, "/v1/invoice_payments", keep)

    def _list_payment_intents(self, params: Params) -> Obj:
        allow_only(params, LIST_PARAMS | {"customer", "created"})
        customer = str_param(params, "customer")
        created = created_filter(params)
        return self._page_top(
            "payment_intent",
            params,
            "/v1/payment_intents",
            lambda pi: (customer is None or pi["customer"] == customer) and created(pi),
        )

    def _list_charges(self, params: Params) -> Obj:
        allow_only(params, LIST_PARAMS | {"customer", "payment_intent", "created"})
        customer = str_param(params, "customer")
        intent = str_param(params, "payment_intent")
        created = created_filter(params)

        def keep(charge: Obj) -> bool:
            return (
                (customer is None or charge["customer"] == customer)
                and (intent is None or charge["payment_intent"] == intent)
                and created(charge)
            )

        return self._page_top("charge", params, "/v1/charges", keep)
