"""Help and start-up as a new user meets them: `neruba --help` in panels without loading the
command groups, no Python types as placeholders anywhere, help texts as paragraphs, `-h`
everywhere, and a hint when a common option comes before the sub-command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import orjson
import pytest
import typer

from neruba_cli.cli.app import COMMON_OPTIONS, TOP_LEVEL, app, walk
from neruba_cli.cli.help import NerubaCommand, NerubaGroup
from neruba_cli.cli.runtime import COMMON_PANEL
from tests.support.cli import Cli

PANELS = ("Setup", "Usage", "Billing", "Money", "Stripe", "Analysis", "Operations")
HEAVY = ("sqlalchemy", "alembic", "stripe", "pydantic")
# What Typer prints for a parameter without a metavar: <bool>, <str>, <list[str]>, <int range>,
# <path>, {files}...
TYPE_PLACEHOLDER = re.compile(
    r"<(bool|str|int|float|path|datetime|uuid|decimal|file)( range)?>|list\[|\{[A-Za-z_]+\}"
)


def _paths() -> list[tuple[str, ...]]:
    return list(walk(typer.main.get_command(app)))


def _command(path: tuple[str, ...]) -> Any:
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


def _panel_rows(stdout: str, panel: str) -> list[str]:
    """The command names listed in one panel of a help screen."""
    block = stdout.split(f"─ {panel} ─", 1)[1].split("╰", 1)[0]
    return re.findall(r"^│ (\S+)", block, re.MULTILINE)  # continuation lines start indented


def test_root_help_lists_every_command_in_its_panel(bare_cli: Cli) -> None:
    result = bare_cli("--help", db=False)
    assert result.exit_code == 0, result.stderr
    assert [p for p in PANELS if f"─ {p} ─" in result.stdout] == list(PANELS)
    listed = {panel: _panel_rows(result.stdout, panel) for panel in PANELS}
    for entry in TOP_LEVEL.values():
        assert entry.name in listed[entry.panel], (entry.name, entry.panel)
    assert sorted(name for names in listed.values() for name in names) == sorted(TOP_LEVEL)
    assert "invoice       Invoices: list, show, explain" in result.stdout
    assert "Exit codes: 0 ok, 1 error, 2 usage" in result.stdout


def test_no_help_screen_shows_a_python_type(bare_cli: Cli) -> None:
    for path in _paths():
        result = bare_cli(*path, "--help", db=False)
        assert result.exit_code == 0, (path, result.stderr)
        found = TYPE_PLACEHOLDER.search(result.stdout)
        assert found is None, (path, found and found.group(0), result.stdout)


def test_options_show_their_metavar_and_flags_none(bare_cli: Cli) -> None:
    ingest = bare_cli("ingest", "--help", db=False).stdout
    assert "Usage: neruba ingest [OPTIONS] FILE..." in ingest
    assert re.search(r"--rejects +FILE +Rejected", ingest)
    assert re.search(r"--max-future +DURATION +How far", ingest)
    assert re.search(r"--dry-run +Validate and count only", ingest)
    common = ingest.split("─ Common options ─", 1)[1]
    assert re.search(r"--db +URL +Database URL \(env NERUBA_DATABASE_URL\)", common)
    assert re.search(r"--json +One JSON document", common)
    finalize = bare_cli("invoice", "finalize", "--help", db=False).stdout
    assert "Usage: neruba invoice finalize [OPTIONS] [NUMBER]" in finalize


def test_the_command_tree_carries_the_metavars_the_reference_reads() -> None:
    """Not only the help screens: Click's help records and usage pieces (what the generated
    reference and error messages use) name parameters, never their types."""
    for path in _paths():
        command = _command(path)
        assert isinstance(command, NerubaCommand | NerubaGroup), path
        ctx = command.context_class(command, info_name=path[-1] if path else "neruba")
        records = [p.get_help_record(ctx) for p in command.get_params(ctx)]
        shown = " ".join([*command.collect_usage_pieces(ctx), *(r[0] for r in records if r)])
        assert TYPE_PLACEHOLDER.search(shown) is None, (path, shown)


def test_help_texts_are_paragraphs_without_hard_line_breaks() -> None:
    for path in _paths():
        text = _command(path).help or ""
        for paragraph in text.split("\n\n"):
            lines = paragraph.splitlines()
            assert all(line.startswith(("- ", "* ")) for line in lines[1:]), (path, paragraph)
    doctor = _command(("doctor",)).help
    assert doctor.startswith("Check configuration, database, schema, locks, stuck billing runs and")
    assert "\n" not in doctor.split("\n\n")[0]


def test_dash_h_shows_the_same_help_as_dash_dash_help(bare_cli: Cli) -> None:
    for path in [(), ("invoice",), ("invoice", "list"), ("stripe", "webhook", "ingest")]:
        short, long = bare_cli(*path, "-h", db=False), bare_cli(*path, "--help", db=False)
        assert short.exit_code == long.exit_code == 0, path
        assert short.stdout == long.stdout and "Usage: neruba" in short.stdout, path


def test_a_group_without_a_sub_command_shows_its_help(bare_cli: Cli) -> None:
    result = bare_cli("invoice", db=False)
    assert result.exit_code == 2
    assert "Usage: neruba invoice [OPTIONS] COMMAND [ARGS]..." in result.stdout
    assert "finalize" in result.stdout


@pytest.mark.parametrize(
    ("argv", "example"),
    [
        (("--json", "invoice", "list"), "neruba invoice list --json"),
        (("--db", "x.db", "run", "list"), "neruba run list --db x.db"),
        (("--project=a", "-q", "usage", "show", "c"), "neruba usage show c --project=a -q"),
        (("--json",), "neruba COMMAND --json"),
    ],
)  # fmt: skip
def test_common_options_before_the_sub_command_get_a_hint(
    bare_cli: Cli, argv: tuple[str, ...], example: str
) -> None:
    result = bare_cli(*argv, db=False)
    assert result.exit_code == 2
    message = " ".join(result.stderr.replace("│", " ").split())
    assert "must come after the sub-command" in message and example in message, result.stderr


def test_the_hint_knows_the_common_options_every_command_declares() -> None:
    for path in [("invoice", "list"), ("doctor",), ("stripe", "webhook", "ingest")]:
        common = [p for p in _command(path).params if p.rich_help_panel == COMMON_PANEL]
        declared = {opt: not p.is_flag for p in common for opt in p.opts}
        assert declared == COMMON_OPTIONS, path


def test_an_unknown_option_before_the_sub_command_is_still_clicks_error(bare_cli: Cli) -> None:
    result = bare_cli("--bogus", "invoice", "list", db=False)
    assert result.exit_code == 2
    assert "No such option: --bogus" in result.stderr


def _run(*argv: str, code: str = "") -> subprocess.CompletedProcess[str]:
    """The console script's entry point in a fresh interpreter, then `code` (it may print)."""
    script = (
        "import sys\n"
        f"sys.argv = ['neruba', *{list(argv)!r}]\n"
        "from neruba_cli.cli.app import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    status = exc.code\n"
        f"{code}"
    )
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "100"}
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, env=env
    )


