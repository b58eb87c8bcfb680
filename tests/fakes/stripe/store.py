"""The object store behind every resource, with Stripe's rendering and pagination."""

from __future__ import annotations

import copy
import secrets
import string
import time
from collections.abc import Callable

from tests.fakes.stripe.errors import FakeStripeError
from tests.fakes.stripe.params import (
    Obj,
    Params,
    allow_only,
    as_list,
    created_of,
    int_param,
    str_param,
)

KINDS: dict[str, str] = {
    "customer": "cus",
    "invoice": "in",
    "invoiceitem": "ii",
    "payment_intent": "pi",
    "charge": "ch",
    "refund": "re",
    "credit_note": "cn",
    "invoice_payment": "inpay",
    "customer_balance_transaction": "cbtxn",
}
INVOICE_STATUSES = ("draft", "open", "paid", "uncollectible", "void")
EMBEDDED_LINES = 10  # Stripe embeds the first page of lines in an invoice
_ALNUM = string.ascii_letters + string.digits


def random_token(length: int = 24) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(length))


def now_ts() -> int:
    return int(time.time())


class Store:
    """Objects stored as their wire dicts: ids, lookup, rendering, expand[] and
    cursor pagination, shared by every resource."""

    def _new(self, kind: str, fields: Obj, *, stamp: str = "created") -> Obj:
        object_id = self._unique_id(KINDS[kind])
        obj: Obj = {"id": object_id, "object": kind, stamp: now_ts()}
        if kind != "refund":  # the one kind here without the field
            obj["livemode"] = False
        obj.update(fields)
        self._store[object_id] = obj
        self._ids_by_kind[kind].append(object_id)
        self._kind_of[object_id] = kind
        self._seq[object_id] = self._next_seq
        self._next_seq += 1
        return obj

    def _unique_id(self, prefix: str) -> str:
        while True:
            candidate = f"{prefix}_{random_token()}"
            if candidate not in self._store and candidate not in self._issued_ids:
                self._issued_ids.add(candidate)
                return candidate

    def _order_key(self, obj: Obj) -> tuple[int, int]:
        return (created_of(obj), self._seq[obj["id"]])

    def _find(self, kind: str, object_id: str | None, *, param: str | None = None) -> Obj:
        """The live object, or Stripe's resource_missing: 404 for the path id, 400 for a
        parameter that names an object."""
        obj = self._store.get(object_id or "")
        if obj is None or object_id in self._deleted or self._kind_of.get(object_id or "") != kind:
            raise FakeStripeError(
                400 if param else 404,
                f"No such {kind}: '{object_id}'",
                code="resource_missing",
                param=param or "id",
            )
        return obj

    def _render(self, obj: Obj) -> Obj:
        out = copy.deepcopy(obj)
        if obj["object"] == "invoice":
            lines = self._invoice_lines(obj)
            out["lines"] = {
                "object": "list",
                "data": lines[:EMBEDDED_LINES],
                "has_more": len(lines) > EMBEDDED_LINES,
                "total_count": len(lines),
                "url": f"/v1/invoices/{obj['id']}/lines",
            }
        return out

    def _getter(self, kind: str) -> Callable[[Params, str], Obj]:
        def retrieve(params: Params, object_id: str) -> Obj:
            allow_only(params, ("expand",))
            return self._render(self._find(kind, object_id))

        return retrieve

    def _expand(self, result: Obj, params: Params) -> Obj:
        """Stripe's ``expand[]``: replace named id fields with the objects they point to."""
        raw = params.get("expand")
        if raw is None:
            return result
        for index, path in enumerate(as_list(raw, "expand")):
            if not isinstance(path, str):
                raise FakeStripeError(400, "Invalid expand", param=f"expand[{index}]")
            self._expand_path(result, path.split("."), path)
        return result

    def _expand_path(self, node: Obj, parts: list[str], path: str) -> None:
        head, rest = parts[0], parts[1:]
        if node.get("object") == "list" and head == "data" and rest:
            for item in node["data"]:
                self._expand_path(item, rest, path)
            return
        if head == "payments" and node.get("object") == "invoice":
            payments = [
                self._render(p) for p in self._live("invoice_payment") if p["invoice"] == node["id"]
            ]
            node["payments"] = {
                "object": "list",
                "data": payments[::-1],
                "has_more": False,
                "url": f"/v1/invoice_payments?invoice={node['id']}",
            }
            value = node["payments"]
        else:
            value = node.get(head)
            if value is None and head in node:
                return  # expanding a null field gives null
            if isinstance(value, str) and value in self._store:
                value = node[head] = self._render(self._store[value])
            elif not isinstance(value, dict):
                raise FakeStripeError(
                    400, f"This property cannot be expanded ({path}).", param="expand"
                )
        if rest:
            self._expand_path(value, rest, path)

    def _live(self, kind: str) -> list[Obj]:
        return [self._store[i] for i in self._ids_by_kind[kind] if i not in self._deleted]

    def _page(
        self,
        ordered: list[Obj],
        keep: Callable[[Obj], bool],
        params: Params,
        url: str,
        missing: Callable[[str, str], FakeStripeError],
        render: Callable[[Obj], Obj] | None = None,
    ) -> Obj:
        """Cursor pagination over ``ordered`` (display order), as Stripe pages lists."""
        limit = int_param(params, "limit", minimum=1, maximum=100)
        limit = 10 if limit is None else limit
        after = str_param(params, "starting_after")
        before = str_param(params, "ending_before")
        if after and before:
            raise FakeStripeError(
                400,
                "Received both starting_after and ending_before parameters. Please pass in only "
                "one.",
            )
        position = {obj["id"]: index for index, obj in enumerate(ordered)}
        rows = [(index, obj) for index, obj in enumerate(ordered) if keep(obj)]
        if after:
            if after not in position:
                raise missing(after, "starting_after")
            rows = [row for row in rows if row[0] > position[after]]
            page, has_more = rows[:limit], len(rows) > limit
        elif before:
            if before not in position:
                raise missing(before, "ending_before")
            rows = [row for row in rows if row[0] < position[before]]
            page, has_more = rows[-limit:], len(rows) > limit
        else:
            page, has_more = rows[:limit], len(rows) > limit
        render = render or self._render
        data = [render(obj) for _, obj in page]
        return {"object": "list", "data": data, "has_more": has_more, "url": url}

    def _page_top(self, kind: str, params: Params, url: str, keep: Callable[[Obj], bool]) -> Obj:
        """A top-level list: newest first. Deleted objects still work as cursors."""
        everything = sorted(
            (self._store[i] for i in self._ids_by_kind[kind]), key=self._order_key, reverse=True
        )

        def missing(cursor: str, param: str) -> FakeStripeError:
            return FakeStripeError(
                400, f"No such {kind}: '{cursor}'", code="resource_missing", param=param
            )

        return self._page(
            everything,
            lambda obj: obj["id"] not in self._deleted and keep(obj),
            params,
            url,
            missing,
        )
