"""Stripe's error objects, raised by handlers and rendered as Stripe renders them."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]


class FakeStripeError(Exception):
    """A Stripe API error. Handlers raise it and it is rendered the way Stripe renders errors;
    the back-office helpers raise it too when asked for something Stripe would refuse."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = code
        self.param = param

    def body(self) -> Obj:
        error: Obj = {"type": self.error_type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}
