"""Writing an output the operator named: whole or not at all, never through a planted link,
never over a device. Every command that writes a file (export, catalog export, reconcile,
compare and simulate reports, stats --prometheus, rejects files, the demo's files) goes
through here.

What the name is decides how it is written:

- `-` is stdout. The command's own summary then goes to stderr.
- An existing character device, FIFO or socket (`/dev/null`, a named pipe, a log socket), or
  the name of a descriptor the process holds (`/dev/stdout`, `/dev/fd/N`, whatever is behind
  it), is written directly, as a shell's `>` would. A link at the name is followed there only
  when this user or root made it: a link another user planted (to `/dev/tty`, a FIFO) is
  replaced like any other name, never written through. Renaming a file over it, as for a
  regular file, would replace `/dev/null` itself with a regular file when run as root and break
  every program on the machine. What was written before an error has been sent and stays sent.
- Anything else (an existing regular file, or nothing yet) is written atomically: to a new
  temporary file beside the target, synced, then renamed over the target, so a reader (or a
  crash) sees the old file or the new one, never half of one. The temporary is created
  exclusively under a random name (`.NAME.<random>.tmp`, `O_CREAT|O_EXCL|O_NOFOLLOW`), so a
  symlink or file planted under a predictable name in a shared drop folder is never written
  through. The new file's mode is 0666 less the umask, as for any file the process creates
  (the mode of a file it replaces is not kept, as before); a symlink at the target's own name
  is replaced by the file, never followed to a regular file.
- A folder or a block device is refused.

A temporary left by a killed run is removed by a later successful write of the same target
once it is an hour old (a younger one may belong to a run still writing).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Final, NoReturn

from neruba_cli.domain.errors import InvalidInput, NerubaError

STDOUT: Final = "-"
STALE_SECONDS: Final = 3600  # a leftover temporary this old belongs to no running writer
_ATTEMPTS: Final = 100


class Kind:
    """What an output name designates."""

    STDOUT: Final = "stdout"
    STREAM: Final = "stream"  # a character device, FIFO or socket: written in place
    FILE: Final = "file"  # a regular file, or a name not taken yet: written atomically


def kind_of(target: str | os.PathLike[str], option: str = "--output") -> str:
    """Classify `target`, following the links at its name that this user or root made
    (`/dev/stdout` is one); a link another user planted is never followed: the rename
    replaces it. A folder or a block device is refused here, before any work starts."""
    if os.fspath(target) == STDOUT:
        return Kind.STDOUT
    resolved, trusted = _follow(target)
    if not trusted:
        return Kind.FILE
    if _DESCRIPTOR.match(resolved):
        return Kind.STREAM
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return Kind.FILE  # not there yet (or a dangling link, which the rename replaces)
    except OSError as exc:
        raise InvalidInput(f"{option} {target}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise InvalidInput(f"{option} {target}: is a folder", hint="name a file in it")
    if stat.S_ISBLK(mode):
        raise InvalidInput(
            f"{option} {target}: is a block device; Neruba does not write over disks",
            hint="name a file",
        )
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return Kind.STREAM
    return Kind.FILE


# `/proc/self/fd/1`, where `/dev/stdout` and `/dev/fd/1` lead: a descriptor the process holds
_DESCRIPTOR = re.compile(r"/proc/(self|thread-self|[0-9]+)(/task/[0-9]+)?/fd/[0-9]+\Z")


def _follow(target: str | os.PathLike[str]) -> tuple[str, bool]:
    """Follow the links at `target`'s name hop by hop: where they lead (stopping at the name
    of a descriptor: whatever is behind it, a pipe, a terminal or the regular file of a
    `> out.csv` redirection, is written in place) and whether every link on the way belongs
    to this user or to root (the kernel's `protected_symlinks` rule, in every folder)."""
    current, trusted = os.path.abspath(target), True
    owners = {0, os.geteuid()}
    for _ in range(40):  # the kernel's own limit on links followed
        folder, name = os.path.split(current)
        current = os.path.join(os.path.realpath(folder), name)
        if _DESCRIPTOR.match(current):
            break
        try:
            info = os.lstat(current)
        except OSError:
            break
        if not stat.S_ISLNK(info.st_mode):
            break
        trusted = trusted and info.st_uid in owners
        current = os.path.normpath(os.path.join(os.path.dirname(current), os.readlink(current)))
    return current, trusted


class OutputFile:
    """One output being written: `handle` takes the bytes; `commit()` puts them in place;
    `discard()` drops them (a temporary is removed, a target is left as it was)."""

    def __init__(
        self, target: str | os.PathLike[str], *, option: str = "--output", suffix: str = ".tmp"
    ) -> None:
        self.target = os.fspath(target)
        self.option = option
        self.suffix = suffix
        self.kind = kind_of(self.target, option)
        self.temporary: Path | None = None
        self._socket: socket.socket | None = None
        self.handle: IO[bytes] = self._open()

    @property
    def shown(self) -> str:
        """The target as messages name it."""
        return "stdout" if self.kind == Kind.STDOUT else self.target

    def _open(self) -> IO[bytes]:
        if self.kind == Kind.STDOUT:
            sys.stdout.flush()  # text printed before keeps its place
            return sys.stdout.buffer
        if self.kind == Kind.STREAM:
            return self._open_stream()
        path = Path(self.target)
        folder = path.absolute().parent
        if not folder.is_dir():
            raise InvalidInput(
                f"{self.option} {self.target}: folder {folder} does not exist",
                hint="create it, or pick another path",
            )
        fd, self.temporary = _create_exclusively(folder, path.name, self.suffix, self.option)
        return os.fdopen(fd, "wb")

    def _open_stream(self) -> IO[bytes]:
        flags = os.O_WRONLY | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
        if _DESCRIPTOR.match(_follow(self.target)[0]):
            flags |= os.O_APPEND  # a file behind `>` or `>>`: after what is already there
        try:
            if stat.S_ISSOCK(os.stat(self.target).st_mode):
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._socket.connect(self.target)
                return self._socket.makefile("wb")
            return os.fdopen(os.open(self.target, flags), "wb")  # a FIFO waits for its reader
        except OSError as exc:
            if self._socket is not None:
                self._socket.close()
            raise InvalidInput(
                f"{self.option} {self.target}: cannot write: {exc.strerror or exc}"
            ) from None

    def commit(self) -> None:
        """Flush; for a file, sync and rename over the target, then sync the folder."""
        try:
            self.handle.flush()
            if self.kind == Kind.STDOUT:
                return
            if self.kind == Kind.FILE:
                os.fsync(self.handle.fileno())
            self.handle.close()
            if self._socket is not None:
                self._socket.close()
            if self.temporary is None:
                return
            os.replace(self.temporary, self.target)
            self.temporary = None
        except BaseException as exc:
            self.discard()
            _reraise(self.failure(exc), exc)
        _sync_folder(Path(self.target).absolute().parent)
        remove_stale_temporaries(self.target, self.suffix)

    def discard(self) -> None:
        """Give up: nothing more is written, and a temporary file is removed."""
        if self.kind == Kind.STDOUT:
            with suppress(OSError, ValueError):
                self.handle.flush()
            return
        with suppress(OSError, ValueError):
            self.handle.close()  # flushing what is left may fail again (a full disk)
        if self._socket is not None:
            self._socket.close()
        if self.temporary is not None:
            self.temporary.unlink(missing_ok=True)
            self.temporary = None

    def failure(self, exc: BaseException) -> BaseException:
        """The error to raise for `exc`, met while writing: an OSError becomes one line that
        names the target (and says the previous file is intact); anything else is kept."""
        if isinstance(exc, BrokenPipeError) and self.kind == Kind.STDOUT:
            _silence_stdout()
            return NerubaError("stdout was closed before the output was complete")
        if not isinstance(exc, OSError):
            return exc
        reason = exc.strerror or str(exc)
        if self.kind == Kind.FILE:
            return NerubaError(f"cannot write {self.target}: {reason}; nothing was written there")
        return NerubaError(f"cannot write {self.shown}: {reason}")


@contextmanager
def open_output(
    target: str | os.PathLike[str], *, option: str = "--output", suffix: str = ".tmp"
) -> Iterator[IO[bytes]]:
    """A binary handle on `target`, put in place when the block ends without an error and
    dropped when it raises (see the module docstring for what each kind of target gets)."""
    output = OutputFile(target, option=option, suffix=suffix)
    try:
        yield output.handle
    except BaseException as exc:
        output.discard()
        _reraise(output.failure(exc), exc)
    output.commit()


def write_output(target: str | os.PathLike[str], data: bytes, *, option: str = "--output") -> None:
    """`data` to `target`, whole or not at all."""
    with open_output(target, option=option) as out:
        out.write(data)


def write_outputs(files: dict[Path, bytes], *, option: str = "--output") -> None:
    """Several files that belong together (a report folder): all are written first and put
    in place only then, so a failure half way leaves every previous file as it was."""
    opened: list[OutputFile] = []
    try:
        for path, data in files.items():
            output = OutputFile(path, option=option)
            opened.append(output)
            try:
                output.handle.write(data)
            except BaseException as exc:
                _reraise(output.failure(exc), exc)
        for output in opened:
            output.commit()
    except BaseException:
        for output in opened:
            output.discard()
        raise


def _reraise(error: BaseException, original: BaseException) -> NoReturn:
    """Raise `error`: the original as it was, or its one-line replacement without the
    traceback of the OSError behind it."""
    if error is original:
        raise original
    raise error from None


def _create_exclusively(folder: Path, name: str, suffix: str, option: str) -> tuple[int, Path]:
    """A new file `.NAME.<random>SUFFIX` in `folder`, created by this call and no other: an
    existing file or symlink of that name (planted or left over) is never opened."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    flags |= getattr(os, "O_CLOEXEC", 0)
    for _ in range(_ATTEMPTS):
        candidate = folder / f".{name}.{secrets.token_hex(4)}{suffix}"
        try:
            return os.open(candidate, flags, 0o666), candidate  # the umask applies
        except FileExistsError:
            continue
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise InvalidInput(
                f"{option} {folder / name}: cannot write in {folder}: {reason}"
            ) from None
    raise NerubaError(f"{option} {folder / name}: no free temporary name in {folder}")


def temporary_pattern(name: str, suffix: str) -> re.Pattern[str]:
    """The names `_create_exclusively` gives for target `name`."""
    return re.compile(re.escape(f".{name}.") + r"[0-9a-f]{8}" + re.escape(suffix) + r"\Z")


def remove_stale_temporaries(target: str | os.PathLike[str], suffix: str = ".tmp") -> None:
    """Drop temporaries of `target` left by killed runs, once an hour old (best effort: never
    fails a write that succeeded). Unlinking never follows a link: a planted one is removed."""
    path = Path(target).absolute()
    folder, pattern = path.parent, temporary_pattern(path.name, suffix)
    cutoff = time.time() - STALE_SECONDS
    with suppress(OSError):
        for entry in os.scandir(folder):
            if not pattern.match(entry.name):
                continue
            with suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode) or info.st_mtime > cutoff:
                    continue
                os.unlink(entry.path)


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _silence_stdout() -> None:
    """After a closed pipe (`export ... | head`), keep Python's exit-time flush from
    reporting it a second time."""
    with suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
