"""The double-entry ledger: postings, credit grants and wallets, payments."""
