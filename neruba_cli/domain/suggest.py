"""Near-miss hints: the known name an operator probably meant when a name is unknown
(`api_call` for the meter `api_calls`, `databse` for the section `database`)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

CUTOFF = 0.75  # close enough that the hint is likely right; a wrong hint costs more than none


def close_match(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to `word` (case aside), when one is close enough."""
    by_folded: dict[str, str] = {}
    for candidate in candidates:
        by_folded.setdefault(candidate.casefold(), candidate)
    matches = difflib.get_close_matches(word.casefold(), list(by_folded), n=1, cutoff=CUTOFF)
    return by_folded[matches[0]] if matches else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`did you mean 'api_calls'?`, or an empty string when nothing is close."""
    match = close_match(word, candidates)
    return f"did you mean {match!r}?" if match is not None and match != word else ""
