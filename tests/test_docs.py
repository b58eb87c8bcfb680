"""The documentation stays true: the CLI reference is generated from the CLI and current, every
command explains itself, the docs site builds without a broken link, and the README's
quickstart runs as written."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support.cli import Cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
QUICKSTART = ROOT / "examples" / "quickstart"


@functools.cache
def _reference() -> ModuleType:
    """scripts/cli_reference.py, imported from its path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "cli_reference", ROOT / "scripts" / "cli_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_is_generated_from_the_current_cli() -> None:
    reference = _reference()
    on_disk = reference.DEFAULT_OUTPUT.read_text(encoding="utf-8")
    assert on_disk == reference.render(), (
        "docs/reference/cli.md is stale: regenerate it with `python scripts/cli_reference.py`"
    )


@pytest.mark.slow
def test_the_check_fails_on_a_stale_reference_and_says_how_to_regenerate(tmp_path: Path) -> None:
    stale = tmp_path / "cli.md"
    stale.write_text("# CLI reference\n", encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "cli_reference.py"),
            "--check",
            "--output",
            str(stale),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "python scripts/cli_reference.py" in result.stderr
    assert stale.read_text(encoding="utf-8") == "# CLI reference\n"  # a check writes nothing


def test_the_reference_does_not_depend_on_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    reference = _reference()
    first = reference.render()
    monkeypatch.setenv("COLUMNS", "37")
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert reference.render() == first


def test_every_command_and_group_has_help_text() -> None:
    reference = _reference()
    command = reference.root_command()
    assert reference.missing_help(command) == [], "commands without help text"
    paths = [node.path for node in reference.walk(command)]
    assert "neruba stripe webhook ingest" in paths  # the walk reaches the deepest commands
    text = reference.DEFAULT_OUTPUT.read_text(encoding="utf-8")
    assert all(f"{{#{path.replace(' ', '-')}}}" in text for path in paths)


