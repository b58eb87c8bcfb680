"""/v1/invoiceitems: pending items and the items attached to draft invoices."""

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
    currency_param,
    int_param,
    merge_metadata,
    missing_param,
    str_param,
)
from tests.fakes.stripe.store import Store, now_ts


class InvoiceItems(Store):
    """Invoice item handlers."""

    def _create_invoiceitem(self, params: Params) -> Obj:
        allow_only(
            params,
            (
                "customer",
                "amount",
                "currency",
                "description",
                "invoice",
                "metadata",
                "period",
                "quantity",
                "discountable",
                "expand",
            ),
        )
        customer = self._find(
            "customer", str_param(params, "customer", required=True), param="customer"
        )
        invoice = None
        invoice_id = str_param(params, "invoice")
        if invoice_id:
            invoice = self._find("invoice", invoice_id, param="invoice")
            if invoice["customer"] != customer["id"]:
                raise FakeStripeError(
                    400,
                    f"The invoice {invoice_id} belongs to customer {invoice['customer']}, not "
                    f"{customer['id']}.",
                    param="invoice",
                )
            self._require_draft(invoice, "add invoice items to", param="invoice")
        currency = currency_param(params)
        if currency is None:
            if invoice is None:
                raise missing_param("currency")
            currency = invoice["currency"]
        if invoice is not None and currency != invoice["currency"]:
            raise FakeStripeError(
                400,
                f"The currency of an invoice item ({currency}) must match the currency of its "
                f"invoice ({invoice['currency']}).",
                param="currency",
            )
        amount = int_param(params, "amount", required=True)
        assert amount is not None
        check_amount(amount, currency, "amount")
        now = now_ts()
        period = self._period(params, now)
        item = self._new(
            "invoiceitem",
            {
                "amount": amount,
                "currency": currency,
                "customer": customer["id"],
                "description": str_param(params, "description"),
                "discountable": bool_param(params, "discountable") is not False,
                "invoice": None,
                "metadata": merge_metadata(params),
                "period": period,
                "proration": False,
                "quantity": int_param(params, "quantity", minimum=1) or 1,
            },
            stamp="date",
        )
        if invoice is not None:
            self._attach(item, invoice)
            self._recalc(invoice)
        return self._render(item)

    @staticmethod
    def _period(params: Params, default: int) -> dict[str, int]:
        raw = params.get("period")
        if raw is None:
            return {"start": default, "end": default}
        if not isinstance(raw, dict):
            raise FakeStripeError(400, "Invalid object: period must be a hash", param="period")
        allow_only(raw, ("start", "end"), where="period")
        start = int_param(raw, "start", required=True, where="period")
        end = int_param(raw, "end", required=True, where="period")
        assert start is not None and end is not None
        if end < start:
            raise FakeStripeError(400, "The period end must be after its start.", param="period")
        return {"start": start, "end": end}

    def _update_invoiceitem(self, params: Params, item_id: str) -> Obj:
        allow_only(params, ("amount", "description", "metadata", "period", "quantity", "expand"))
        item = self._find("invoiceitem", item_id)
        invoice = self._store[item["invoice"]] if item["invoice"] else None
        if invoice is not None:
            self._require_draft(invoice, "update invoice items of")
        amount = int_param(params, "amount")
        if amount is not None:
            check_amount(amount, item["currency"], "amount")
        period = self._period(params, 0) if "period" in params else item["period"]
        quantity = int_param(params, "quantity", minimum=1)
        metadata = merge_metadata(params, item["metadata"])
        if amount is not None:
            item["amount"] = amount
        if "description" in params:
            item["description"] = str_param(params, "description") or None
        item["period"], item["metadata"] = period, metadata
        if quantity is not None:
            item["quantity"] = quantity
        if invoice is not None:
            self._recalc(invoice)
        return self._render(item)

    def _delete_invoiceitem(self, params: Params, item_id: str) -> Obj:
        allow_only(params, ())
        item = self._find("invoiceitem", item_id)
        invoice = self._store[item["invoice"]] if item["invoice"] else None
        if invoice is not None:
            self._require_draft(invoice, "delete invoice items of")
        self._deleted.add(item["id"])
        if invoice is not None:
            self._recalc(invoice)
        return {"id": item["id"], "object": "invoiceitem", "deleted": True}

    def _list_invoiceitems(self, params: Params) -> Obj:
        allow_only(params, LIST_PARAMS | {"customer", "invoice", "pending", "created"})
        customer = str_param(params, "customer")
        invoice = str_param(params, "invoice")
        pending = bool_param(params, "pending")
        created = created_filter(params)

        def keep(item: Obj) -> bool:
            return (
                (customer is None or item["customer"] == customer)
                and (invoice is None or item["invoice"] == invoice)
                and (pending is None or (item["invoice"] is None) == pending)
                and created(item)
            )

        return self._page_top("invoiceitem", params, "/v1/invoiceitems", keep)
