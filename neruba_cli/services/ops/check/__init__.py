"""`neruba check`: the consistency sweep. Every figure Neruba keeps beside the ledger — an
account's balance, a grant's remaining credit, an invoice's totals, amount due and amount paid
— is recomputed from the ledger entries and compared; invoice numbering, line rows,
corrections, billed event counts and import receipts are held to their rules too.

One module per sweep family (ledger, invoices, events, ingest), each reading rows and asking
domain/consistency.py's pure rules; runner.py runs them all inside one database snapshot.
"""
