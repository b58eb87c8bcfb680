"""A Stripe-compatible in-memory HTTP server for tests, one module per resource.

`FakeStripe` (server.py) is put together from the resource handlers (customers, invoice items,
invoices, payments, refunds, credit notes), the object store with Stripe's rendering and
pagination (store.py), the request protocol (wire.py), the URL table (routes.py) and fault
injection (faults.py). Point the code under test at it with
``NERUBA_STRIPE_API_BASE=server.url``.
"""

from tests.fakes.stripe.errors import FakeStripeError
from tests.fakes.stripe.faults import Fault
from tests.fakes.stripe.params import parse_form
from tests.fakes.stripe.server import FakeStripe
from tests.fakes.stripe.wire import RequestLog

__all__ = ["FakeStripe", "FakeStripeError", "Fault", "RequestLog", "parse_form"]
