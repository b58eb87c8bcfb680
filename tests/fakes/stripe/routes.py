"""The URL table: which handler serves which method and path."""

from __future__ import annotations

import re
from collections.abc import Callable

from tests.fakes.stripe.params import Obj
from tests.fakes.stripe.store import Store


class Routes(Store):
    """Maps (method, path) to the resource handlers."""

    def _build_routes(self) -> list[tuple[str, re.Pattern[str], Callable[..., Obj]]]:
        one = "([^/]+)"
        table: list[tuple[str, str, Callable[..., Obj]]] = [
            ("POST", "/v1/customers", self._create_customer),
            ("GET", "/v1/customers", self._list_customers),
            ("GET", f"/v1/customers/{one}", self._getter("customer")),
            ("POST", f"/v1/customers/{one}", self._update_customer),
            ("DELETE", f"/v1/customers/{one}", self._delete_customer),
            (
                "POST",
                f"/v1/customers/{one}/balance_transactions",
                self._create_balance_transaction,
            ),
            (
                "GET",
                f"/v1/customers/{one}/balance_transactions",
                self._list_balance_transactions,
            ),
            ("POST", "/v1/invoiceitems", self._create_invoiceitem),
            ("GET", "/v1/invoiceitems", self._list_invoiceitems),
            ("GET", f"/v1/invoiceitems/{one}", self._getter("invoiceitem")),
            ("POST", f"/v1/invoiceitems/{one}", self._update_invoiceitem),
            ("DELETE", f"/v1/invoiceitems/{one}", self._delete_invoiceitem),
            ("POST", "/v1/invoices", self._create_invoice),
            ("GET", "/v1/invoices", self._list_invoices),
            ("GET", f"/v1/invoices/{one}", self._getter("invoice")),
            ("POST", f"/v1/invoices/{one}", self._update_invoice),
            ("DELETE", f"/v1/invoices/{one}", self._delete_draft_invoice),
            ("GET", f"/v1/invoices/{one}/lines", self._list_invoice_lines),
            ("POST", f"/v1/invoices/{one}/finalize", self._finalize_invoice),
            ("POST", f"/v1/invoices/{one}/pay", self._pay_invoice_api),
            ("POST", f"/v1/invoices/{one}/void", self._void_invoice_api),
            ("POST", f"/v1/invoices/{one}/mark_uncollectible", self._mark_uncollectible),
            ("GET", "/v1/invoice_payments", self._list_invoice_payments),
            ("GET", f"/v1/invoice_payments/{one}", self._getter("invoice_payment")),
            ("GET", "/v1/payment_intents", self._list_payment_intents),
            ("GET", f"/v1/payment_intents/{one}", self._getter("payment_intent")),
            ("GET", "/v1/charges", self._list_charges),
            ("GET", f"/v1/charges/{one}", self._getter("charge")),
            ("POST", "/v1/refunds", self._create_refund),
            ("GET", "/v1/refunds", self._list_refunds),
            ("GET", f"/v1/refunds/{one}", self._getter("refund")),
            ("POST", "/v1/credit_notes", self._create_credit_note),
            ("GET", "/v1/credit_notes", self._list_credit_notes),
            ("GET", f"/v1/credit_notes/{one}", self._getter("credit_note")),
            ("GET", f"/v1/credit_notes/{one}/lines", self._list_credit_note_lines),
            ("POST", f"/v1/credit_notes/{one}/void", self._void_credit_note),
        ]
        return [(method, re.compile(path), handler) for method, path, handler in table]
