"""/v1/credit_notes: credit notes on finalized invoices, their lines, void, list."""

from __future__ import annotations

import copy

from tests.fakes.stripe.errors import FakeStripeError
from tests.fakes.stripe.money import check_amount
from tests.fakes.stripe.params import (
    LIST_PARAMS,
    Obj,
    Params,
    allow_only,
    as_list,
    created_filter,
    enum_param,
    int_param,
    merge_metadata,
    str_param,
)
from tests.fakes.stripe.store import Store, now_ts


class CreditNotes(Store):
    """Credit note handlers."""

    def _create_credit_note(self, params: Params) -> Obj:
        allow_only(
            params,
            (
                "invoice",
                "amount",
                "lines",
                "credit_amount",
                "out_of_band_amount",
                "refund_amount",
                "memo",
                "metadata",
                "reason",
                "expand",
            ),
        )
        invoice = self._find(
            "invoice", str_param(params, "invoice", required=True), param="invoice"
        )
        if invoice["status"] not in ("open", "paid"):
            raise FakeStripeError(
                400,
                f"Credit notes can only be issued for open or paid invoices; invoice "
                f"{invoice['id']} is {invoice['status']}.",
                param="invoice",
            )
        currency = invoice["currency"]
        amount = int_param(params, "amount")
        if amount is not None:
            check_amount(amount, currency, "amount")
        lines = self._credit_lines(params, invoice)
        if amount is None and not lines:
            raise FakeStripeError(
                400,
                "You must pass either `amount` or `lines`.",
                code="parameter_missing",
                param="amount",
            )
        total = sum(line["amount"] for line in lines) if lines else amount
        assert total is not None
        if amount is not None and lines and amount != total:
            raise FakeStripeError(
                400,
                f"The amount ({amount}) must equal the sum of the lines ({total}).",
                param="amount",
            )
        if total <= 0:
            raise FakeStripeError(
                400, "The credit note total must be greater than 0.", param="amount"
            )
        creditable = (
            max(0, invoice["total"])
            - invoice["pre_payment_credit_notes_amount"]
            - invoice["post_payment_credit_notes_amount"]
        )
        if total > creditable:
            raise FakeStripeError(
                400,
                f"The credit note total ({total}) is greater than the amount that can still be "
                f"credited on invoice {invoice['id']} ({creditable}).",
                param="amount",
            )
        # Up to amount_remaining of an open invoice lowers what is owed (pre-payment); the rest
        # credits money already paid and must be allocated (post-payment), as in Stripe.
        pre = min(total, invoice["amount_remaining"]) if invoice["status"] == "open" else 0
        post = total - pre
        allocation = {}
        for name in ("credit_amount", "out_of_band_amount", "refund_amount"):
            value = int_param(params, name, minimum=0) or 0
            check_amount(value, currency, name)
            allocation[name] = value
        allocated = sum(allocation.values())
        if allocated != post:
            what = "the credit note total" if pre == 0 else "the post-payment part of the note"
            raise FakeStripeError(
                400,
                f"The sum of credit_amount, out_of_band_amount and refund_amount ({allocated}) "
                f"must equal {what} ({post}).",
                param="credit_amount",
            )
        charges = self._refundable_charges(invoice, allocation["refund_amount"])
        memo = str_param(params, "memo")
        reason = enum_param(
            params,
            "reason",
            ("duplicate", "fraudulent", "order_change", "product_unsatisfactory"),
        )
        metadata = merge_metadata(params)
        # Everything is validated: apply.
        refunds = []
        to_refund = allocation["refund_amount"]
        for charge in charges:
            if to_refund == 0:
                break
            part = min(to_refund, charge["amount"] - charge["amount_refunded"])
            refund = self._refund(charge, part)
            refunds.append({"refund": refund["id"], "amount_refunded": part, "type": "refund"})
            to_refund -= part
        count = sum(1 for note in self._live("credit_note") if note["invoice"] == invoice["id"])
        now = now_ts()
        note = self._new(
            "credit_note",
            {
                "invoice": invoice["id"],
                "customer": invoice["customer"],
                "currency": currency,
                "amount": total,
                "amount_shipping": 0,
                "discount_amount": 0,
                "subtotal": total,
                "subtotal_excluding_tax": total,
                "total": total,
                "total_excluding_tax": total,
                "pre_payment_amount": pre,
                "post_payment_amount": post,
                "out_of_band_amount": allocation["out_of_band_amount"] or None,
                "refunds": refunds,
                "status": "issued",
                "type": "mixed" if pre and post else "pre_payment" if pre else "post_payment",
                "memo": memo,
                "metadata": metadata,
                "reason": reason,
                "number": f"{invoice['number']}-CN-{count + 1:02d}",
                "effective_at": now,
                "voided_at": None,
            },
        )
        note["lines"] = {
            "object": "list",
            "data": [
                {"id": self._unique_id("cnli"), "object": "credit_note_line_item", **line}
                for line in lines
            ],
            "has_more": False,
            "url": f"/v1/credit_notes/{note['id']}/lines",
        }
        self._credit_of[note["id"]] = allocation["credit_amount"]
        self._store[invoice["customer"]]["balance"] -= allocation["credit_amount"]
        invoice["pre_payment_credit_notes_amount"] += pre
        invoice["post_payment_credit_notes_amount"] += post
        self._settle(invoice)
        if invoice["status"] == "open" and invoice["amount_remaining"] == 0:
            self._mark_paid(invoice, now)
        return self._render(note)

    def _credit_lines(self, params: Params, invoice: Obj) -> list[Obj]:
        raw = params.get("lines")
        if raw is None:
            return []
        invoice_lines = {line["id"]: line for line in self._invoice_lines(invoice)}
        lines = []
        for index, line in enumerate(as_list(raw, "lines")):
            where = f"lines[{index}]"
            if not isinstance(line, dict):
                raise FakeStripeError(400, f"Invalid object: {where} must be a hash", param=where)
            allow_only(
                line,
                ("type", "unit_amount", "quantity", "description", "invoice_line_item", "amount"),
                where=where,
            )
            kind = enum_param(
                line, "type", ("custom_line_item", "invoice_line_item"), required=True, where=where
            )
            quantity = int_param(line, "quantity", minimum=1, where=where) or 1
            if kind == "custom_line_item":
                unit = int_param(line, "unit_amount", required=True, minimum=0, where=where)
                description = str_param(line, "description", required=True, where=where)
                assert unit is not None
                check_amount(unit, invoice["currency"], f"{where}[unit_amount]")
                lines.append(
                    {
                        "type": kind,
                        "amount": unit * quantity,
                        "unit_amount": unit,
                        "quantity": quantity,
                        "description": description,
                        "invoice_line_item": None,
                        "discount_amount": 0,
                        "livemode": False,
                    }
                )
            else:
                line_id = str_param(line, "invoice_line_item", required=True, where=where)
                if line_id not in invoice_lines:
                    raise FakeStripeError(
                        400,
                        f"Invoice {invoice['id']} does not have a line item {line_id}",
                        code="resource_missing",
                        param=f"{where}[invoice_line_item]",
                    )
                source = invoice_lines[line_id]
                amount = int_param(line, "amount", minimum=0, where=where)
                amount = source["amount"] if amount is None else amount
                check_amount(amount, invoice["currency"], f"{where}[amount]")
                lines.append(
                    {
                        "type": kind,
                        "amount": amount,
                        "unit_amount": None,
                        "quantity": quantity,
                        "description": source["description"],
                        "invoice_line_item": line_id,
                        "discount_amount": 0,
                        "livemode": False,
                    }
                )
        return lines

    def _refundable_charges(self, invoice: Obj, amount: int) -> list[Obj]:
        """The invoice's charges, newest first, checked to cover a refund of ``amount``."""
        charges = []
        for record in reversed(self._live("invoice_payment")):
            if record["invoice"] == invoice["id"]:
                intent = self._store[record["payment"]["payment_intent"]]
                charges.append(self._store[intent["latest_charge"]])
        refundable = sum(c["amount"] - c["amount_refunded"] for c in charges)
        if amount > refundable:
            raise FakeStripeError(
                400,
                f"The refund_amount ({amount}) is greater than what can be refunded on invoice "
                f"{invoice['id']} ({refundable}).",
                param="refund_amount",
            )
        return charges

    def _void_credit_note(self, params: Params, note_id: str) -> Obj:
        allow_only(params, ("expand",))
        note = self._find("credit_note", note_id)
        if note["status"] == "void":
            raise FakeStripeError(400, f"Credit note {note_id} has already been voided.")
        if note["refunds"]:
            raise FakeStripeError(
                400, f"Credit note {note_id} refunded a payment and can't be voided."
            )
        invoice = self._store[note["invoice"]]
        invoice["pre_payment_credit_notes_amount"] -= note["pre_payment_amount"]
        invoice["post_payment_credit_notes_amount"] -= note["post_payment_amount"]
        self._store[note["customer"]]["balance"] += self._credit_of.pop(note["id"], 0)
        self._settle(invoice)
        if invoice["status"] == "paid" and invoice["amount_remaining"] > 0:
            invoice["status"] = "open"  # the note had settled it; now it is owed again
            invoice["status_transitions"]["paid_at"] = None
        note["status"] = "void"
        note["voided_at"] = now_ts()
        return self._render(note)

    def _list_credit_notes(self, params: Params) -> Obj:
        allow_only(params, LIST_PARAMS | {"invoice", "customer", "created"})
        invoice = str_param(params, "invoice")
        customer = str_param(params, "customer")
        created = created_filter(params)

        def keep(note: Obj) -> bool:
            return (
                (invoice is None or note["invoice"] == invoice)
                and (customer is None or note["customer"] == customer)
                and created(note)
            )

        return self._page_top("credit_note", params, "/v1/credit_notes", keep)

    def _list_credit_note_lines(self, params: Params, note_id: str) -> Obj:
        allow_only(params, LIST_PARAMS)
        note = self._find("credit_note", note_id)

        def missing(cursor: str, param: str) -> FakeStripeError:
            return FakeStripeError(
                400,
                f"No such credit note line item: '{cursor}'",
                code="resource_missing",
                param=param,
            )

        lines = copy.deepcopy(note["lines"]["data"])
        url = note["lines"]["url"]
        return self._page(lines, lambda line: True, params, url, missing, lambda line: line)
