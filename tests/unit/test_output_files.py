"""Writing outputs (services/output_files.py): atomic files through exclusively created
temporaries, devices, FIFOs and sockets written in place, stale temporaries cleaned."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from neruba_cli.domain.errors import InvalidInput, NerubaError
from neruba_cli.services import output_files


def test_a_file_is_replaced_whole_and_no_temporary_is_left(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    output_files.write_output(target, b"new\n")
    assert target.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_a_failure_half_way_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), output_files.open_output(target) as out:
        out.write(b"half")
        raise RuntimeError("the query failed")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_a_symlink_planted_under_the_temporary_name_is_never_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even under the random name the next temporary would get: that name is skipped."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    names = iter(["aaaaaaaa", "bbbbbbbb"])
    monkeypatch.setattr(output_files.secrets, "token_hex", lambda _n: next(names))
    planted = tmp_path / ".out.csv.aaaaaaaa.tmp"
    planted.symlink_to(victim)
    output_files.write_output(tmp_path / "out.csv", b"data\n")
    assert victim.read_text() == "precious\n"
    assert (tmp_path / "out.csv").read_text() == "data\n" and planted.is_symlink()


def test_several_files_are_put_in_place_together_or_not_at_all(tmp_path: Path) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.csv"
    first.write_text("old a\n")
    second.mkdir()  # cannot be replaced by a file
    with pytest.raises(InvalidInput, match="is a folder"):
        output_files.write_outputs({first: b"new a\n", second: b"new b\n"})
    assert first.read_text() == "old a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.csv"]


def test_stale_temporaries_go_and_young_ones_stay(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    stale = tmp_path / ".out.csv.0123abcd.tmp"
    stale.write_text("from a killed run")
    link = tmp_path / ".out.csv.4567abcd.tmp"
    link.symlink_to(victim)
    young = tmp_path / ".out.csv.89abcdef.tmp"
    young.write_text("a run still writing")
    other = tmp_path / ".other.csv.0123abcd.tmp"
    other.write_text("another target's")
    hours_ago = time.time() - 2 * output_files.STALE_SECONDS
    for path in (stale, other):
        os.utime(path, (hours_ago, hours_ago))
    os.utime(link, (hours_ago, hours_ago), follow_symlinks=False)
    output_files.write_output(tmp_path / "out.csv", b"data\n")
    assert not stale.exists() and not os.path.lexists(link)
    assert young.exists() and other.exists() and victim.read_text() == "precious\n"


def test_a_fifo_whose_reader_goes_away_is_a_clear_error(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def read_a_little() -> None:
        with open(fifo, "rb") as pipe:
            pipe.read(1)

    reader = threading.Thread(target=read_a_little, daemon=True)
    reader.start()
    with pytest.raises(NerubaError, match="Broken pipe"), output_files.open_output(fifo) as out:
        for _ in range(1000):
            out.write(b"x" * 65536)
    reader.join(timeout=10)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[tuple[Path, list[bytes]]]:
    path = tmp_path / "log.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    got: list[bytes] = []

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            chunks = []
            while chunk := connection.recv(65536):
                chunks.append(chunk)
            got.append(b"".join(chunks))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path, got
    thread.join(timeout=10)
    server.close()


def test_a_unix_socket_is_written_in_place(listening: tuple[Path, list[bytes]]) -> None:
    path, got = listening
    output_files.write_output(path, b"line 1\nline 2\n")
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == [b"line 1\nline 2\n"]
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


def test_what_a_name_designates(tmp_path: Path) -> None:
    assert output_files.kind_of("-") == output_files.Kind.STDOUT
    assert output_files.kind_of(tmp_path / "new.csv") == output_files.Kind.FILE
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert output_files.kind_of(tmp_path / "dangling") == output_files.Kind.FILE
    assert output_files.kind_of("/dev/null") == output_files.Kind.STREAM
    with pytest.raises(InvalidInput, match="is a folder"):
        output_files.kind_of(tmp_path)


def test_a_descriptor_name_is_written_in_place_after_what_is_there(tmp_path: Path) -> None:
    """`--output /dev/stdout` with stdout redirected to a file (`>>` here): the data is
    appended to that file, and the link (a private one to /proc/self/fd/1, standing in for
    /dev/stdout) is still a link."""
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    log = tmp_path / "cron.log"
    log.write_bytes(b"before\n")
    program = (
        "import sys\n"
        "from neruba_cli.services import output_files\n"
        "output_files.write_output(sys.argv[1], b'data\\n')\n"
    )
    with log.open("ab") as out:
        subprocess.run([sys.executable, "-c", program, str(link)], stdout=out, check=True)
    assert log.read_bytes() == b"before\ndata\n"
    assert link.is_symlink() and os.readlink(link) == "/proc/self/fd/1"


def test_a_link_another_user_planted_is_replaced_never_followed(tmp_path: Path) -> None:
    """The kernel's protected_symlinks rule, in every folder: a link to a device made by
    someone else is not written through (it could lead to /dev/tty or /dev/port)."""
    node = tmp_path / "mynull"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        target = tmp_path / "ev.csv"
        target.symlink_to(node)
        os.lchown(target, 65534, 65534)
    except PermissionError:
        pytest.skip("needs root: mknod and lchown")
    assert output_files.kind_of(target) == output_files.Kind.FILE
    output_files.write_output(target, b"data\n")
    assert not target.is_symlink() and target.read_bytes() == b"data\n"
    assert stat.S_ISCHR(os.lstat(node).st_mode)
    mine = tmp_path / "mine.csv"
    mine.symlink_to(node)  # made by this user: followed to the device
    assert output_files.kind_of(mine) == output_files.Kind.STREAM
    output_files.write_output(mine, b"data\n")
    assert mine.is_symlink() and stat.S_ISCHR(os.lstat(node).st_mode)
