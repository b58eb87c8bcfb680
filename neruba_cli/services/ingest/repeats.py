"""Lines an import finds stored byte for byte: duplicates without a second check.

Importing a file again (a cron job that runs twice, an upload retried) used to parse and check
every line only for the writer to find each one stored with the same payload. Each event read
from a JSON line is stored with its line digest (`domain.events.line_digest`: the line's bytes
and the time zone naive timestamps are read in). Before a chunk of lines is parsed, the reader
looks their idempotency keys up: a line whose key is stored with that line's digest is the
line that stored it, so it is a duplicate, counted as the writer would count it (a repeat of a
corrected event when the event was voided or amended since: the correction stands). Every
other line is parsed, checked and written as before, and the writer still tells duplicates
from conflicts by the canonical payload.

A line found this way is a duplicate even if the catalog no longer has its meter or a later
`--max-future` would refuse its timestamp: the event is stored, and a duplicate changes
nothing. Nor is it warned about again (a count meter's ignored quantity): that was said when
it was imported. Looking up costs one query per chunk, so it runs while chunks keep finding repeats
and on one chunk in `PROBE_EVERY` otherwise: a first import pays for a handful of lookups.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import tzinfo

from sqlalchemy import Engine

from neruba_cli.db import bulk_insert
from neruba_cli.domain.events import MAX_KEY, line_digest

CHUNK = 5000  # lines looked up at once
PROBE_EVERY = 20  # when chunks stop finding repeats, look up one chunk in this many
ARMED_SHARE = 4  # keep looking while at least 1 line in this many was a repeat

# The key as most lines spell it, without escapes (a line spelling it another way is simply
# checked; whatever is found here only ever matches the line that stored it)
_KEY = re.compile(rb'"idempotency_key"\s*:\s*"([^"\\]+)"')


@dataclass(frozen=True)
class Repeated:
    """A line that repeats a stored event byte for byte."""

    corrected: bool  # the event was voided or amended since it was stored


REPEATED = Repeated(corrected=False)
REPEATED_CORRECTED = Repeated(corrected=True)


class Repeats:
    """Finds, chunk by chunk, the lines of one import that its project stores already."""

    def __init__(self, engine: Engine, project_id: str, assume_tz: tzinfo | None) -> None:
        self.engine = engine
        self.project_id = project_id
        self.assume_tz = assume_tz
        self.armed = True
        self.idle = 0  # chunks not looked up since the last lookup

    def sift(self, lines: list[bytes | None]) -> list[Repeated | None]:
        """For each line (None: unreadable), whether it repeats a stored event."""
        found: list[Repeated | None] = [None] * len(lines)
        if not self.armed:
            self.idle += 1
            if self.idle < PROBE_EVERY:
                return found
        self.idle = 0
        where: dict[str, list[int]] = {}
        for index, data in enumerate(lines):
            match = _KEY.search(data) if data else None
            if match is not None:
                try:
                    key = match.group(1).decode()
                except UnicodeDecodeError:
                    continue
                # as a stored key is: stripped, no NUL (a line with one is never stored)
                if len(key) <= MAX_KEY and key == key.strip() and "\x00" not in key:
                    where.setdefault(key, []).append(index)
        if not where:
            self.armed = False
            return found
        with self.engine.connect() as conn:
            stored = bulk_insert.stored_lines(conn, self.project_id, list(where))
        repeats = 0
        for key, (digest, corrected) in stored.items():
            for index in where[key]:
                data = lines[index]
                if data is not None and line_digest(data, self.assume_tz) == digest:
                    found[index] = REPEATED_CORRECTED if corrected else REPEATED
                    repeats += 1
        self.armed = repeats * ARMED_SHARE >= len(lines)
        return found