def _loaded_after(*argv: str) -> set[str]:
    code = "print('\\n'.join(sorted(sys.modules)), file=sys.stderr)\n"
    return set(_run(*argv, code=code).stderr.split())


@pytest.mark.parametrize("argv", [("--help",), ("--version",), ()])
def test_help_and_version_import_no_command_group_nor_heavy_library(argv: tuple[str, ...]) -> None:
    loaded = _loaded_after(*argv)
    assert "neruba_cli.cli.app" in loaded
    assert not {name for name in loaded if name.split(".")[0] in HEAVY}, argv
    assert not {name for name in loaded if name.startswith("neruba_cli.cli.")} - {
        "neruba_cli.cli.app",
        "neruba_cli.cli.help",
    }


def test_a_group_loads_only_its_own_module() -> None:
    loaded = _loaded_after("invoice", "--help")
    assert "neruba_cli.cli.invoice" in loaded
    assert "neruba_cli.cli.stripe" not in loaded and "stripe" not in loaded
    assert "alembic" not in loaded  # a schema check does not need the migration tool


def test_misplaced_option_with_json_is_a_json_usage_error() -> None:
    result = _run("--json", "invoice", "list")
    error = orjson.loads(result.stderr.strip().splitlines()[-1])["error"]
    assert error["exit_code"] == 2 and error["type"] == "usage_error"
    assert "neruba invoice list --json" in error["message"]


def test_completion_of_command_names_comes_from_the_table() -> None:
    env = {
        **os.environ,
        "_NERUBA_COMPLETE": "complete_bash",
        "COMP_WORDS": "neruba inv",
        "COMP_CWORD": "1",
    }
    code = (
        "import sys\n"
        "from neruba_cli.cli.app import app\n"
        "try:\n"
        "    app(prog_name='neruba')\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = [m for m in sys.modules if m.startswith('neruba_cli.cli.')]\n"
        "print(' '.join(loaded), file=sys.stderr)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env
    )
    assert result.stdout.split() == ["invite", "invoice"]
    assert set(result.stderr.split()) == {"neruba_cli.cli.app", "neruba_cli.cli.help"}
