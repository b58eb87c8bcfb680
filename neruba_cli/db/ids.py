"""New row identifiers: the domain's id format fed with the system clock and the operating
system's CSPRNG. The impure half of `neruba_cli.domain.ids`, kept out of the domain so that
the format stays a pure function."""

from __future__ import annotations

import secrets
import time

from neruba_cli.domain.ids import make_id


def new_id(prefix: str) -> str:
    """A fresh id (`cus_01jd...`): time-ordered by the wall clock, unguessable."""
    return make_id(prefix, now_ms=time.time_ns() // 1_000_000, randbits=secrets.randbits)
