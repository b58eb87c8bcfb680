"""`neruba` run in-process, the way the tests drive it.

The Click command behind the Typer app is built once per process (building it walks every
command group and option, a noticeable cost when a suite makes thousands of calls) and each
call runs it inside Typer's test isolation: captured stdout and stderr, a pinned terminal.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Any

import orjson
from typer.main import get_command
from typer.testing import CliRunner

from neruba_cli.cli.app import app

TERMINAL = {"NO_COLOR": "1", "COLUMNS": "120", "TERM": "dumb"}


@functools.cache
def neruba_command() -> Any:
    """The root Click command of `neruba`, built on first use."""
    return get_command(app)


@dataclass
class Outcome:
    exit_code: int
    stdout: str
    stderr: str
    stdout_bytes: bytes = b""

    def json(self) -> Any:
        return orjson.loads(self.stdout)

    def error(self) -> dict[str, Any]:
        return dict(orjson.loads(self.stderr.strip().splitlines()[-1])["error"])


class Cli:
    """Runs `neruba` in-process with a pinned terminal: no colour, 120 columns. With a
    database URL, every call gets `--db URL` unless it says `db=False`."""

    def __init__(self, db_url: str | None) -> None:
        self.db_url = db_url
        self.runner = CliRunner(env=TERMINAL)

    def __call__(
        self,
        *args: str,
        db: bool = True,
        input: str | bytes | None = None,
        env: dict[str, str] | None = None,
    ) -> Outcome:
        argv = [*args]
        if db and self.db_url is not None:
            argv += ["--db", self.db_url]
        return self.invoke(argv, input=input, env=env)

    def invoke(
        self, argv: list[str], input: str | bytes | None = None, env: dict[str, str] | None = None
    ) -> Outcome:
        """What `CliRunner.invoke` does, on the command built once: exceptions other than
        SystemExit propagate, so a crash fails the test with its traceback."""
        command = neruba_command()
        exit_code = 0
        with self.runner.isolation(input=input, env=env) as (out, err, _mixed):
            try:
                command.main(args=argv, prog_name=command.name or "root")
            except SystemExit as exc:
                code = 0 if exc.code is None else exc.code
                if not isinstance(code, int):
                    sys.stdout.write(f"{code}\n")
                    code = 1
                exit_code = code
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                stdout, stderr = out.getvalue(), err.getvalue()
        charset = self.runner.charset
        return Outcome(
            exit_code,
            stdout.decode(charset, "replace").replace("\r\n", "\n"),
            stderr.decode(charset, "replace").replace("\r\n", "\n"),
            stdout,
        )


def ok(cli: Cli, *args: str, project: str = "acme") -> Any:
    """`neruba ARGS --project acme --json`: exit 0, and its JSON."""
    result = cli(*args, "--project", project, "--json")
    assert result.exit_code == 0, (args, result.stdout[-3000:], result.stderr[-3000:])
    return result.json()


def expect(cli: Cli, code: int, *args: str, project: str = "acme") -> Any:
    """`neruba ARGS --project acme --json` exits `code`: its JSON, or the error object."""
    result = cli(*args, "--project", project, "--json")
    assert result.exit_code == code, (args, result.stdout[-3000:], result.stderr[-3000:])
    return result.json() if result.stdout.strip() else result.error()


def fails(cli: Cli, code: int, *args: str, project: str = "acme") -> dict[str, Any]:
    """`neruba ARGS --project acme --json` exits `code`: the error object on stderr."""
    result = cli(*args, "--project", project, "--json")
    assert result.exit_code == code, (args, result.stdout[-3000:], result.stderr[-3000:])
    return result.error()
