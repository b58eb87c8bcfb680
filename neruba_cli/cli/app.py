"""The root of the `neruba` command: the table of contents of the CLI, nothing else.

Command groups load lazily. `TOP_LEVEL` below names every top-level command with its help panel
and one-line summary, so `neruba --help`, `--version` and shell completion of command names
import no group module (and with them SQLAlchemy, Alembic, Stripe, pydantic...): a group's
module is imported only when that group runs or shows its own help. The Click tree stays
whole: `LazyGroup.commands` is a mapping over the table that builds a group on first access,
so walking `typer.main.get_command(app)` (for the docs, the access matrix) reaches every command.
"""

from __future__ import annotations

import importlib
import shlex
import sys
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer import _click
from typer._click.exceptions import UsageError as ClickUsageError
from typer._click.shell_completion import CompletionItem
from typer.core import TyperGroup

from neruba_cli.cli.help import NerubaGroup, Row

if TYPE_CHECKING:
    from neruba_cli.cli.runtime import CommandPolicy


@dataclass(frozen=True)
class Entry:
    """A top-level command: where it is defined, the panel `neruba --help` shows it in, and
    its one-line summary (a group's help; a single command's listing, its docstring being the
    full help). `source` is `module:attribute`: a Typer app (a group), or a
    `register(app)` function that adds one command."""

    name: str
    panel: str
    summary: str
    source: str


SETUP, USAGE, BILLING, MONEY, STRIPE, ANALYSIS, OPERATIONS = (
    "Setup",
    "Usage",
    "Billing",
    "Money",
    "Stripe",
    "Analysis",
    "Operations",
)
_CLI = "neruba_cli.cli"

TOP_LEVEL: dict[str, Entry] = {
    entry.name: entry
    for entry in (
        Entry("init", SETUP, "Write ./neruba.toml and create or upgrade the database.",
              f"{_CLI}.init:register"),
        Entry("demo", SETUP, "Run Neruba end to end on a throwaway SQLite database.",
              f"{_CLI}.demo:register"),
        Entry("db", SETUP, "Database schema: upgrade, current revision, downgrade.",
              f"{_CLI}.db:app"),
        Entry("project", SETUP,
              "Projects (tenants): each has its own customers, catalog and invoices.",
              f"{_CLI}.project:app"),
        Entry("customer", SETUP, "Customers of a project, keyed by your own external id.",
              f"{_CLI}.customer:app"),
        Entry("catalog", SETUP, "The pricing catalog: meters, versioned plans, and quotes.",
              f"{_CLI}.catalog:app"),
        Entry("subscription", SETUP,
              "Subscriptions: customers on plan versions, with changes and cancels.",
              f"{_CLI}.subscription:app"),
        Entry("key", SETUP,
              "Project API keys: scoped, expiring, revocable; the secret is shown once.",
              f"{_CLI}.key:app"),
        Entry("member", SETUP, "Members of a project and their roles.",
              f"{_CLI}.member:members_app"),
        Entry("invite", SETUP, "Invitations to join a project (the token is shown once).",
              f"{_CLI}.member:invites_app"),
        Entry("ingest", USAGE,
              "Import usage events; replaying a file never double-counts. Exit 3 on rejects.",
              f"{_CLI}.ingest:register"),
        Entry("events", USAGE, "Stored usage events and import receipts.",
              f"{_CLI}.ingest:events_app"),
        Entry("charge", USAGE, "One-off charges, billed on the next invoice of their period.",
              f"{_CLI}.ingest:charge_app"),
        Entry("usage", USAGE,
              "What a customer used, bucket by bucket, and what it will cost.",
              f"{_CLI}.usage:app"),
        Entry("run", BILLING, "Billing runs: bill a month, then list, show and diff the runs.",
              f"{_CLI}.run:app"),
        Entry("invoice", BILLING,
              "Invoices: list, show, explain, finalize, void, verify, preview.",
              f"{_CLI}.invoice:app"),
        Entry("credits", MONEY, "Credit grants: grant, revoke, list, expire.",
              f"{_CLI}.credits:app"),
        Entry("wallet", MONEY, "Customer wallets: the credit a customer holds.",
              f"{_CLI}.wallet:app"),
        Entry("ledger", MONEY, "The double-entry ledger under every balance.",
              f"{_CLI}.ledger:app"),
        Entry("payment", MONEY, "Payments against finalized invoices, and refunds.",
              f"{_CLI}.payment:app"),
        Entry("stripe", STRIPE, "Push invoices to Stripe, pull payments back, ingest webhooks.",
              f"{_CLI}.stripe:app"),
        Entry("reconcile", STRIPE,
              "Compare what Neruba billed with what an outside system holds.",
              f"{_CLI}.reconcile:app"),
        Entry("compare", ANALYSIS,
              "Compare a period's invoices with a baseline; exit 4 when drift is too large.",
              f"{_CLI}.compare:register"),
        Entry("simulate", ANALYSIS,
              "What-if pricing: bill a past month's usage on a candidate catalog.",
              f"{_CLI}.simulate:register"),
        Entry("export", ANALYSIS,
              "Stream invoices, lines, the ledger, events, usage, credits or payments to CSV "
              "or JSONL, in full or incrementally (--since, --name).",
              f"{_CLI}.export:app"),
        Entry("doctor", OPERATIONS,
              "Check configuration, database, locks, stuck runs, webhooks and clock skew.",
              f"{_CLI}.doctor:register"),
        Entry("check", OPERATIONS,
              "Consistency sweep of ledger, invoices, events and receipts; exit 4 on a finding.",
              f"{_CLI}.check:register"),
        Entry("stats", OPERATIONS,
              "Operating figures: events, ingest lag, billing runs, invoices, liabilities.",
              f"{_CLI}.stats:register"),
        Entry("serve", OPERATIONS,
              "Serve the HTTP API (ingest, reads, credits, health, metrics) on project keys.",
              f"{_CLI}.serve:register"),
        Entry("locks", OPERATIONS,
              "Lease locks: list who holds what, release a lock whose holder died.",
              f"{_CLI}.locks:app"),
        Entry("audit", OPERATIONS, "The audit trail of mutating commands.",
              f"{_CLI}.audit:app"),
        Entry("retention", OPERATIONS,
              "Retention: drop raw event detail of closed, reconciled periods.",
              f"{_CLI}.retention:app"),
    )
}  # fmt: skip

