"""/v1/invoices: drafts, their lines, finalize, void, uncollectible, delete, list."""

from __future__ import annotations

from tests.fakes.stripe.errors import FakeStripeError
from tests.fakes.stripe.params import (
    LIST_PARAMS,
    Obj,
    Params,
    allow_only,
    bool_param,
    created_filter,
    currency_param,
    enum_param,
    int_param,
    merge_metadata,
    str_param,
)
from tests.fakes.stripe.store import INVOICE_STATUSES, Store, now_ts


class Invoices(Store):
    """Invoice handlers and the invoice state machine."""

    def _create_invoice(self, params: Params) -> Obj:
        allow_only(
            params,
            (
                "customer",
                "currency",
                "auto_advance",
                "collection_method",
                "days_until_due",
                "due_date",
                "description",
                "footer",
                "metadata",
                "number",
                "pending_invoice_items_behavior",
                "expand",
            ),
        )
        customer = self._find(
            "customer", str_param(params, "customer", required=True), param="customer"
        )
        currency = currency_param(params) or "usd"  # Stripe falls back to the account's currency
        method = enum_param(params, "collection_method", ("charge_automatically", "send_invoice"))
        method = method or "charge_automatically"
        now = now_ts()
        due_date = self._terms(params, method, now)
        behavior = enum_param(params, "pending_invoice_items_behavior", ("include", "exclude"))
        number = str_param(params, "number") or None
        invoice = self._new(
            "invoice",
            {
                "created": now,
                "customer": customer["id"],
                "customer_email": customer["email"],
                "customer_name": customer["name"],
                "currency": currency,
                "status": "draft",
                "billing_reason": "manual",
                "collection_method": method,
                "auto_advance": bool_param(params, "auto_advance") is True,
                "due_date": due_date,
                "description": str_param(params, "description") or None,
                "footer": str_param(params, "footer") or None,
                "metadata": merge_metadata(params),
                "number": number,
                "subtotal": 0,
                "subtotal_excluding_tax": 0,
                "total": 0,
                "total_excluding_tax": 0,
                "starting_balance": 0,
                "ending_balance": None,
                "amount_due": 0,
                "amount_paid": 0,
                "amount_remaining": 0,
                "pre_payment_credit_notes_amount": 0,
                "post_payment_credit_notes_amount": 0,
                "attempted": False,
                "effective_at": None,
                "period_start": now,
                "period_end": now,
                "status_transitions": {
                    "finalized_at": None,
                    "marked_uncollectible_at": None,
                    "paid_at": None,
                    "voided_at": None,
                },
            },
        )
        if behavior == "include":  # Stripe's default for this API version is "exclude"
            for item in self._live("invoiceitem"):
                if (
                    item["invoice"] is None
                    and item["customer"] == customer["id"]
                    and item["currency"] == currency
                ):
                    self._attach(item, invoice)
            self._recalc(invoice)
        return self._render(invoice)

    @staticmethod
    def _terms(params: Params, method: str, created: int) -> int | None:
        """The due date: only send_invoice invoices have one; days count from creation."""
        days = int_param(params, "days_until_due", minimum=0)
        due_date = int_param(params, "due_date")
        if method == "charge_automatically" and (days is not None or due_date is not None):
            param = "days_until_due" if days is not None else "due_date"
            raise FakeStripeError(
                400,
                f"Invoices with `collection_method=charge_automatically` cannot have `{param}`.",
                param=param,
            )
        if method == "send_invoice" and due_date is None:
            days = 30 if days is None else days  # 30: the account's default payment terms
            due_date = created + days * 86400
        return due_date

    def _require_draft(self, invoice: Obj, action: str, *, param: str | None = None) -> None:
        if invoice["status"] != "draft":
            raise FakeStripeError(
                400,
                f"You can only {action} a draft invoice; invoice {invoice['id']} is "
                f"{invoice['status']}. Consider creating a credit note instead.",
                code="invoice_not_editable",
                param=param,
            )

    def _attach(self, item: Obj, invoice: Obj) -> None:
        item["invoice"] = invoice["id"]
        self._items_of.setdefault(invoice["id"], []).append(item["id"])
        self._line_of[item["id"]] = self._unique_id("il")

    def _invoice_items(self, invoice: Obj) -> list[Obj]:
        ids = self._items_of.get(invoice["id"], [])
        return [self._store[i] for i in ids if i not in self._deleted]

    def _invoice_lines(self, invoice: Obj) -> list[Obj]:
        return [
            {
                "id": self._line_of[item["id"]],
                "object": "line_item",
                "amount": item["amount"],
                "currency": item["currency"],
                "description": item["description"],
                "discountable": item["discountable"],
                "invoice": invoice["id"],
                "livemode": False,
                "metadata": dict(item["metadata"]),
                "parent": {
                    "type": "invoice_item_details",
                    "invoice_item_details": {
                        "invoice_item": item["id"],
                        "proration": False,
                        "subscription": None,
                    },
                    "subscription_item_details": None,
                },
                "period": dict(item["period"]),
                "quantity": item["quantity"],
            }
            for item in self._invoice_items(invoice)
        ]

    def _recalc(self, invoice: Obj) -> None:
        """A draft's totals follow its items; a finalized invoice's are frozen."""
        if invoice["status"] != "draft":
            return
        total = sum(item["amount"] for item in self._invoice_items(invoice))
        invoice["subtotal"] = invoice["subtotal_excluding_tax"] = total
        invoice["total"] = invoice["total_excluding_tax"] = total
        self._settle(invoice)

    @staticmethod
    def _settle(invoice: Obj) -> None:
        """amount_due/amount_remaining from the total, the customer balance applied at
        finalization (`starting_balance`, a credit when negative), pre-payment credit and
        payments. A negative total owes nothing: finalizing it credits the customer's balance
        (`ending_balance`)."""
        owed = max(0, invoice["total"] + invoice["starting_balance"])
        due = owed - invoice["pre_payment_credit_notes_amount"]
        invoice["amount_due"] = max(0, due)
        invoice["amount_remaining"] = max(0, invoice["amount_due"] - invoice["amount_paid"])

    def _update_invoice(self, params: Params, invoice_id: str) -> Obj:
        allow_only(
            params,
            (
                "metadata",
                "description",
                "footer",
                "auto_advance",
                "collection_method",
                "days_until_due",
                "due_date",
                "number",
                "expand",
            ),
        )
        invoice = self._find("invoice", invoice_id)
        draft_only = {"collection_method", "days_until_due", "due_date", "number"}
        if draft_only & set(params):
            self._require_draft(invoice, f"update {sorted(draft_only & set(params))[0]} of")
        if "auto_advance" in params and invoice["status"] not in ("draft", "open"):
            self._require_draft(invoice, "update auto_advance of")
        metadata = merge_metadata(params, invoice["metadata"])
        updates: Obj = {}
        if "collection_method" in params or "days_until_due" in params or "due_date" in params:
            method = enum_param(
                params, "collection_method", ("charge_automatically", "send_invoice")
            )
            method = method or invoice["collection_method"]
            due_date = self._terms(params, method, invoice["created"])
            updates.update(collection_method=method, due_date=due_date)
        for name in ("description", "footer", "number"):
            if name in params:
                updates[name] = str_param(params, name) or None
        if "auto_advance" in params:
            updates["auto_advance"] = bool_param(params, "auto_advance")
        invoice.update(updates)
        invoice["metadata"] = metadata
        return self._render(invoice)

    def _finalize_invoice(self, params: Params, invoice_id: str) -> Obj:
        allow_only(params, ("auto_advance", "expand"))
        invoice = self._find("invoice", invoice_id)
        auto_advance = bool_param(params, "auto_advance")
        self._finalize(invoice)
        if auto_advance is not None:
            invoice["auto_advance"] = auto_advance
        return self._render(invoice)

    def _finalize(self, invoice: Obj) -> None:
        if invoice["status"] != "draft":
            raise FakeStripeError(
                400,
                "This invoice is already finalized, you can't re-finalize a non-draft invoice.",
                code="invoice_not_editable",
            )
        customer = self._store[invoice["customer"]]
        now = now_ts()
        if invoice["number"] is None:
            sequence = customer["next_invoice_sequence"]
            invoice["number"] = f"{customer['invoice_prefix']}-{sequence:04d}"
            customer["next_invoice_sequence"] = sequence + 1
        invoice["status"] = "open"
        invoice["status_transitions"]["finalized_at"] = now
        invoice["effective_at"] = now
        self._apply_balance(invoice, customer)
        self._settle(invoice)
        if invoice["amount_remaining"] == 0:  # nothing to collect: Stripe marks it paid
            self._mark_paid(invoice, now)

    def _apply_balance(self, invoice: Obj, customer: Obj) -> None:
        """Stripe applies the customer's balance to the next invoice finalized in its currency:
        a credit (negative) lowers the amount due, a debit raises it; a negative total adds its
        credit to the balance. What is left is the invoice's `ending_balance` and the
        customer's new balance, moved by one `applied_to_invoice` balance transaction."""
        same = customer["currency"] in (None, invoice["currency"])
        starting = customer["balance"] if same else 0
        ending = min(0, invoice["total"] + starting)
        invoice["starting_balance"], invoice["ending_balance"] = starting, ending
        if ending != starting:
            self._balance_move(
                customer,
                ending - starting,
                "applied_to_invoice",
                currency=invoice["currency"],
                invoice=invoice["id"],
            )

    @staticmethod
    def _mark_paid(invoice: Obj, now: int) -> None:
        invoice["status"] = "paid"
        invoice["status_transitions"]["paid_at"] = now

    def _void_invoice_api(self, params: Params, invoice_id: str) -> Obj:
        allow_only(params, ("expand",))
        invoice = self._find("invoice", invoice_id)
        self._void(invoice)
        return self._render(invoice)

    @staticmethod
    def _void(invoice: Obj) -> None:
        if invoice["status"] not in ("open", "uncollectible"):
            raise FakeStripeError(
                400,
                f"You can only void open or uncollectible invoices; invoice {invoice['id']} is "
                f"{invoice['status']}.",
            )
        invoice["status"] = "void"
        invoice["status_transitions"]["voided_at"] = now_ts()

    def _mark_uncollectible(self, params: Params, invoice_id: str) -> Obj:
        allow_only(params, ("expand",))
        invoice = self._find("invoice", invoice_id)
        if invoice["status"] != "open":
            raise FakeStripeError(
                400,
                f"You can only mark open invoices uncollectible; invoice {invoice['id']} is "
                f"{invoice['status']}.",
            )
        invoice["status"] = "uncollectible"
        invoice["status_transitions"]["marked_uncollectible_at"] = now_ts()
        return self._render(invoice)

    def _delete_draft_invoice(self, params: Params, invoice_id: str) -> Obj:
        allow_only(params, ())
        invoice = self._find("invoice", invoice_id)
        if invoice["status"] != "draft":
            raise FakeStripeError(
                400,
                "You can only delete draft invoices. Finalized invoices can be voided instead.",
                code="invoice_not_editable",
            )
        self._delete_invoice(invoice)
        return {"id": invoice["id"], "object": "invoice", "deleted": True}

    def _delete_invoice(self, invoice: Obj) -> None:
        self._deleted.add(invoice["id"])
        self._deleted.update(self._items_of.get(invoice["id"], []))

    def _list_invoices(self, params: Params) -> Obj:
        allow_only(params, LIST_PARAMS | {"customer", "status", "collection_method", "created"})
        customer = str_param(params, "customer")
        status = enum_param(params, "status", INVOICE_STATUSES)
        method = enum_param(params, "collection_method", ("charge_automatically", "send_invoice"))
        created = created_filter(params)

        def keep(invoice: Obj) -> bool:
            return (
                (customer is None or invoice["customer"] == customer)
                and (status is None or invoice["status"] == status)
                and (method is None or invoice["collection_method"] == method)
                and created(invoice)
            )

        return self._page_top("invoice", params, "/v1/invoices", keep)

    def _list_invoice_lines(self, params: Params, invoice_id: str) -> Obj:
        allow_only(params, LIST_PARAMS)
        invoice = self._find("invoice", invoice_id)

        def missing(cursor: str, param: str) -> FakeStripeError:
            return FakeStripeError(
                400,
                f"Invoice {invoice_id} does not have a line item {cursor}",
                code="resource_missing",
                param=param,
            )

        url = f"/v1/invoices/{invoice_id}/lines"
        lines = self._invoice_lines(invoice)
        return self._page(lines, lambda line: True, params, url, missing, lambda line: line)
