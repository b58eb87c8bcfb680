"""Services and SQL on each database, and the fake Stripe's own tests."""
