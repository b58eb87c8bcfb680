"""Catalog files as the operator wrote them: the parsed document and the text it came from,
so that every problem found in it can name the file and the line."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neruba_cli.domain.errors import InvalidInput


@dataclass(frozen=True)
class CatalogFile:
    source: str  # how messages name the file: as the operator typed it
    data: dict[str, Any]
    text: str


def read_catalog_file(path: Path) -> CatalogFile:
    """Read and parse a catalog TOML file; a file that cannot be read or parsed is one clear
    error (tomllib's own message carries the line and column)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{path}: invalid TOML: {exc}") from None
    return CatalogFile(source=str(path), data=data, text=text)
