"""Help screens: Typer's layout (usage line, paragraphs, panels of arguments, options and
commands), drawn with Rich's console, table and panel only.

Why not Typer's own renderer: it imports Markdown and traceback support, which alone costs as
much as sqlite-utils' whole start-up (`neruba --help` must not be slower; see
bench/startup.py); it shows Python types as placeholders (`<bool>`, `<list[str]>`,
`{files}...`); and it keeps the hard line breaks of docstrings. Here an option shows its metavar
(a flag none), an argument its name, and each paragraph of a help text is one paragraph,
wrapped to the terminal.

Every command of the tree is a `NerubaCommand` and every group a `NerubaGroup` (or the root's
lazy group, which derives from it), so all of them share this rendering, readable usage lines
and tidy parameters. Rich is imported only when a help screen is drawn.
"""

from __future__ import annotations

import inspect
import io
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from typer._click import Command, Context, HelpFormatter, Parameter

COMMANDS_PANEL = "Commands"
ARGUMENTS_PANEL = "Arguments"
OPTIONS_PANEL = "Options"


@dataclass(frozen=True)
class Row:
    """One line of a commands panel: a sub-command, its one-line summary and its panel."""

    name: str
    summary: str
    panel: str = COMMANDS_PANEL


def prose(text: str | None) -> str:
    """A help text as paragraphs: the lines of a paragraph joined (docstrings wrap at 100
    columns, terminals at their own width), blank lines between paragraphs kept. A line that
    starts a list item (`- `, `* `) stays on its own line. Text after a form feed is for
    developers only (Click's convention) and dropped."""
    if not text:
        return ""
    cleaned = inspect.cleandoc(text).partition("\f")[0]
    paragraphs = []
    for block in cleaned.split("\n\n"):
        lines: list[str] = []
        for line in block.splitlines():
            stripped = line.strip()
            if lines and not stripped.startswith(("- ", "* ")):
                lines[-1] = f"{lines[-1]} {stripped}"
            else:
                lines.append(stripped)
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraph for paragraph in paragraphs if paragraph)


def summary(text: str | None) -> str:
    """The first paragraph: what a command listing shows."""
    return prose(text).partition("\n\n")[0]


def option_metavar(option: TyperOption) -> str:
    """What follows an option in help and usage: nothing for a flag, else its metavar or the
    option's own name in capitals (`--customer CUSTOMER`), never a Python type."""
    if option.is_flag or option.count:
        return ""
    if option.metavar:
        return option.metavar
    longest = max(option.opts, key=len)
    return longest.lstrip("-").replace("-", "_").upper()


def argument_metavar(argument: TyperArgument) -> str:
    return argument.metavar or (argument.name or "ARG").upper()


def argument_usage(argument: TyperArgument) -> str:
    """`NUMBER`, `[NUMBER]` when it may be left out, `FILE...` when it takes several."""
    name = argument_metavar(argument)
    if argument.nargs != 1:
        name += "..."
    return name if argument.required else f"[{name}]"


class ReadableArgument(TyperArgument):
    """An argument shown by its name (`FILE...`, `[NUMBER]`) wherever Typer describes it
    (help records, usage lines), never by its Python type (`<list[str]>`, `{files}...`)."""

    def display_type_rich(self, ctx: Context) -> str | None:
        return None

    def _rich_display_name(self) -> str:
        return argument_metavar(self) + ("..." if self.nargs != 1 else "")

    def _usage_display_name(self) -> str:
        return argument_usage(self)


def tidy(params: Sequence[Parameter]) -> list[Parameter]:
    """Give every parameter a readable metavar (an empty one for flags), so the command tree
    itself, not only these help screens, shows no Python types: error messages, completion
    and the generated reference read it too. Typer builds arguments itself, so each becomes a
    ReadableArgument here (same state, other display methods)."""
    for param in params:
        if isinstance(param, TyperOption) and param.metavar is None:
            param.metavar = option_metavar(param)
        elif isinstance(param, TyperArgument):
            if param.metavar is None:
                param.metavar = argument_metavar(param)
            if type(param) is TyperArgument:
                param.__class__ = ReadableArgument
    return list(params)


def usage_pieces(command: Command, ctx: Context) -> list[str]:
    pieces = [command.options_metavar] if command.options_metavar else []
    for param in command.get_params(ctx):
        if isinstance(param, TyperArgument) and not param.hidden:
            pieces.append(argument_usage(param))
    return pieces


class _Readable:
    """What NerubaCommand and NerubaGroup share: prose help, tidy parameters, this renderer."""

    help: str | None
    params: list[Parameter]

    def _tidy_init(self) -> None:
        self.help = prose(self.help) or None
        tidy(self.params)

    def get_params(self, ctx: Context) -> list[Parameter]:
        return tidy(super().get_params(ctx))  # type: ignore[misc]

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        formatter.write(render(self, ctx))

    def help_rows(self, ctx: Context) -> list[Row]:
        return []


