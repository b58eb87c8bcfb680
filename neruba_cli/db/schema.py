"""SQLAlchemy models: the tables this version of Neruba owns.

Every change here comes with an Alembic revision in migrations/versions; a test checks that
autogenerate finds no difference between these models and the migrated database.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from neruba_cli.db.types import ExactDecimal, UTCDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}

# MariaDB/MySQL: binary collation, so identifiers compare case-sensitively as on SQLite and
# PostgreSQL (`Acme-1` and `acme-1` are two customers everywhere).
MYSQL_TABLE = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

ID = String(40)
LONG_TEXT = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")  # MariaDB TEXT is 64 KB
SLUG = String(40)
EMAIL = String(254)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Project(Base):
    __tablename__ = "projects"
    __table_args__ = MYSQL_TABLE

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    slug: Mapped[str] = mapped_column(SLUG, unique=True)
    name: Mapped[str] = mapped_column(String(200))
    currency: Mapped[str] = mapped_column(String(3))
    timezone: Mapped[str] = mapped_column(String(64))
    rounding: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    mode: Mapped[str] = mapped_column(String(8), server_default="live")
    require_key: Mapped[bool] = mapped_column(Boolean, server_default=false())
    # What a billing rerun does with events that arrive after their period was finalized.
    late_events: Mapped[str] = mapped_column(String(16), server_default="correct")
    # What a credit note does with credits its invoice consumed: restore | keep (domain/ledger).
    credit_returns: Mapped[str] = mapped_column(String(16), server_default="restore")


class Member(Base):
    __tablename__ = "members"
    __table_args__ = (UniqueConstraint("project_id", "email"), MYSQL_TABLE)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"))
    email: Mapped[str] = mapped_column(EMAIL)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Customer(Base):
    __tablename__ = "customers"
    __table_args__ = (UniqueConstraint("project_id", "external_id"), MYSQL_TABLE)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"))
    external_id: Mapped[str] = mapped_column(String(128))
    name: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(EMAIL)
    currency: Mapped[str] = mapped_column(String(3))
    timezone: Mapped[str] = mapped_column(String(64))
    stripe_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # `neruba customer forget`: when and by whom the personal data was removed
    forgotten_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    forgotten_by: Mapped[str | None] = mapped_column(String(200))


class AuditRecord(Base):
    """Who did what, when, to which project, and how it ended. Never holds a secret."""

    __tablename__ = "audit_records"
    __table_args__ = (Index(None, "project_slug", "at"), Index(None, "at"), MYSQL_TABLE)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(200))
    actor_kind: Mapped[str] = mapped_column(String(16))
    project_slug: Mapped[str | None] = mapped_column(SLUG)
    command: Mapped[str] = mapped_column(String(100))
    arguments: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))
    exit_code: Mapped[int] = mapped_column(Integer)
    message: Mapped[str | None] = mapped_column(Text)


class Lock(Base):
    """A lease. The row outlives its holders so the fencing token only ever grows."""

    __tablename__ = "locks"
    __table_args__ = MYSQL_TABLE

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(200))
    token: Mapped[int] = mapped_column(BigInteger)
    acquired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ApiKey(Base):
    """A project-scoped API key. Only the SHA-256 of the secret is kept, never the secret."""

    __tablename__ = "api_keys"
    __table_args__ = (Index(None, "prefix"), Index(None, "project_id", "created_at"), MYSQL_TABLE)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"))
    member_id: Mapped[str | None] = mapped_column(ID, ForeignKey("members.id"))
    name: Mapped[str | None] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(24))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Invite(Base):
    """An invitation to join a project with a role; the token is stored hashed."""

    __tablename__ = "invites"
    __table_args__ = MYSQL_TABLE

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"))
    email: Mapped[str] = mapped_column(EMAIL)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Meter(Base):
    """The current definition of a meter; plan versions keep a snapshot of what they used."""

    __tablename__ = "meters"
    __table_args__ = (UniqueConstraint("project_id", "code"), MYSQL_TABLE)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"))
    code: Mapped[str] = mapped_column(String(64))
    definition: Mapped[str] = mapped_column(LONG_TEXT)  # canonical JSON
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Plan(Base):
    __tablename__ = "plans"
    __table_args__ = (UniqueConstraint("project_id", "code"), MYSQL_TABLE)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"))
    code: Mapped[str] = mapped_column(String(64))
    current_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PlanVersion(Base):
    """An immutable plan definition (charges and the meters they read, as canonical JSON)."""

    __tablename__ = "plan_versions"
    __table_args__ = (UniqueConstraint("plan_id", "version"), MYSQL_TABLE)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    plan_id: Mapped[str] = mapped_column(ID, ForeignKey("plans.id"))
    version: Mapped[int] = mapped_column(Integer)
    definition: Mapped[str] = mapped_column(LONG_TEXT)
    fingerprint: Mapped[str] = mapped_column(String(71))  # sha256:<hex>
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Subscription(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (Index(None, "project_id", "customer_id"), MYSQL_TABLE)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"))
    customer_id: Mapped[str] = mapped_column(ID, ForeignKey("customers.id"))
    anchor: Mapped[str] = mapped_column(String(16))
    trial_days: Mapped[int] = mapped_column(Integer)
    start_at: Mapped[datetime] = mapped_column(UTCDateTime())
    end_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SubscriptionPhase(Base):
    """A stretch of a subscription on one plan version; a plan change starts a new phase."""

    __tablename__ = "subscription_phases"
    __table_args__ = (UniqueConstraint("subscription_id", "start_at"), MYSQL_TABLE)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    subscription_id: Mapped[str] = mapped_column(ID, ForeignKey("subscriptions.id"))
    plan_version_id: Mapped[str] = mapped_column(ID, ForeignKey("plan_versions.id"))
    start_at: Mapped[datetime] = mapped_column(UTCDateTime())
    end_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Event(Base):
    """A usage event, unique per project by idempotency key: its current version.

    Corrections (`events void`, `events amend`, `ingest --replace`) never delete a row: a
    voided event keeps its row (and key) with `voided` set, an amended one is updated in
    place, and the version it replaced is kept in `event_versions` with who, when and why.
    `version` counts the versions (1 for an event never corrected). Billing reads the rows
    that are not voided; `voided` is in the index it reads by, before `ts`, so a meter's
    current events of a period are one index range, in (ts, id) order.

    No foreign keys (revision 0014): a bulk import paid a lookup of the project and the
    customer for every row. Ingest writes only customers it resolved in the event's project,
    neither projects nor customers are ever deleted, and `neruba check` sweeps the rule
    (`events.customers`)."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("project_id", "idempotency_key"),
        Index(None, "project_id", "customer_id", "meter", "voided", "ts"),
        Index(None, "correction"),
        MYSQL_TABLE,
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    project_id: Mapped[str] = mapped_column(ID)
    idempotency_key: Mapped[str] = mapped_column(String(255))
    customer_id: Mapped[str] = mapped_column(ID)
    meter: Mapped[str] = mapped_column(String(64))
    ts: Mapped[datetime] = mapped_column(UTCDateTime())
    quantity: Mapped[Decimal] = mapped_column(ExactDecimal())
    properties: Mapped[str] = mapped_column(  # JSON object; lines are at most 1 MiB
        Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
    )
    payload_hash: Mapped[str] = mapped_column(String(64))
    batch_id: Mapped[str | None] = mapped_column(ID)
    line: Mapped[int | None] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # "remove" takes a unique_count meter's value away; NULL is "add", the default
    operation: Mapped[str | None] = mapped_column(String(8))
    voided: Mapped[bool] = mapped_column(Boolean, server_default=false())
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    # The `event_versions` id of the latest correction (NULL: never corrected): the change
    # sequence a named events export watermarks, next to `id` for new events.
    correction: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    # The stored JSON line's `domain.events.line_digest` (NULL: from CSV, CloudEvents, the
    # HTTP API or before revision 0015): an import finds a line it repeats byte for byte
    # without checking it again. Never changed by a correction, like `payload_hash`.
    line_digest: Mapped[int | None] = mapped_column(BigInteger)


