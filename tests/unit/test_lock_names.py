"""Lock names: built and taken apart in domain/lock_names.py only."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neruba_cli.domain import lock_names
from neruba_cli.domain.lock_names import LockName

slugs = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?", fullmatch=True)
labels = st.from_regex(r"[0-9]{4}-(?:[0-9]{2}|W[0-9]{2}|Q[1-4])", fullmatch=True)
export_names = st.text(min_size=1, max_size=100)
export_kinds = st.sampled_from(["invoices", "lines", "ledger", "events", "usage", "credits"])


def test_format_1_names_are_the_names_held_today() -> None:
    """Two versions of Neruba exclude each other only while they build the same names."""
    assert lock_names.LOCK_NAME_FORMAT == 1
    assert lock_names.billing("acme", "2026-10") == "acme:bill:2026-10"
    assert lock_names.export("acme", "nightly", "events") == "acme:export:nightly:events"
    assert lock_names.stripe_push("acme") == "acme:stripe:push"
    assert lock_names.stripe_pull("acme") == "acme:stripe:pull"
    assert lock_names.stripe_apply("acme") == "acme:stripe:apply"
    assert lock_names.retention("acme") == "acme:retention"


@given(slugs, labels)
def test_billing_locks_round_trip(slug: str, label: str) -> None:
    name = lock_names.billing(slug, label)
    assert name.startswith(lock_names.billing_prefix(slug))
    assert lock_names.parse(name) == LockName(slug, lock_names.BILL, label)
    assert lock_names.belongs_to(name, slug)


@given(slugs, export_names, export_kinds)
def test_export_locks_round_trip(slug: str, name: str, kind: str) -> None:
    parsed = lock_names.parse(lock_names.export(slug, name, kind))
    assert (parsed.project, parsed.purpose) == (slug, lock_names.EXPORT)
    assert (parsed.export_name, parsed.export_kind) == (name, kind)


@given(slugs, st.sampled_from(["stripe_push", "stripe_pull", "stripe_apply", "retention"]))
def test_project_wide_locks_round_trip(slug: str, builder: str) -> None:
    name = getattr(lock_names, builder)(slug)
    parsed = lock_names.parse(name)
    assert parsed.project == slug and parsed.detail is None
    assert name == f"{lock_names.project_prefix(slug)}{parsed.purpose}"


@given(slugs, slugs)
def test_a_lock_belongs_to_its_project_only(slug: str, other: str) -> None:
    name = lock_names.stripe_push(slug)
    assert lock_names.belongs_to(name, other) == (slug == other)


@pytest.mark.parametrize(
    "name", ["billing", "acme", "acme:", ":bill:2026-10", "acme:bill:", "acme:export:x", "acme:x"]
)
def test_names_not_built_here_do_not_parse(name: str) -> None:
    with pytest.raises(ValueError, match="not a Neruba lock name"):
        lock_names.parse(name)


def test_builders_refuse_what_would_not_parse_back() -> None:
    with pytest.raises(ValueError):
        lock_names.billing("acme", "")
    with pytest.raises(ValueError):
        lock_names.export("acme", "", "events")
    with pytest.raises(ValueError):
        lock_names.stripe_push("ac:me")