class NerubaCommand(_Readable, TyperCommand):
    """A leaf command (every command goes through `runtime.command`, which picks this class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tidy_init()

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        return usage_pieces(self, ctx)


class NerubaGroup(_Readable, TyperGroup):
    """A command group (`neruba invoice ...`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tidy_init()

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        return [*usage_pieces(self, ctx), self.subcommand_metavar]

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        """With no sub-command, the group's help (exit 2, as a usage error): printed here
        because Typer's own handler expects its renderer to have printed it already."""
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            typer.echo(ctx.get_help(), color=ctx.color)
            ctx.exit(2)
        return super().parse_args(ctx, args)

    def help_rows(self, ctx: Context) -> list[Row]:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            text = command.short_help or summary(command.help)
            panel = getattr(command, "rich_help_panel", None) or COMMANDS_PANEL
            rows.append(Row(name, text, panel))
        return rows


# --- drawing -------------------------------------------------------------------------------


def render(command: _Readable, ctx: Context) -> str:
    """The help screen as text (with colours on a terminal unless NO_COLOR is set)."""
    from rich.console import Console
    from rich.padding import Padding
    from rich.text import Text

    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=shutil.get_terminal_size((80, 24)).columns,
        force_terminal=_colour(),
        highlight=False,
        emoji=False,
        markup=False,
    )
    usage = " ".join(["Usage:", ctx.command_path, *command.collect_usage_pieces(ctx)])  # type: ignore[attr-defined]
    console.print(Padding(Text(usage, style="bold"), 1))
    first, _, rest = prose(command.help).partition("\n\n")
    if first:
        console.print(Padding(Text(first), (0, 1, 1, 1)))
    if rest:
        console.print(Padding(Text(rest, style="dim"), (0, 1, 1, 1)))
    _parameter_panels(console, command.get_params(ctx))
    _command_panels(console, command.help_rows(ctx))
    epilog = prose(getattr(command, "epilog", None))
    if epilog:
        console.print(Padding(Text(epilog), 1))
    return buffer.getvalue()


def _colour() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def _parameter_panels(console: Console, params: Sequence[Parameter]) -> None:
    panels: dict[str, list[Parameter]] = {ARGUMENTS_PANEL: [], OPTIONS_PANEL: []}
    for param in params:
        if getattr(param, "hidden", False):
            continue
        default = ARGUMENTS_PANEL if isinstance(param, TyperArgument) else OPTIONS_PANEL
        panels.setdefault(getattr(param, "rich_help_panel", None) or default, []).append(param)
    for title, members in panels.items():
        if members:
            _panel(console, title, [_parameter_row(param) for param in members])


def _parameter_row(param: Parameter) -> list[RenderableType]:
    from rich.text import Text

    extras = []
    if isinstance(param, TyperArgument):
        names, short, metavar = argument_metavar(param), "", ""
        if param.nargs != 1:
            names += "..."
    else:
        assert isinstance(param, TyperOption)
        long = [opt for opt in param.opts if opt.startswith("--")]
        negative = [opt for opt in param.secondary_opts if opt.startswith("--")]
        names = " / ".join([", ".join(long), *negative] if negative else [", ".join(long)])
        short = ", ".join(opt for opt in param.opts if not opt.startswith("--"))
        metavar = option_metavar(param)
        if param.multiple and "repeat" not in (param.help or "").lower():
            extras.append("[repeatable]")
    default = _default_text(param)
    if default:
        extras.insert(0, f"[default: {default}]")
    if param.required:
        extras.append("[required]")
    text = Text(prose(getattr(param, "help", None)).replace("\n\n", "\n"))
    if extras:
        text.append(("  " if text else "") + " ".join(extras), style="dim")
    required = Text("*", style="red") if param.required else Text("")
    return [
        required,
        Text(names, style="bold cyan"),
        Text(short, style="bold green"),
        Text(metavar, style="bold yellow"),
        text,
    ]


def _default_text(param: Parameter) -> str:
    show = getattr(param, "show_default", False)
    if isinstance(show, str):
        return show
    default = param.default
    flag = getattr(param, "is_flag", False)
    if not show or flag or default in (None, (), []) or callable(default):
        return ""
    return str(getattr(default, "value", default))


def _command_panels(console: Console, rows: Sequence[Row]) -> None:
    from rich.text import Text

    panels: dict[str, list[Row]] = {}
    for row in rows:
        panels.setdefault(row.panel, []).append(row)
    width = max((len(row.name) for row in rows), default=0)
    for title, members in panels.items():
        cells = [[Text(row.name, style="bold cyan"), Text(row.summary)] for row in members]
        _panel(console, title, cells, first_width=width)


def _panel(
    console: Console,
    title: str,
    rows: Sequence[Sequence[RenderableType]],
    first_width: int | None = None,
) -> None:
    """A titled box of rows; empty columns (no short options, no metavars) are left out."""
    from rich.box import ROUNDED
    from rich.panel import Panel
    from rich.table import Table

    keep = [i for i in range(len(rows[0])) if any(str(row[i]) for row in rows)]
    grid = Table.grid(padding=(0, 2), expand=True)
    for position, _index in enumerate(keep):
        last = position == len(keep) - 1
        width = first_width if position == 0 and first_width else None
        grid.add_column(no_wrap=not last, ratio=1 if last else None, width=width)
    for row in rows:
        grid.add_row(*(row[i] for i in keep))
    console.print(Panel(grid, title=title, title_align="left", box=ROUNDED, border_style="dim"))
