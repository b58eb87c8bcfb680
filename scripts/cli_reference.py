"""Write docs/reference/cli.md from the `neruba` command tree, or check that it is current.

The reference is generated, never edited by hand, so it cannot drift from the CLI: the help
texts in neruba_cli/cli/ are its only source. It walks the Click command tree that Typer builds
(`typer.main.get_command`) and writes, per command, its usage line, its help text and a table
of its own arguments and options. The options every command shares are listed once at the top.

The output depends on nothing but the command tree: no terminal width, no colour, no clock,
commands in the order Click lists them. Run it after changing a help text:

    python scripts/cli_reference.py           # rewrite docs/reference/cli.md
    python scripts/cli_reference.py --check   # exit 1 when the file is stale (CI runs this)
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "docs" / "reference" / "cli.md"
REGENERATE = "python scripts/cli_reference.py"
# Options every command takes; listed once under "Common options".
COMMON = ("--db", "--project", "--config", "--json", "--quiet", "--help")


@dataclass(frozen=True)
class Node:
    """One command or group of the tree, with the Click context it is rendered in."""

    path: str
    command: Any  # a Click command or group (Typer ships its own copy of Click)
    ctx: Any


def root_command() -> Any:
    """The Click command behind `neruba`, built the way the console script builds it."""
    import typer

    from neruba_cli.cli.app import app

    return typer.main.get_command(app)


def is_group(command: Any) -> bool:
    return hasattr(command, "list_commands")


def subcommands(node: Node) -> list[Node]:
    """The visible sub-commands of a group, in the order the group lists them."""
    children = []
    for name in node.command.list_commands(node.ctx):
        child = node.command.get_command(node.ctx, name)
        if child is None or child.hidden:
            continue
        ctx = child.context_class(child, info_name=name, parent=node.ctx)
        children.append(Node(f"{node.path} {name}", child, ctx))
    return children


def walk(command: Any) -> Iterator[Node]:
    """Every visible command and group, depth first, in the order Click lists them."""
    root_ctx = command.context_class(command, info_name="neruba")
    stack = [Node("neruba", command, root_ctx)]
    while stack:
        node = stack.pop()
        yield node
        if is_group(node.command):
            stack.extend(reversed(subcommands(node)))


def help_text(command: Any) -> str:
    """The command's help as plain paragraphs: hard line breaks inside a paragraph joined."""
    raw = command.help or command.short_help or ""
    paragraphs = inspect.cleandoc(raw).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


def missing_help(command: Any) -> list[str]:
    """Paths of the commands and groups that have no help text (each one must have some)."""
    return [node.path for node in walk(command) if not help_text(node.command)]