@pytest.mark.slow
def test_the_docs_site_builds_strictly(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        if os.environ.get("NERUBA_REQUIRE_SERVERS") == "1":
            pytest.fail("mkdocs-material is not installed (NERUBA_REQUIRE_SERVERS=1)")
        pytest.skip("mkdocs-material is not installed")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").is_file()


def test_the_readme_stays_a_front_door() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"
    for link in re.findall(r"\]\(((?:docs|examples)/[^)#]*)", "\n".join(lines)):
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


def _quickstart() -> tuple[dict[str, str], list[str]]:
    """The README's quickstart: its inline files by name, then its shell lines."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    files = dict(re.findall(r"`([\w.]+)`:\n\n```\w+\n(.*?)```", section, re.S))
    shell = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(shell) == 1, "the quickstart has one shell block"
    commands = [line.split("  #", 1)[0].strip() for line in shell[0].splitlines()]
    return files, [c for c in commands if c]


def test_the_readme_quickstart_files_are_the_shipped_examples() -> None:
    files, _ = _quickstart()
    assert sorted(files) == sorted(p.name for p in QUICKSTART.iterdir())
    for name, content in files.items():
        assert (QUICKSTART / name).read_text(encoding="utf-8") == content, name


def test_the_readme_quickstart_runs_as_written(
    bare_cli: Cli, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, commands = _quickstart()
    for name, content in files.items():
        (isolated / name).write_text(content, encoding="utf-8")
    for line in commands:
        argv = shlex.split(line)
        if argv[0] == "export":
            name, _, value = argv[1].partition("=")
            monkeypatch.setenv(name, value)
            continue
        assert argv[0] == "neruba", line
        result = bare_cli(*argv[1:])
        assert result.exit_code == 0, (line, result.stdout, result.stderr)
    assert len(bare_cli("events", "list", "--json").json()) == 3  # imported twice, stored once
    invoices = bare_cli("invoice", "list", "--period", "2026-10", "--json").json()
    assert [(i["customer"], i["total"], i["status"]) for i in invoices] == [
        ("cus_acme", "49.50", "finalized"),
        ("cus_globex", "26.87", "finalized"),
    ]


def test_the_guarantees_cite_tests_that_exist() -> None:
    """Each proof named in docs/guarantees.md is a test module (wherever its lane keeps it) that
    defines the named test, so a renamed or deleted test cannot leave a promise unproven."""
    text = (ROOT / "docs" / "guarantees.md").read_text(encoding="utf-8")
    cited = re.findall(r"`((?:[\w]+/)*test_\w+\.py)(?:::(\w+))?`", text)
    assert len(cited) > 20
    missing = []
    for path, name in cited:
        found = list((ROOT / "tests").rglob(Path(path).name))
        if not found:
            missing.append(path)
        elif name and not any(
            re.search(rf"^\s*(?:def|class) {name}\b|^{name} =", f.read_text(encoding="utf-8"), re.M)
            for f in found
        ):
            missing.append(f"{path}::{name}")
    assert missing == [], "docs/guarantees.md cites tests that do not exist"


def _command_lines(text: str) -> list[tuple[int, str]]:
    """`neruba ...` as the docs write it: typed lines of code blocks (`$ neruba`, `neruba`,
    cron entries, `VAR=x neruba`) and inline code spans; output lines are left alone."""
    found: list[tuple[int, str]] = []
    in_block = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            typed = re.sub(r"^(\$ |(?:[\d*/,-]+\s+){5}|[A-Z_]+=\S+ )+", "", line.strip())
            if typed.startswith("neruba ") and (typed != line.strip() or line.startswith("neruba")):
                found.extend((number, part.strip()) for part in re.split(r"&&|\|\|", typed))
        found.extend((number, span) for span in re.findall(r"`(neruba [^`]+)`", line))
    return [(n, c) for n, c in found if c.startswith("neruba ")]


def _check_command_line(root: object, line: str) -> str | None:
    """What is wrong with one `neruba ...` line, or None. Placeholders in brackets, `a|b`
    alternatives and everything after a redirection or comment are read loosely."""
    line = re.split(r"\s(?:#|>|<|\|\s)", line)[0]
    tokens = line.replace("[", " ").replace("]", " ").replace("...", " ").split()[1:]
    cmd: Any = root
    ctx = cmd.context_class(cmd, info_name="neruba")
    path = "neruba"
    while tokens and hasattr(cmd, "list_commands") and not tokens[0].startswith("-"):
        if tokens[0].isupper():  # a placeholder such as COMMAND
            return None
        names = tokens.pop(0).split("|")
        subs = [cmd.get_command(ctx, name) for name in names]
        if any(sub is None for sub in subs):
            return f"{path} has no command {'|'.join(names)}"
        path, cmd = f"{path} {names[0]}", subs[0]
        ctx = cmd.context_class(cmd, info_name=names[0], parent=ctx)
    known = {o for p in cmd.get_params(ctx) for o in (*p.opts, *getattr(p, "secondary_opts", ()))}
    for token in tokens:
        option = token.split("=")[0]
        if re.fullmatch(r"--?[a-z][\w-]*", option) and option not in known:
            return f"{path} has no option {option}"
    return None


def test_the_docs_name_only_commands_and_options_that_exist() -> None:
    root = _reference().root_command()
    pages = [README, *sorted((ROOT / "docs").rglob("*.md"))]
    wrong = []
    for page in pages:
        if "reference" in page.parts:
            continue
        for number, line in _command_lines(page.read_text(encoding="utf-8")):
            problem = _check_command_line(root, line)
            if problem:
                wrong.append(f"{page.relative_to(ROOT)}:{number}: {problem}: {line}")
    assert wrong == [], "\n".join(wrong)


def test_the_architecture_page_maps_every_package() -> None:
    """docs/architecture.md names each package of neruba_cli and each capability package of
    services/, so a new package cannot arrive without a word on what it owns."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    package = ROOT / "neruba_cli"
    folders = [p for p in package.iterdir() if (p / "__init__.py").exists()]
    folders += [p for p in (package / "services").iterdir() if (p / "__init__.py").exists()]
    unmapped = [p.name for p in folders if f"`{p.name}/`" not in text]
    assert unmapped == [], "packages missing from docs/architecture.md"


SCOPE_GUIDE = ROOT / "docs" / "guides" / "projects-keys-members.md"
_SCOPE_ROWS = {"operator only": "operator", "none": "none"}  # rows named in words


def _documented_scopes() -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    """The scope table of the keys guide: commands by scope (`key *` and `ledger
    show/balances` expanded against the CLI), and the (command, option) pairs an option row
    such as `export * --name` names."""
    from neruba_cli.cli.app import command_policies

    names = set(command_policies())
    by_scope: dict[str, set[str]] = {}
    with_option: set[tuple[str, str]] = set()
    for line in SCOPE_GUIDE.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not line.startswith("| "):
            continue
        head = cells[0].strip("`")
        if head in ("scope", "---"):
            continue
        scope = _SCOPE_ROWS.get(head, head)
        commands = by_scope.setdefault(scope, set())
        for item in re.findall(r"`([^`]+)`", cells[1]):
            spelled, _, option = item.partition(" --")
            prefix, _, last = spelled.rpartition(" ")
            lead = f"{prefix} " if prefix else ""
            if last == "*":
                found = {name for name in names if name.startswith(lead)}
            else:
                found = {lead + word for word in last.split("/")}
            if not found <= names:
                continue  # a word in backticks that is not a command (`read`, `--name`)
            if option:
                with_option |= {(name, option) for name in found}
            else:
                commands |= found
    return by_scope, with_option


def test_the_scope_table_names_every_command_under_the_scope_it_declares() -> None:
    from neruba_cli.cli.app import command_policies
    from neruba_cli.services.tenancy.access import COMMAND_SCOPES

    policies = command_policies()
    documented, with_option = _documented_scopes()
    for scope in COMMAND_SCOPES:
        declared = {name for name, policy in policies.items() if policy.scope == scope}
        shown = documented.get(scope, set())
        assert shown == declared, (scope, sorted(shown ^ declared))
    options = {
        (name, option.replace("_", "-"))
        for name, policy in policies.items()
        for option in policy.writes_with
    }
    assert with_option == options, sorted(with_option ^ options)
    extra = {
        scope
        for name, policy in policies.items()
        for scope in policy.writes_with.values()
        if any(n == name for n, _ in with_option)
    }
    assert extra <= set(documented), extra  # an option's scope has its own row
