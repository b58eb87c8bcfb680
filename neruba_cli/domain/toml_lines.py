"""Where a value sits in a TOML text.

tomllib returns values without positions, so a problem found after parsing (named by its path,
`plans[0].charges[1].tiers[2].up_to`) cannot say which line to fix. This module scans the
text's structure, not its values: table headers (`[[plans]]`, `[[plans.charges]]`), keys, and
the elements of arrays and inline tables, and maps each path to the line it starts on. The text
has already been parsed by tomllib, so it is valid TOML; the scan still stops quietly on
anything it does not follow, because a missing line number must never hide the problem itself.
"""

from __future__ import annotations

import bisect
import contextlib
import re

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR_END = re.compile(r"[,\]}\n\r#]")
_BLANKS = " \t"


def key_lines(text: str) -> dict[str, int]:
    """Every table, key and array element of a TOML text, as `path -> line` (1-based)."""
    scanner = _Scanner(text)
    # Stop at what the scan does not follow; the lines found so far stand.
    with contextlib.suppress(IndexError, ValueError):
        scanner.document()
    return scanner.lines


def line_of(lines: dict[str, int], path: str) -> int | None:
    """The line of `path`, or of its nearest enclosing table or element when the path names
    something the file does not have (a missing required key: the table that lacks it)."""
    current = path
    while current:
        if current in lines:
            return lines[current]
        current = _parent(current)
    return None


def _parent(path: str) -> str:
    if path.endswith("]"):
        return path[: path.rindex("[")]
    dot = path.rfind(".")
    return path[:dot] if dot > 0 else ""


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.lines: dict[str, int] = {}
        self.table = ""
        self.last_element: dict[str, int] = {}  # array-of-tables path -> its last index
        self._breaks = [index for index, char in enumerate(text) if char == "\n"]

    def line(self) -> int:
        return bisect.bisect_left(self._breaks, self.pos) + 1

    def record(self, path: str) -> None:
        self.lines.setdefault(path, self.line())

    def document(self) -> None:
        while True:
            self.skip_space(newlines=True)
            if self.pos >= len(self.text):
                return
            start = self.pos
            if self.text.startswith("[[", self.pos):
                self.header(array=True)
            elif self.text[self.pos] == "[":
                self.header(array=False)
            else:
                self.key_value(self.table)
            if self.pos == start:
                return

    def header(self, *, array: bool) -> None:
        line_start = self.pos
        self.pos += 2 if array else 1
        keys = self.key()
        self.skip_space()
        self.pos += 2 if array else 1
        path = ""
        for key in keys[:-1]:
            path = _join(path, key)
            if path in self.last_element:
                path = f"{path}[{self.last_element[path]}]"
        path = _join(path, keys[-1])
        saved, self.pos = self.pos, line_start
        self.record(path)
        if array:
            index = self.last_element.get(path, -1) + 1
            self.last_element[path] = index
            path = f"{path}[{index}]"
            self.record(path)
        self.pos = saved
        self.table = path

    def key_value(self, prefix: str) -> None:
        start = self.pos
        keys = self.key()
        path = prefix
        saved, self.pos = self.pos, start
        for key in keys:
            path = _join(path, key)
            self.record(path)
        self.pos = saved
        self.skip_space()
        if self.text[self.pos] != "=":
            raise ValueError("expected =")
        self.pos += 1
        self.skip_space()
        self.value(path)

    def key(self) -> list[str]:
        keys: list[str] = []
        while True:
            self.skip_space()
            char = self.text[self.pos]
            if char in "\"'":
                start = self.pos
                self.skip_string()
                keys.append(self.text[start + 1 : self.pos - 1])
            else:
                match = _BARE_KEY.match(self.text, self.pos)
                if match is None:
                    raise ValueError("expected a key")
                keys.append(match.group())
                self.pos = match.end()
            self.skip_space()
            if self.pos < len(self.text) and self.text[self.pos] == ".":
                self.pos += 1
                continue
            return keys

    def value(self, path: str) -> None:
        char = self.text[self.pos]
        if char == "[":
            self.array(path)
        elif char == "{":
            self.inline_table(path)
        elif char in "\"'":
            self.skip_string()
        else:
            end = _SCALAR_END.search(self.text, self.pos)
            self.pos = len(self.text) if end is None else end.start()

    def array(self, path: str) -> None:
        self.pos += 1
        index = 0
        while True:
            self.skip_space(newlines=True)
            if self.text[self.pos] == "]":
                self.pos += 1
                return
            element = f"{path}[{index}]"
            self.record(element)
            start = self.pos
            self.value(element)
            if self.pos == start:
                raise ValueError("no progress in an array")
            index += 1
            self.skip_space(newlines=True)
            if self.text[self.pos] == ",":
                self.pos += 1

    def inline_table(self, path: str) -> None:
        self.pos += 1
        while True:
            self.skip_space(newlines=True)
            if self.text[self.pos] == "}":
                self.pos += 1
                return
            self.key_value(path)
            self.skip_space(newlines=True)
            if self.text[self.pos] == ",":
                self.pos += 1

    def skip_string(self) -> None:
        quote = self.text[self.pos]
        if self.text.startswith(quote * 3, self.pos):
            end = self.text.index(quote * 3, self.pos + 3)
            if quote == '"':
                while _escaped(self.text, end):
                    end = self.text.index(quote * 3, end + 1)
            end += 3
            for _ in range(2):  # a closing run of 4 or 5 quotes: the content ends with quotes
                if end < len(self.text) and self.text[end] == quote:
                    end += 1
            self.pos = end
            return
        end = self.text.index(quote, self.pos + 1)
        if quote == '"':
            while _escaped(self.text, end):
                end = self.text.index(quote, end + 1)
        self.pos = end + 1

    def skip_space(self, *, newlines: bool = False) -> None:
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in _BLANKS or (newlines and char in "\r\n"):
                self.pos += 1
            elif char == "#" and newlines:
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            else:
                return


def _escaped(text: str, index: int) -> bool:
    """Whether the character at `index` follows an odd run of backslashes."""
    count = 0
    while index - count - 1 >= 0 and text[index - count - 1] == "\\":
        count += 1
    return count % 2 == 1