# The options every command takes (declared in runtime.py), with whether each takes a value:
# typed before the sub-command they get a hint instead of "No such option".
COMMON_OPTIONS = {
    "--db": True,
    "--project": True,
    "--config": True,
    "--json": False,
    "--quiet": False,
    "-q": False,
}

HELP = """Neruba: usage, hybrid and prepaid billing, run from a terminal or from cron.

Common options (--db, --project, --config, --json, --quiet) go after the sub-command:
neruba invoice list --json."""

EXIT_CODES = "Exit codes: 0 ok, 1 error, 2 usage, 3 rejected lines, 4 discrepancies, 5 lock held."


def build(entry: Entry) -> _click.Command:
    """The Click command of one top-level entry, built from its module (imported here)."""
    module_name, _, attribute = entry.source.partition(":")
    target = getattr(importlib.import_module(module_name), attribute)
    scratch = typer.Typer(add_completion=False, rich_markup_mode=app.rich_markup_mode)
    if isinstance(target, typer.Typer):
        scratch.add_typer(
            target,
            name=entry.name,
            help=entry.summary,
            cls=NerubaGroup,
            no_args_is_help=True,
            rich_help_panel=entry.panel,
        )
    else:
        target(scratch)
    built = typer.main.get_command(scratch)
    command = built.commands[entry.name] if isinstance(built, TyperGroup) else built
    command.rich_help_panel = entry.panel  # type: ignore[attr-defined]
    command.short_help = entry.summary
    return command


