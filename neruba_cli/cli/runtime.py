"""What every command shares: the common options, settings, the database, error handling,
exit codes and the audit record. Command modules declare parameters and render results; the
`command` decorator below does the rest, so no command can forget a step."""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Annotated, Any

import typer
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from neruba_cli.cli import values
from neruba_cli.cli.help import NerubaCommand
from neruba_cli.cli.output import Output
from neruba_cli.config import (
    ENV_API_KEY,
    ENV_CONFIG,
    ENV_DATABASE_URL,
    ENV_DEBUG,
    ENV_PROJECT,
    Settings,
    resolve_settings,
)
from neruba_cli.db import migrate
from neruba_cli.db.engine import (
    create_db_engine,
    explain_error,
    require_sqlite_file,
    write_session,
)
from neruba_cli.db.schema import Project
from neruba_cli.domain.errors import NerubaError, UsageError
from neruba_cli.services.tenancy import access, audit, projects
from neruba_cli.services.tenancy.access import Access, Actor

EXIT_INTERRUPTED = 130
COMMON_PANEL = "Common options"
CREATES_DATABASE = ("init", "db upgrade")  # the only commands that may create a SQLite file


@dataclass(frozen=True)
class CommonOptions:
    db: str | None = None
    project: str | None = None
    config: str | None = None
    json: bool = False
    quiet: bool = False


_COMMON_PARAMETERS = [
    inspect.Parameter(
        "db",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            str | None,
            typer.Option(
                "--db",
                metavar="URL",
                help=f"Database URL (env {ENV_DATABASE_URL}).",
                show_default=False,
                rich_help_panel=COMMON_PANEL,
            ),
        ],
    ),
    inspect.Parameter(
        "project",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            str | None,
            typer.Option(
                "--project",
                metavar="SLUG",
                help=f"Project slug (env {ENV_PROJECT}).",
                show_default=False,
                rich_help_panel=COMMON_PANEL,
            ),
        ],
    ),
    inspect.Parameter(
        "config",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            str | None,
            typer.Option(
                "--config",
                metavar="PATH",
                help=f"Config file, by default ./neruba.toml (env {ENV_CONFIG}).",
                show_default=False,
                rich_help_panel=COMMON_PANEL,
            ),
        ],
    ),
    inspect.Parameter(
        "json",
        inspect.Parameter.KEYWORD_ONLY,
        default=False,
        annotation=Annotated[
            bool,
            typer.Option(
                "--json",
                help="One JSON document on stdout; errors as JSON on stderr.",
                rich_help_panel=COMMON_PANEL,
            ),
        ],
    ),
    inspect.Parameter(
        "quiet",
        inspect.Parameter.KEYWORD_ONLY,
        default=False,
        annotation=Annotated[
            bool,
            typer.Option(
                "--quiet",
                "-q",
                help="Print nothing but errors (--json still prints its document).",
                rich_help_panel=COMMON_PANEL,
            ),
        ],
    ),
]
_COMMON_NAMES = tuple(parameter.name for parameter in _COMMON_PARAMETERS)


@dataclass(frozen=True)
class CommandPolicy:
    """What a command needs: its scope (see services/tenancy/access.py) and how it is recorded.

    `writes_with` names the options that turn a reading command into one that changes state
    (`export ... --name` stores a watermark and holds a lease), each with the scope it then
    needs as well; such a run is also recorded in the audit trail."""

    name: str
    scope: str
    mutating: bool
    administers_access: bool
    writes_with: Mapping[str, str] = field(default_factory=dict)

    def writes(self, arguments: Mapping[str, Any]) -> bool:
        """Whether this invocation changes state (and is therefore audited)."""
        return self.mutating or bool(self.extra_scopes(arguments))

    def extra_scopes(self, arguments: Mapping[str, Any]) -> dict[str, str]:
        """The scopes the given options add, by option name (`{"--name": "export"}`)."""
        return {
            "--" + option.replace("_", "-"): scope
            for option, scope in self.writes_with.items()
            if arguments.get(option) not in (None, False)
        }


COMMANDS: dict[str, CommandPolicy] = {}  # every registered command, for docs and the test matrix
CHECKED: dict[str, dict[str, values.Declared]] = {}  # each command's checked values, for tests