def escape(text: str) -> str:
    """Markdown-safe text; `code spans` in a help text are kept as code."""
    pieces = text.split("`")
    for i in range(0, len(pieces), 2):  # even pieces are outside code spans
        for char in "\\*_[]":
            pieces[i] = pieces[i].replace(char, "\\" + char)
        pieces[i] = pieces[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(pieces) if len(pieces) % 2 else "\\`".join(pieces)


def cell(text: str) -> str:
    """Text for a table cell: one line, pipes escaped even inside code spans."""
    return escape(" ".join(text.split())).replace("|", "\\|")


def usage(node: Node) -> str:
    pieces = node.command.collect_usage_pieces(node.ctx)
    return " ".join([node.path, *pieces])


def param_row(param: Any, ctx: Any) -> str | None:
    """One table row, from the record `--help` itself prints: names with placeholder, help."""
    record = param.get_help_record(ctx)
    if record is None:  # hidden
        return None
    names, help_ = record
    return f"| `{' '.join(names.split())}` | {cell(help_)} |"


def params_table(params: list[Any], ctx: Any) -> list[str]:
    rows = [row for p in params if (row := param_row(p, ctx)) is not None]
    if not rows:
        return []
    return ["| option | description |", "| --- | --- |", *rows]


def is_common(param: Any) -> bool:
    return param.param_type_name == "option" and any(o in COMMON for o in param.opts)


def anchor(path: str) -> str:
    return path.replace(" ", "-")


def scopes() -> dict[str, str]:
    """Each command's access scope, as the commands declare it (see services/tenancy/access.py),
    with the scopes that options changing state add (`read`; with `--name` also `export`)."""
    from neruba_cli.cli import runtime

    described: dict[str, str] = {}
    for name, policy in runtime.COMMANDS.items():
        text = SCOPE_TEXT.get(policy.scope, f"`{policy.scope}`")
        for option, extra in policy.writes_with.items():
            flag = "--" + option.replace("_", "-")
            text += f"; with `{flag}` also `{extra}` (it then changes state and is audited)"
        described[name] = text
    return described


SCOPE_TEXT = {
    "operator": "the local operator only (refused for any API key)",
    "none": "none (no access check)",
}


def render_node(node: Node, scope: str | None = None) -> list[str]:
    depth = node.path.count(" ")
    level = "#" * (2 if depth <= 1 else min(depth + 1, 4))
    lines = [f"{level} {node.path} {{#{anchor(node.path)}}}", ""]
    lines += ["```text", f"{usage(node)}", "```", ""]
    lines += [escape(help_text(node.command)), ""]
    if is_group(node.command):
        subs = subcommands(node)
        links = ", ".join(f"[{s.path.rsplit(' ', 1)[1]}](#{anchor(s.path)})" for s in subs)
        lines += [f"Commands: {links}.", ""]
        if node.path != "neruba":
            return lines
    if scope is not None:
        lines += [f"Scope: {scope}.", ""]
    own = [p for p in node.command.get_params(node.ctx) if not is_common(p)]
    lines += params_table(own, node.ctx)
    if any(is_common(p) for p in node.command.get_params(node.ctx)) and node.path != "neruba":
        lines += ["", "Also takes the [common options](#common-options)."]
    return [*lines, ""]


def common_section(command: Any) -> list[str]:
    """The shared options, taken from the first command that has all of them."""
    for node in walk(command):
        params = [p for p in node.command.get_params(node.ctx) if is_common(p)]
        if len(params) == len(COMMON):
            return [
                "## Common options {#common-options}",
                "",
                "Every command takes these options after the command's own name "
                "(`neruba invoice list --json`, not `neruba --json invoice list`).",
                "",
                *params_table(params, node.ctx),
                "",
            ]
    return []


def render(command: Any = None) -> str:
    command = command or root_command()
    head = [
        "# CLI reference",
        "",
        "<!-- Generated by scripts/cli_reference.py from the help texts in neruba_cli/cli/."
        f" Do not edit: change a help text, then run `{REGENERATE}`. -->",
        "",
        "Every command, its arguments and options, as `neruba COMMAND --help` shows them, and "
        "the scope an API key needs to run it "
        "([Projects, keys and members](../guides/projects-keys-members.md)). "
        "Exit codes are explained in [Exit codes](../operations/exit-codes.md).",
        "",
    ]
    nodes = list(walk(command))
    scope_of = scopes()  # filled as the command tree is built, so read after the walk
    body = render_node(nodes[0]) + common_section(command)
    for node in nodes[1:]:
        body += render_node(node, scope_of.get(node.path.removeprefix("neruba ")))
    text = "\n".join(head + body)
    return text.rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current == text:
            return 0
        diff = difflib.unified_diff(
            current.splitlines(), text.splitlines(), "on disk", "from the CLI", lineterm="", n=1
        )
        shown = list(diff)[:40]
        print("\n".join(shown), file=sys.stderr)
        print(
            f"{args.output} is stale: the CLI's help texts changed. Regenerate it with "
            f"`{REGENERATE}` and commit the result.",
            file=sys.stderr,
        )
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    # The rendering reads no terminal; pin it anyway, before Typer or Rich is first imported.
    os.environ.update(COLUMNS="100", NO_COLOR="1", TERM="dumb")
    sys.exit(main())
