"""Streaming exports of invoices, lines, ledger, events, usage, credits and payments.

kinds.py is the registry (one entry per kind: columns, query, row format), with the queries
in documents.py and journals.py; plan.py what a run was asked and resolved to; watermarks.py
where an incremental run starts and ends; writing.py the streaming to CSV or JSONL.
"""
