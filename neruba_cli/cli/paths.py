"""Output paths named on the command line, checked before any work starts.

A command that reads a large file, bills a month or builds a demo must not fail at its very end
because its report, rejects file or folder cannot be written. Each check names the option and
the path as the operator wrote it, exits 1, and writes nothing (a probe file is removed at
once)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from neruba_cli.domain.errors import InvalidInput
from neruba_cli.services import output_files


def output_file(path: Path, option: str) -> Path:
    """A file the command will create or replace: its folder must exist and take new files.
    `-` (stdout) and an existing device, FIFO or socket are written in place and need no
    folder; a folder or block device is refused (`services/output_files.py`)."""
    if output_files.kind_of(path, option) != output_files.Kind.FILE:
        return path
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
    if str(path) == output_files.STDOUT:
        raise InvalidInput(
            f"{option} -: a folder of several files cannot go to stdout", hint="name a folder"
        )
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
