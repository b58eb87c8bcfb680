"""Output paths named on the command line, checked before any work starts.

A command that reads a large file, bills a month or builds a demo must not fail at its very end
because its report, rejects file or folder cannot be written. Each check names the option and
the path as the operator wrote it, exits 1, and writes nothing (a probe file is removed at
once)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from neruba_cli.domain.errors import InvalidInput


def output_file(path: Path, option: str) -> Path:
    """A file the command will create or replace: its folder must exist and take new files."""
    if path.is_dir():
        raise InvalidInput(f"{option} {path}: is a folder", hint="name a file in it")
    folder = path.absolute().parent
    if not folder.exists():
        raise InvalidInput(
            f"{option} {path}: folder {folder} does not exist",
            hint="create it, or pick another path",
        )
    if not folder.is_dir():
        raise InvalidInput(f"{option} {path}: {folder} is not a folder")
    _probe(folder, option, path)
    return path


def output_folder(path: Path, option: str) -> Path:
    """A folder the command will write into, created if missing (by the command, later)."""
    if path.exists() and not path.is_dir():
        raise InvalidInput(f"{option} {path}: is a file, not a folder", hint="name a folder")
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InvalidInput(f"{option} {path}: {existing} is a file, not a folder")
    _probe(existing, option, path)
    return path


def _probe(folder: Path, option: str, path: Path) -> None:
    """Create and drop a file in `folder`: the only test that holds for every file system
    (permissions, read-only mounts, /proc) and for root, whom access() would always admit."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".neruba-probe-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InvalidInput(f"{option} {path}: cannot write in {folder}: {reason}") from None
