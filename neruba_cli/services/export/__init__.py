"""Streaming exports of invoices, lines, ledger, events, usage, credits and payments."""