class _LazyCommands(MutableMapping[str, _click.Command]):
    """The root's sub-commands: names and summaries from `TOP_LEVEL`, each command built on
    first access. Iterating (names, `in`, `len`) imports nothing; reading a value does."""

    def __init__(self) -> None:
        self._built: dict[str, _click.Command] = {}

    def __getitem__(self, name: str) -> _click.Command:
        if name not in self._built:
            self._built[name] = build(TOP_LEVEL[name])
        return self._built[name]

    def __setitem__(self, name: str, command: _click.Command) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        del self._built[name]

    def __contains__(self, name: object) -> bool:
        return name in TOP_LEVEL or name in self._built

    def __iter__(self) -> Iterator[str]:
        yield from TOP_LEVEL
        yield from (name for name in self._built if name not in TOP_LEVEL)

    def __len__(self) -> int:
        return len(set(TOP_LEVEL) | set(self._built))


class LazyGroup(NerubaGroup):
    """The root group: sub-commands from `TOP_LEVEL`, loaded when used."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _LazyCommands()

    def help_rows(self, ctx: _click.Context) -> list[Row]:
        return [Row(entry.name, entry.summary, entry.panel) for entry in TOP_LEVEL.values()]

    def shell_complete(self, ctx: _click.Context, incomplete: str) -> list[CompletionItem]:
        """Command names with their summaries, from the table: a Tab imports no group."""
        names = [
            CompletionItem(entry.name, help=entry.summary)
            for entry in TOP_LEVEL.values()
            if entry.name.startswith(incomplete)
        ]
        return [*names, *_click.Command.shell_complete(self, ctx, incomplete)]

    def parse_args(self, ctx: _click.Context, args: list[str]) -> list[str]:
        if not ctx.resilient_parsing:
            _refuse_common_options_first(ctx, args)
        return super().parse_args(ctx, args)


def _refuse_common_options_first(ctx: _click.Context, args: list[str]) -> None:
    """`neruba --json invoice list`: the common options belong to each command, so say where
    they go (exit 2) rather than Click's bare "No such option"."""
    misplaced: list[str] = []
    rest = list(args)
    while rest and rest[0].startswith("-") and rest[0] != "--":
        name, has_value, _ = rest[0].partition("=")
        if name not in COMMON_OPTIONS:
            if name in ("--version", "-h", "--help", "--install-completion", "--show-completion"):
                rest.pop(0)
                continue
            return  # an unknown option: Click's own error says so
        taken = 2 if COMMON_OPTIONS[name] and not has_value else 1
        misplaced += rest[:taken]
        del rest[:taken]
    if not misplaced:
        return
    names = ", ".join(dict.fromkeys(arg.partition("=")[0] for arg in misplaced if arg[:1] == "-"))
    example = shlex.join(["neruba", *(rest or ["COMMAND"]), *misplaced])
    raise ClickUsageError(f"{names} must come after the sub-command, as in: {example}", ctx=ctx)


app = typer.Typer(
    name="neruba",
    cls=LazyGroup,
    help=HELP,
    epilog=EXIT_CODES,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from neruba_cli import __version__

        typer.echo(f"neruba {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """The root takes no options of its own besides --version and --help."""


def command_policies() -> dict[str, CommandPolicy]:
    """Every command's policy (scope, mutating...) by full name, every group loaded first:
    for the access matrix and the docs, which must see all commands, not only those used."""
    from neruba_cli.cli.runtime import COMMANDS as POLICIES

    for _path in walk(typer.main.get_command(app)):
        pass
    return dict(POLICIES)


def walk(command: _click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path of the tree, groups included (the root is `()`)."""
    yield path
    for name, child in getattr(command, "commands", {}).items():
        yield from walk(child, (*path, name))


def main() -> None:
    """The console script. With --json, even a usage error (a bad flag) is JSON on stderr."""
    if "--json" not in sys.argv[1:]:
        app()
        return
    try:
        result = app(standalone_mode=False)
    except Exception as exc:
        exit_code, describe = getattr(exc, "exit_code", None), getattr(exc, "format_message", None)
        if not isinstance(exit_code, int) or describe is None:
            raise
        from neruba_cli.cli.output import Output
        from neruba_cli.domain.errors import UsageError

        Output(json=True).error(UsageError(describe()))
        sys.exit(exit_code)
    sys.exit(result if isinstance(result, int) else 0)
