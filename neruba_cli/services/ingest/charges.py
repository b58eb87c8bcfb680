"""`neruba charge add`: one one-off charge through the same path as imported ones.

The charge is written and classified by the import's own writer (writer.py), so a repeated
`charge add` is a duplicate and the same key with another payload a conflict, exactly as in a
file; it gets a batch id of its own to tell it apart, and no receipt.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine

from neruba_cli.db.schema import Project
from neruba_cli.domain.charges import ChargeInput
from neruba_cli.services.ingest.posted import write_one
from neruba_cli.services.ingest.receipts import IngestSummary
from neruba_cli.services.ingest.validation import Pending


def record_charge(
    engine: Engine, project: Project, charge: ChargeInput, *, now: datetime
) -> tuple[str, IngestSummary]:
    """One charge through the same path as imported ones: accepted, duplicate or conflict."""
    pending = Pending(1, b"", charge, charge.payload_hash())
    outcome, summary = write_one(engine, project, pending, now=now, source="charge add")
    return outcome.status, summary