class Runtime:
    """One command invocation: resolved settings, a lazily opened engine, the actor, the clock."""

    def __init__(self, options: CommonOptions, policy: CommandPolicy, out: Output) -> None:
        self.options = options
        self.policy = policy
        self.command = policy.name
        self.out = out
        self._engines: dict[bool, Engine] = {}
        self.audited_project: str | None = None  # set by commands that name a project otherwise

    @cached_property
    def settings(self) -> Settings:
        return resolve_settings(
            db=self.options.db, project=self.options.project, config=self.options.config
        )

    def use_settings(self, settings: Settings) -> None:
        """Replace the resolved settings (for `init`, which creates the config file)."""
        self.__dict__["settings"] = settings

    def engine(self, *, check_schema: bool = True) -> Engine:
        """The database engine; by default refuses a schema that is not at this code's head."""
        if check_schema not in self._engines:
            url = self.settings.database_url
            if self.command not in CREATES_DATABASE:
                require_sqlite_file(url, self.settings.database_origin)
            engine = self._engines.get(not check_schema) or create_db_engine(url)
            if check_schema:
                migrate.ensure_at_head(engine)
            self._engines[check_schema] = engine
        return self._engines[check_schema]

    @contextmanager
    def transaction(self, *, write: bool | None = None) -> Iterator[Session]:
        """One unit of work: committed when the block ends, rolled back on any error.

        A mutating command's (or `write=True`) reads and then writes, so on SQLite it takes
        the write lock at BEGIN (`write_session`): a write committed meanwhile by another
        process (a second command, `neruba serve`'s requests) then makes it wait its turn
        instead of failing it at once."""
        if self.policy.mutating if write is None else write:
            with write_session(self.engine()) as session:
                yield session
            return
        with Session(self.engine(), expire_on_commit=False) as session, session.begin():
            yield session

    def now(self) -> datetime:
        return datetime.now(UTC)

    def moment(self, as_of: str | None, now: datetime | None = None) -> datetime:
        """The instant a command looks at: its `--as-of` when given, else now (the command's
        `now` when it already read the clock, so both name the same instant)."""
        if as_of:
            from neruba_cli.domain.timestamps import parse_ts

            return parse_ts(as_of, field="--as-of")
        return now or self.now()

    @property
    def api_key(self) -> str | None:
        return access.key_from_environment(os.environ.get(ENV_API_KEY))

    @cached_property
    def access(self) -> Access:
        """The key from NERUBA_API_KEY, checked against the database, else the local operator."""
        secret = self.api_key
        if secret is None:
            return access.operator_access()
        with self.transaction(write=True) as session:  # it may note the key's last use
            return access.authenticate(session, secret, now=self.now())

    @property
    def actor(self) -> Actor:
        return self.access.actor

    def authorize(self, arguments: Mapping[str, Any] | None = None) -> None:
        """Runs before every command. Operator commands refuse a key without even looking it
        up; every other scope is checked against the key's grant, and so are the scopes that
        options which change state add (`export ... --name` needs `export` as well)."""
        scope = self.policy.scope
        if scope == access.PUBLIC:
            return
        if scope == access.OPERATOR:
            if self.api_key is not None:
                raise access.operator_only(self.command)
            return
        access.confine(self.access, self.settings.project)
        access.authorize(self.access, scope=scope, command=self.command)
        for option, extra in self.policy.extra_scopes(arguments or {}).items():
            access.authorize(self.access, scope=extra, command=f"{self.command} {option}")

    @property
    def project_slug(self) -> str:
        slug = access.confine(self.access, self.settings.project)
        if not slug:
            raise UsageError(
                "no project selected",
                hint=f"pass --project SLUG, set {ENV_PROJECT}, or defaults.project in the config",
            )
        return slug

    @property
    def key_project(self) -> str | None:
        """For listings across projects: a key sees its own project only."""
        key = self.access.key
        return key.project_slug if key is not None else None

    def project(self, session: Session, slug: str | None = None) -> Project:
        """The project to act on, after the tenant checks (key confinement, require_key)."""
        wanted = access.confine(self.access, slug) if slug else self.project_slug
        found = projects.get_project(session, wanted)
        access.admit(self.access, found, administers_access=self.policy.administers_access)
        return found

    def read_project(self) -> Project:
        """The project, looked up in a read transaction of its own, for commands whose work
        then runs in the services' own transactions. It never queues for SQLite's write
        lock, so a command that takes a lease reaches its lease, and that lease's short wait
        and "held by" answer, even while a paused holder keeps the database's write lock."""
        with self.transaction(write=False) as session:
            return self.project(session)

    def confirm(self, question: str, *, yes: bool) -> None:
        """Dangerous actions ask on a terminal and need --yes anywhere else."""
        if yes:
            return
        if not sys.stdin.isatty():
            raise UsageError(f"{question} — not on a terminal, so pass --yes to confirm")
        if not typer.confirm(question, default=False, err=True):
            raise UsageError("cancelled; nothing was changed")

    def audit_actor(self) -> Actor:
        try:
            return self.actor
        except (NerubaError, SQLAlchemyError):
            return Actor(kind="key", id="unverified")  # a refused key, never its secret

    def audit_project(self) -> str | None:
        if self.audited_project is not None:
            return self.audited_project
        try:
            key = self.access.key
            return key.project_slug if key is not None else self.settings.project
        except (NerubaError, SQLAlchemyError):
            return None

    def close(self) -> None:
        for engine in set(self._engines.values()):
            engine.dispose()


