"""/v1/refunds: refunds of a charge or a payment intent, in full or in part."""

from __future__ import annotations

from tests.fakes.stripe.errors import FakeStripeError
from tests.fakes.stripe.money import check_amount, format_money
from tests.fakes.stripe.params import (
    LIST_PARAMS,
    Obj,
    Params,
    allow_only,
    created_filter,
    enum_param,
    int_param,
    merge_metadata,
    str_param,
)
from tests.fakes.stripe.store import Store


class Refunds(Store):
    """Refund handlers."""

    def _create_refund(self, params: Params) -> Obj:
        allow_only(params, ("charge", "payment_intent", "amount", "reason", "metadata", "expand"))
        charge_id = str_param(params, "charge")
        intent_id = str_param(params, "payment_intent")
        if not charge_id and not intent_id:
            raise FakeStripeError(
                400,
                "One of `charge` or `payment_intent` is required.",
                code="parameter_missing",
                param="charge",
            )
        if intent_id:
            intent = self._find("payment_intent", intent_id, param="payment_intent")
            if charge_id and charge_id != intent["latest_charge"]:
                raise FakeStripeError(
                    400,
                    f"Charge {charge_id} does not belong to payment intent {intent_id}.",
                    param="charge",
                )
            charge_id = intent["latest_charge"]
        charge = self._find("charge", charge_id, param="charge")
        amount = int_param(params, "amount", minimum=1)
        reason = enum_param(params, "reason", ("duplicate", "fraudulent", "requested_by_customer"))
        refund = self._refund(charge, amount, reason=reason, metadata=merge_metadata(params))
        return self._render(refund)

    def _refund(
        self,
        charge: Obj,
        amount: int | None,
        *,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Obj:
        refundable = charge["amount"] - charge["amount_refunded"]
        if refundable <= 0:
            raise FakeStripeError(
                400,
                f"Charge {charge['id']} has already been refunded.",
                code="charge_already_refunded",
            )
        currency = charge["currency"]
        amount = refundable if amount is None else amount
        if amount <= 0:
            raise FakeStripeError(400, "Invalid positive integer", param="amount")
        if amount > refundable:
            if charge["amount_refunded"] == 0:
                message = (
                    f"Refund amount ({format_money(amount, currency)}) is greater than charge "
                    f"amount ({format_money(charge['amount'], currency)})"
                )
            else:
                message = (
                    f"Refund amount ({format_money(amount, currency)}) is greater than unrefunded "
                    f"amount on charge ({format_money(refundable, currency)})"
                )
            raise FakeStripeError(400, message, param="amount")
        check_amount(amount, currency, "amount")
        refund = self._new(
            "refund",
            {
                "amount": amount,
                "charge": charge["id"],
                "currency": currency,
                "metadata": metadata or {},
                "payment_intent": charge["payment_intent"],
                "reason": reason,
                "status": "succeeded",
            },
        )
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        return refund

    def _list_refunds(self, params: Params) -> Obj:
        allow_only(params, LIST_PARAMS | {"charge", "payment_intent", "created"})
        charge = str_param(params, "charge")
        intent = str_param(params, "payment_intent")
        created = created_filter(params)

        def keep(refund: Obj) -> bool:
            return (
                (charge is None or refund["charge"] == charge)
                and (intent is None or refund["payment_intent"] == intent)
                and created(refund)
            )

        return self._page_top("refund", params, "/v1/refunds", keep)
