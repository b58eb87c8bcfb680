"""New API keys and invite tokens: the domain's secret format fed with the operating system's
CSPRNG, the impure half of `neruba_cli.domain.keys`."""

from __future__ import annotations

import secrets

from neruba_cli.domain.keys import generate


def new_secret(kind_prefix: str) -> str:
    """A fresh secret (`nrb_live_...`, `nrb_test_...`, `nrb_inv_...`), shown once."""
    return generate(kind_prefix, randbelow=secrets.randbelow)