def command(
    app: typer.Typer,
    name: str,
    *,
    scope: str,
    group: str | None = None,
    mutating: bool = False,
    administers_access: bool = False,
    writes_with: Mapping[str, str] | None = None,
    cls: type[NerubaCommand] | None = None,
    checks: Mapping[str, values.Value] | None = None,
) -> Callable[[Callable[..., int | None]], Callable[..., int | None]]:
    """Register `fn(rt, **params)` as a command with the common options appended.

    `scope` is what the command needs (see services/tenancy/access.py); it is checked before the
    command runs, after the values its parameters declare (see cli/values.py; `checks` adds
    values by parameter name, for commands registered in a loop): a value that cannot be read
    is a usage error. The wrapper turns NerubaError and database errors into one line and the
    documented exit code, and writes an audit record for every mutating command, whether it
    succeeded or not.
    """
    full_name = f"{group} {name}" if group else name
    if scope not in access.COMMAND_SCOPES:
        raise ValueError(f"{full_name}: unknown scope {scope!r}")
    for extra in (writes_with or {}).values():
        if extra not in access.SCOPES:
            raise ValueError(f"{full_name}: unknown scope {extra!r}")
    policy = CommandPolicy(full_name, scope, mutating, administers_access, dict(writes_with or {}))
    COMMANDS[full_name] = policy

    def decorate(fn: Callable[..., int | None]) -> Callable[..., int | None]:
        signature = inspect.signature(fn, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "rt"]
        checked = values.declared(((p.name, p.annotation) for p in own), checks or {})
        CHECKED[full_name] = checked

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> int | None:
            common = CommonOptions(**{key: kwargs.pop(key) for key in _COMMON_NAMES})
            out = Output(json=common.json, quiet=common.quiet)
            rt = Runtime(common, policy, out)
            code, message = _run(rt, fn, kwargs, checked)
            if policy.writes(kwargs):
                _audit(rt, kwargs, code, message)
            rt.close()
            if code:
                raise typer.Exit(code)
            return None

        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*own, *_COMMON_PARAMETERS]
        )
        wrapper.__annotations__ = {
            **{p.name: p.annotation for p in own},
            **{p.name: p.annotation for p in _COMMON_PARAMETERS},
        }
        app.command(name, cls=cls or NerubaCommand)(wrapper)
        return fn

    return decorate


def _run(
    rt: Runtime,
    fn: Callable[..., int | None],
    kwargs: dict[str, Any],
    checked: dict[str, values.Declared],
) -> tuple[int, str | None]:
    try:
        values.check_all(checked, kwargs, now=rt.now())
        rt.authorize(kwargs)
        return int(fn(rt, **kwargs) or 0), None
    except NerubaError as exc:
        rt.out.error(exc)
        return exc.exit_code, str(exc)
    except SQLAlchemyError as exc:
        url = rt.settings.database_url if "settings" in rt.__dict__ else "?"
        error = explain_error(exc, url)
        _debug_traceback(rt)
        rt.out.error(error)
        return error.exit_code, str(error)
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        rt.out.error(NerubaError("interrupted"))
        return EXIT_INTERRUPTED, "interrupted"
    except Exception as exc:
        _debug_traceback(rt)
        error = NerubaError(
            f"internal error: {type(exc).__name__}: {exc}",
            hint=f"set {ENV_DEBUG}=1 for a traceback",
        )
        rt.out.error(error)
        return 1, str(error)


def _debug_traceback(rt: Runtime) -> None:
    if os.environ.get(ENV_DEBUG) == "1":
        rt.out.stderr.print_exception(show_locals=True)


def _audit(rt: Runtime, arguments: dict[str, Any], code: int, message: str | None) -> None:
    """Best effort: an unreachable database cannot hold the record of its own unreachability."""
    try:
        engine = rt.engine(check_schema=False)
        audit.record(
            engine,
            actor=rt.audit_actor(),
            project_slug=rt.audit_project(),
            command=rt.command,
            arguments=arguments,
            outcome=audit.Outcome(code, message),
            now=rt.now(),
        )
    except Exception:  # the command's own outcome was already reported; never mask it
        _debug_traceback(rt)
