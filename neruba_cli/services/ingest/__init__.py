"""Usage events in: readers, validation, idempotent storage, receipts and rejects."""
