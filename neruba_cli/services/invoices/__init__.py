"""Invoices after a run, one module per use case: read (list, show), explain, finalize, void,
verify, preview; settlement holds what finalizing and voiding do to the ledger."""
