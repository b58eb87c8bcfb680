"""The Stripe link: the SDK gateway, push, pull, the mirror, webhooks and reconciliation."""
