"""Positional values that look like options, such as the amount in
`neruba credits grant cus_1 -5`.

Click reads `-5` as an unknown option and stops with "No such option: -5", which tells the
operator nothing about the real problem. Commands registered with `NegativeNumbers` receive a
negative number as the positional value it is, so the command can say what is wrong with it
(or accept it, where a negative value means something).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from neruba_cli.cli.help import NerubaCommand

_NEGATIVE = re.compile(r"-(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


class NegativeNumbers(NerubaCommand):
    """A command whose positional arguments may be negative numbers."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, positionals_last(args, _value_options(self, ctx)))


def _value_options(command: NerubaCommand, ctx: Any) -> set[str]:
    """The option names that take a value (the token after them is that value)."""
    names: set[str] = set()
    for param in command.get_params(ctx):
        if getattr(param, "param_type_name", "") != "option":
            continue
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            continue
        names.update(param.opts)
        names.update(getattr(param, "secondary_opts", ()))
    return names


def positionals_last(args: Sequence[str], value_options: set[str]) -> list[str]:
    """The same command line with its positional values after `--` when one of them is a
    negative number; unchanged otherwise (unknown options stay options, so a misspelt one is
    still reported as such)."""
    if "--" in args or not any(_NEGATIVE.fullmatch(token) for token in args):
        return list(args)
    options: list[str] = []
    positionals: list[str] = []
    index = 0
    while index < len(args):
        token = args[index]
        index += 1
        if _NEGATIVE.fullmatch(token) or token == "-" or not token.startswith("-"):
            positionals.append(token)
            continue
        options.append(token)
        if token in value_options and index < len(args):
            options.append(args[index])  # the option's value, whatever it looks like
            index += 1
    if not any(_NEGATIVE.fullmatch(token) for token in positionals):
        return list(args)
    return [*options, "--", *positionals]
