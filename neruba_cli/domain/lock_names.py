"""Lock names: which lease a job holds, written here and read here.

A name is `<project slug>:<purpose>[:<detail>]`, for instance `acme:bill:2026-10`. The slug
comes first so that an API key, confined to its project, sees and releases only names that
start with `<slug>:`. The name *is* the lock: two processes exclude each other only when they
build the same string, including processes of two Neruba versions side by side on two cron
hosts during an upgrade, and a lock's row (whose fencing token only ever grows) is found by
it. So this is format 1, kept as it is; a later format would have to take both names, the old
and the new, until no process of the old version can be running.
"""

from __future__ import annotations

from dataclasses import dataclass

LOCK_NAME_FORMAT = 1
SEPARATOR = ":"

BILL = "bill"  # one month (or billing period) of a project: `run bill`, finalize, void
EXPORT = "export"  # one named export of one kind
STRIPE_PUSH = "stripe:push"
STRIPE_PULL = "stripe:pull"
STRIPE_APPLY = "stripe:apply"  # recording what Stripe collected or refunded (pull, webhooks)
RETENTION = "retention"

# the purposes without a detail, and those followed by one
_WHOLE_PROJECT = (STRIPE_PUSH, STRIPE_PULL, STRIPE_APPLY, RETENTION)
_WITH_DETAIL = (BILL, EXPORT)


@dataclass(frozen=True)
class LockName:
    """A lock name taken apart. `detail` is the period label of a billing lock, and
    `(name, kind)` of an export lock folded into `export_name` and `export_kind`."""

    project: str  # the slug
    purpose: str
    detail: str | None = None

    @property
    def export_name(self) -> str:
        return (self.detail or "").rpartition(SEPARATOR)[0]

    @property
    def export_kind(self) -> str:
        return (self.detail or "").rpartition(SEPARATOR)[2]


def project_prefix(slug: str) -> str:
    """What every lock of the project starts with."""
    if not slug or SEPARATOR in slug:
        raise ValueError(f"project slug {slug!r} cannot start a lock name")
    return f"{slug}{SEPARATOR}"


def parse_prefix(prefix: str) -> str:
    """The slug of a `project_prefix`."""
    slug, separator, rest = prefix.partition(SEPARATOR)
    if not slug or not separator or rest:
        raise ValueError(f"{prefix!r} is not the lock prefix of a project")
    return slug


def billing(slug: str, label: str) -> str:
    """The lease a billing run of one period holds (and finalize and void, which must not
    run beside it); doctor finds a run's lease by it."""
    if not label:
        raise ValueError("a billing lock names its period")
    return f"{billing_prefix(slug)}{label}"


def billing_prefix(slug: str) -> str:
    """What the billing locks of every period of the project start with."""
    return f"{project_prefix(slug)}{BILL}{SEPARATOR}"


def export(slug: str, name: str, kind: str) -> str:
    """One named export of one kind runs at a time (its watermark moves once per file)."""
    if not name or not kind or SEPARATOR in kind:
        raise ValueError(f"export {name!r} of kind {kind!r} cannot name a lock")
    return f"{project_prefix(slug)}{EXPORT}{SEPARATOR}{name}{SEPARATOR}{kind}"


def stripe_push(slug: str) -> str:
    return f"{project_prefix(slug)}{STRIPE_PUSH}"


def stripe_pull(slug: str) -> str:
    return f"{project_prefix(slug)}{STRIPE_PULL}"


def stripe_apply(slug: str) -> str:
    return f"{project_prefix(slug)}{STRIPE_APPLY}"


def retention(slug: str) -> str:
    return f"{project_prefix(slug)}{RETENTION}"


def belongs_to(name: str, slug: str) -> bool:
    """Whether the lock is one of the project's (an API key touches only those)."""
    return name.startswith(project_prefix(slug))


def parse(name: str) -> LockName:
    """Take apart a name built here; ValueError for any other name."""
    slug, separator, rest = name.partition(SEPARATOR)
    if not slug or not separator:
        raise ValueError(f"{name!r} is not a Neruba lock name")
    if rest in _WHOLE_PROJECT:
        return LockName(slug, rest)
    for purpose in _WITH_DETAIL:
        start = f"{purpose}{SEPARATOR}"
        if rest.startswith(start):
            detail = rest[len(start) :]
            parsed = LockName(slug, purpose, detail)
            if not detail or (
                purpose == EXPORT and not (parsed.export_name and parsed.export_kind)
            ):
                break
            return parsed
    raise ValueError(f"{name!r} is not a Neruba lock name")
