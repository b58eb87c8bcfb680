"""Invoices after a run: documents, explanations, finalization, voids and their ledger effects."""