class EventVersion(Base):
    """A superseded version of an event: its content as it was, and the correction that
    replaced it (`void`, `amend` or `replace`: who, when, why). Billing never reads it."""

    __tablename__ = "event_versions"
    __table_args__ = (
        Index(None, "project_id", "customer_id", "ts"),
        Index(None, "project_id", "idempotency_key", "version"),
        MYSQL_TABLE,
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"))
    event_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer)
    customer_id: Mapped[str] = mapped_column(ID, ForeignKey("customers.id"))
    meter: Mapped[str] = mapped_column(String(64))
    ts: Mapped[datetime] = mapped_column(UTCDateTime())
    quantity: Mapped[Decimal] = mapped_column(ExactDecimal())
    properties: Mapped[str] = mapped_column(LONG_TEXT)
    operation: Mapped[str | None] = mapped_column(String(8))
    voided: Mapped[bool] = mapped_column(Boolean)
    batch_id: Mapped[str | None] = mapped_column(ID)
    line: Mapped[int | None] = mapped_column(Integer)
    change: Mapped[str] = mapped_column(String(16))  # void | amend | replace
    change_batch: Mapped[str | None] = mapped_column(ID)  # the replacing import
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    changed_by: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(String(1000))


class ImportBatch(Base):
    """The receipt of one `neruba ingest`: what came in, what it counted, what it touched."""

    __tablename__ = "import_batches"
    __table_args__ = (Index(None, "project_id", "started_at"), Index(None, "sha256"), MYSQL_TABLE)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"))
    source: Mapped[str] = mapped_column(String(1000))
    format: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # running | completed | failed
    lines: Mapped[int] = mapped_column(Integer)
    accepted: Mapped[int] = mapped_column(Integer)
    duplicates: Mapped[int] = mapped_column(Integer)
    conflicts: Mapped[int] = mapped_column(Integer)
    rejected: Mapped[int] = mapped_column(Integer)
    voided: Mapped[int] = mapped_column(Integer, server_default="0")  # --replace: events voided
    replaced: Mapped[str | None] = mapped_column(Text)  # --replace: its window, as JSON
    first_event_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_event_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    periods: Mapped[str] = mapped_column(Text)  # JSON list of YYYY-MM (UTC) with new events
    rejects_path: Mapped[str | None] = mapped_column(String(1000))
    actor: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Charge(Base):
    """A one-off charge: billed on the next invoice of its period, idempotent by key."""

    __tablename__ = "charges"
    __table_args__ = (
        UniqueConstraint("project_id", "idempotency_key"),
        Index(None, "project_id", "customer_id", "at"),
        MYSQL_TABLE,
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    customer_id: Mapped[str] = mapped_column(ID, ForeignKey("customers.id"))
    amount: Mapped[Decimal] = mapped_column(ExactDecimal())
    currency: Mapped[str] = mapped_column(String(3))
    description: Mapped[str] = mapped_column(String(500))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    payload_hash: Mapped[str] = mapped_column(String(64))
    batch_id: Mapped[str | None] = mapped_column(ID)
    line: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class BillingRun(Base):
    """One `run bill` that wrote something: who, when, under which lease, with what result."""

    __tablename__ = "billing_runs"
    __table_args__ = (Index(None, "project_id", "period", "started_at"), MYSQL_TABLE)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"))
    period: Mapped[str] = mapped_column(String(7))  # YYYY-MM
    status: Mapped[str] = mapped_column(String(16))  # running | completed | failed
    actor: Mapped[str] = mapped_column(String(200))
    holder: Mapped[str] = mapped_column(String(200))
    lock_token: Mapped[int] = mapped_column(BigInteger)
    as_of: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    fingerprint: Mapped[str | None] = mapped_column(String(71))
    summary: Mapped[str | None] = mapped_column(Text)  # JSON counts and options
    message: Mapped[str | None] = mapped_column(Text)


class InvoiceSequence(Base):
    """The last invoice number a project used: incremented in the invoice's own transaction,
    so a rolled-back invoice gives its number back and numbers stay gapless."""

    __tablename__ = "invoice_sequences"
    __table_args__ = MYSQL_TABLE

    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"), primary_key=True)
    last_number: Mapped[int] = mapped_column(BigInteger)


class Invoice(Base):
    """An invoice, supplemental invoice or credit note for one customer and billing period.

    `revision` 0 is the period's invoice; corrections of it are revisions 1, 2, ... The unique
    key is the last line of defence against two runs writing the same invoice."""

    __tablename__ = "invoices"
    __table_args__ = (
        UniqueConstraint("project_id", "number"),
        UniqueConstraint(
            "project_id",
            "customer_id",
            "period_start",
            "period_end",
            "revision",
            name="uq_invoices_customer_period_revision",  # the default passes MariaDB's 64
        ),
        Index(None, "project_id", "period", "status"),
        MYSQL_TABLE,
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"))
    number: Mapped[str] = mapped_column(String(64))
    customer_id: Mapped[str] = mapped_column(ID, ForeignKey("customers.id"))
    period: Mapped[str] = mapped_column(String(7))  # the run's YYYY-MM
    period_start: Mapped[datetime] = mapped_column(UTCDateTime())
    period_end: Mapped[datetime] = mapped_column(UTCDateTime())
    revision: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # invoice | supplemental | credit_note
    status: Mapped[str] = mapped_column(String(16))  # draft | finalized | void | paid
    currency: Mapped[str] = mapped_column(String(3))
    subtotal: Mapped[Decimal] = mapped_column(ExactDecimal())
    credits_applied: Mapped[Decimal] = mapped_column(ExactDecimal())
    total: Mapped[Decimal] = mapped_column(ExactDecimal())
    corrects_id: Mapped[str | None] = mapped_column(ID, ForeignKey("invoices.id"))
    run_id: Mapped[str | None] = mapped_column(ID)
    version: Mapped[int] = mapped_column(Integer)
    fingerprint: Mapped[str] = mapped_column(String(71))
    setup_fingerprint: Mapped[str] = mapped_column(String(71))
    event_count: Mapped[int] = mapped_column(BigInteger)
    content: Mapped[str] = mapped_column(LONG_TEXT)  # canonical JSON: lines and totals
    inputs: Mapped[str] = mapped_column(LONG_TEXT)  # canonical JSON the fingerprint is over
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finalized_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    voided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    void_reason: Mapped[str | None] = mapped_column(String(500))
    # Views over the ledger kept beside the invoice (`neruba check` compares them with the
    # entries): what it still owes and what payments settled, in minor units.
    amount_due_minor: Mapped[int] = mapped_column(BigInteger, server_default="0")
    amount_paid_minor: Mapped[int] = mapped_column(BigInteger, server_default="0")


class InvoiceLine(Base):
    """An invoice's lines as rows, for exports and sweeps; `invoices.content` is the document."""

    __tablename__ = "invoice_lines"
    __table_args__ = (UniqueConstraint("invoice_id", "position"), MYSQL_TABLE)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    invoice_id: Mapped[str] = mapped_column(ID, ForeignKey("invoices.id"))
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(String(500))
    meter: Mapped[str | None] = mapped_column(String(64))
    quantity: Mapped[Decimal | None] = mapped_column(ExactDecimal())
    amount: Mapped[Decimal] = mapped_column(ExactDecimal())
    event_count: Mapped[int | None] = mapped_column(BigInteger)


class InvoiceRevision(Base):
    """Each version of an invoice as a run wrote it: what `run diff` compares."""

    __tablename__ = "invoice_revisions"
    __table_args__ = (UniqueConstraint("invoice_id", "version"), Index(None, "run_id"), MYSQL_TABLE)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    invoice_id: Mapped[str] = mapped_column(ID, ForeignKey("invoices.id"))
    version: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[str | None] = mapped_column(ID)
    fingerprint: Mapped[str] = mapped_column(String(71))
    content: Mapped[str] = mapped_column(LONG_TEXT)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


SERIAL = BigInteger().with_variant(Integer, "sqlite")


class LedgerAccount(Base):
    """One account of the chart in domain/ledger.py, per project and currency (customer
    accounts also per customer). `balance` is the running sum of its entries (debits
    positive), moved in the same transaction as they are written."""

    __tablename__ = "ledger_accounts"
    # holder first after the project: finalization looks accounts up by their customers
    __table_args__ = (UniqueConstraint("project_id", "holder", "code", "currency"), MYSQL_TABLE)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"))
    code: Mapped[str] = mapped_column(String(40))
    currency: Mapped[str] = mapped_column(String(3))
    holder: Mapped[str] = mapped_column(ID)  # the customer's id, or "" for project accounts
    customer_id: Mapped[str | None] = mapped_column(ID, ForeignKey("customers.id"))
    balance: Mapped[int] = mapped_column(BigInteger)
    version: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class LedgerTransaction(Base):
    """A balanced posting; never updated or deleted (a trigger refuses it where the
    database has triggers)."""

    __tablename__ = "ledger_transactions"
    __table_args__ = (
        UniqueConstraint("project_id", "idempotency_key"),
        Index(None, "project_id", "effective_at"),
        Index(None, "project_id", "reference"),
        MYSQL_TABLE,
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(32))
    reference: Mapped[str] = mapped_column(String(64))
    content_hash: Mapped[str] = mapped_column(String(71))
    memo: Mapped[str] = mapped_column(String(500))
    actor: Mapped[str] = mapped_column(String(200))
    effective_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class LedgerEntry(Base):
    """One side of a posting, in integer minor units (debits positive). Append-only."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        Index(None, "transaction_id"),
        Index(None, "account_id", "effective_at"),
        Index(None, "grant_id"),
        Index(None, "invoice_id"),
        MYSQL_TABLE,
    )

    id: Mapped[int] = mapped_column(SERIAL, primary_key=True, autoincrement=True)
    transaction_id: Mapped[str] = mapped_column(ID, ForeignKey("ledger_transactions.id"))
    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"))
    account_id: Mapped[str] = mapped_column(ID, ForeignKey("ledger_accounts.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    grant_id: Mapped[str | None] = mapped_column(ID, ForeignKey("credit_grants.id"))
    invoice_id: Mapped[str | None] = mapped_column(ID, ForeignKey("invoices.id"))
    effective_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CreditGrant(Base):
    """Credit granted to a customer. `remaining_minor` is the running sum of the grant's
    wallet entries, moved only by postings; `neruba check` compares the two."""

    __tablename__ = "credit_grants"
    __table_args__ = (
        UniqueConstraint("project_id", "idempotency_key"),
        Index(None, "project_id", "customer_id"),
        MYSQL_TABLE,
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"))
    customer_id: Mapped[str] = mapped_column(ID, ForeignKey("customers.id"))
    currency: Mapped[str] = mapped_column(String(3))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    remaining_minor: Mapped[int] = mapped_column(BigInteger)
    priority: Mapped[int] = mapped_column(Integer)
    category: Mapped[str] = mapped_column(String(16))  # paid | promotional
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    reason: Mapped[str | None] = mapped_column(String(500))
    source: Mapped[str] = mapped_column(String(16))  # grant | overpayment | credit_note
    source_ref: Mapped[str | None] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    args_hash: Mapped[str] = mapped_column(String(71))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoke_reason: Mapped[str | None] = mapped_column(String(500))
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # expiry posted


class Payment(Base):
    """Money received against an invoice; `refunded_minor` is what was paid back."""

    __tablename__ = "payments"
    __table_args__ = (
        UniqueConstraint("project_id", "idempotency_key"),
        Index(None, "invoice_id"),
        MYSQL_TABLE,
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"))
    invoice_id: Mapped[str] = mapped_column(ID, ForeignKey("invoices.id"))
    customer_id: Mapped[str] = mapped_column(ID, ForeignKey("customers.id"))
    currency: Mapped[str] = mapped_column(String(3))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    applied_minor: Mapped[int] = mapped_column(BigInteger)  # the part that paid the invoice
    refunded_minor: Mapped[int] = mapped_column(BigInteger)
    overpayment_grant_id: Mapped[str | None] = mapped_column(ID)
    reference: Mapped[str | None] = mapped_column(String(255))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    args_hash: Mapped[str] = mapped_column(String(71))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Refund(Base):
    __tablename__ = "refunds"
    __table_args__ = (
        UniqueConstraint("project_id", "idempotency_key"),
        Index(None, "payment_id"),
        MYSQL_TABLE,
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"))
    payment_id: Mapped[str] = mapped_column(ID, ForeignKey("payments.id"))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(String(500))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    args_hash: Mapped[str] = mapped_column(String(71))
    refunded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class StripeLink(Base):
    """Which Stripe object carries a Neruba invoice or credit note, and how far its push got.

    `generation` grows when the Stripe object has to be made anew (deleted on the Stripe side,
    or replaced with `stripe push --replace`): it is part of every idempotency key, so a new
    generation never replays an old request while a repeated push of one generation creates
    nothing twice."""

    __tablename__ = "stripe_links"
    __table_args__ = (UniqueConstraint("project_id", "invoice_id"), MYSQL_TABLE)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"))
    invoice_id: Mapped[str] = mapped_column(ID, ForeignKey("invoices.id"))
    stripe_object: Mapped[str] = mapped_column(String(32))  # invoice | credit_note
    stripe_id: Mapped[str | None] = mapped_column(String(255))
    generation: Mapped[int] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer)  # the invoice version pushed
    state: Mapped[str] = mapped_column(String(16))  # created | finalized | voided
    pushed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class StripeObject(Base):
    """The local mirror of a Stripe object, keyed by its Stripe id; `data` is the object as
    Stripe last returned it, the other columns are what reconciliation and payment matching
    query. `deleted` marks an object a complete pull no longer found."""

    __tablename__ = "stripe_objects"
    __table_args__ = (
        UniqueConstraint("project_id", "stripe_id"),
        Index(None, "project_id", "object", "neruba_period"),
        Index(None, "project_id", "neruba_invoice"),
        Index(None, "project_id", "payment_intent"),
        MYSQL_TABLE,
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"))
    stripe_id: Mapped[str] = mapped_column(String(255))
    object: Mapped[str] = mapped_column(String(32))
    stripe_customer: Mapped[str | None] = mapped_column(String(255))
    stripe_invoice: Mapped[str | None] = mapped_column(String(255))
    payment_intent: Mapped[str | None] = mapped_column(String(255))
    charge: Mapped[str | None] = mapped_column(String(255))
    neruba_project: Mapped[str | None] = mapped_column(String(64))
    neruba_invoice: Mapped[str | None] = mapped_column(String(64))
    neruba_period: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str | None] = mapped_column(String(32))
    currency: Mapped[str | None] = mapped_column(String(3))
    amount: Mapped[int | None] = mapped_column(BigInteger)
    amount_paid: Mapped[int | None] = mapped_column(BigInteger)
    amount_refunded: Mapped[int | None] = mapped_column(BigInteger)
    stripe_created: Mapped[datetime | None] = mapped_column(UTCDateTime())
    deleted: Mapped[bool] = mapped_column(Boolean, server_default=false())
    data: Mapped[str] = mapped_column(LONG_TEXT)
    sweep: Mapped[str | None] = mapped_column(String(40))  # the pull that last saw it
    observed_at: Mapped[datetime] = mapped_column(UTCDateTime())  # as of this moment


class StripeCursor(Base):
    """Where a pull of one object type stands: `cursor` is the last object stored by the sweep
    in progress (`starting_after` for the next page), so an interrupted pull resumes there."""

    __tablename__ = "stripe_cursors"
    __table_args__ = (MYSQL_TABLE,)

    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"), primary_key=True)
    object: Mapped[str] = mapped_column(String(32), primary_key=True)
    sweep: Mapped[str | None] = mapped_column(String(40))
    since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cursor: Mapped[str | None] = mapped_column(String(255))
    seen: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class StripeWebhookEvent(Base):
    """A verified webhook delivery, kept once per Stripe event id (duplicates are no-ops);
    `failed` ones wait for `stripe webhook reprocess` with the error that stopped them."""

    __tablename__ = "stripe_webhook_events"
    __table_args__ = (
        UniqueConstraint("project_id", "event_id"),
        Index(None, "project_id", "status"),
        MYSQL_TABLE,
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"))
    event_id: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16))  # received | processed | ignored | failed
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    payload: Mapped[str] = mapped_column(LONG_TEXT)  # the raw body that was verified
    stripe_created: Mapped[datetime | None] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ExportWatermark(Base):
    """Where a named export (`neruba export KIND --name NAME`) stands: the watermark of its last
    complete file, so the next run ships only what came after. Written only once the file is
    in place under its real name; services/export/watermarks.py explains what a watermark is per
    kind."""

    __tablename__ = "export_watermarks"
    __table_args__ = (MYSQL_TABLE,)

    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    watermark: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RetentionRun(Base):
    """One `neruba retention apply`: which months it cleared and how far it got. A run that
    was killed keeps `finished_at` empty; running the command again finishes the job."""

    __tablename__ = "retention_runs"
    __table_args__ = (Index(None, "project_id", "started_at"), MYSQL_TABLE)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"))
    older_than: Mapped[str] = mapped_column(String(16))  # as given: 13m, 90d, 2y
    as_of: Mapped[datetime] = mapped_column(UTCDateTime())
    periods: Mapped[str] = mapped_column(Text)  # JSON list of YYYY-MM
    kept_properties: Mapped[str] = mapped_column(Text)  # JSON list: what meters read
    events_touched: Mapped[int] = mapped_column(BigInteger)
    properties_dropped: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))  # running | completed | failed
    actor: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class IdempotencyRecord(Base):
    """The stored answer of an HTTP request sent with an `Idempotency-Key` (api/idempotency.py):
    written in the transaction that did the request's work, so neither exists without the
    other. Kept per project and key until `expires_at`; a sweep deletes expired ones."""

    __tablename__ = "idempotency_records"
    __table_args__ = (
        UniqueConstraint("project_id", "idempotency_key"),
        Index(None, "expires_at"),
        MYSQL_TABLE,
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ID, ForeignKey("projects.id"))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(1000))
    fingerprint: Mapped[str] = mapped_column(String(71))  # sha256: of the canonical body
    status: Mapped[int] = mapped_column(Integer)  # 0 while the request's transaction runs
    response: Mapped[str | None] = mapped_column(LONG_TEXT)  # the JSON body answered
    actor: Mapped[str] = mapped_column(String(200))  # the API key that sent it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
