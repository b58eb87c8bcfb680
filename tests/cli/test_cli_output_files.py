"""Output files of every command that writes one, end to end (SQLite: file handling does not
depend on the database).

- A device named as the output (`mknod c 1 3`, a private /dev/null) is written in place and is
  still that device afterwards: renaming a temporary over it would replace /dev/null itself
  with a regular file when run as root.
- A FIFO is written in place: a reader gets exactly what a file would have held.
- `-` is stdout; the command's own summary then goes to stderr.
- A symlink planted under a temporary's old, predictable name (FILE.tmp, .FILE.tmp,
  .FILE.partial) is never written through: the file it points to stays as it was.
"""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from tests.support.cli import Cli
from tests.support.events import event_line
from tests.support.processes import ENV, neruba_argv
from tests.support.shops import INVOICE_CATALOG, invoice_shop

NULL_DEVICE = os.makedev(1, 3)


@dataclass(frozen=True)
class Writer:
    """A command that writes an output file: its argv for a target, its exit code, and
    whether two runs write the same bytes."""

    name: str
    argv: Callable[[Path, str], list[str]]
    code: int = 0
    stable: bool = True


def _inputs(folder: Path) -> Path:
    """The input files the importing commands read, each with one bad line (so that they
    have rejects to write)."""
    folder.mkdir(exist_ok=True)
    (folder / "events.jsonl").write_bytes(
        event_line("ok-1", "c1", "api_calls", "2026-10-05T00:00:00Z")
        + b"\n"
        + orjson.dumps({"idempotency_key": "bad-1", "customer": "c1", "meter": "api_calls"})
        + b"\n"
    )
    (folder / "customers.csv").write_text(
        "external_id,name,email,currency,timezone,stripe_id\nc9,Nine,not-an-email,,,\n"
    )
    (folder / "subs.csv").write_text("customer,plan,start\nc1,gold,2026-10-01T00:00:00Z\n")
    (folder / "baseline.csv").write_text("customer,description,amount\nc1,Pro,49.00\n")
    (folder / "new.toml").write_text(INVOICE_CATALOG)
    return folder


def writers(inputs: Path) -> list[Writer]:
    def export(kind: str) -> Writer:
        return Writer(f"export {kind}", lambda target, _: ["export", kind, "--output", str(target)])

    return [
        export("events"),
        export("lines"),
        export("invoices"),
        Writer("catalog export", lambda target, _: ["catalog", "export", "--output", str(target)]),
        Writer(
            "reconcile stripe",
            lambda target, _: [
                "reconcile",
                "stripe",
                "--period",
                "2026-10",
                "--output",
                str(target),
                "--format",
                "csv",
            ],
        ),
        Writer(
            "stats --prometheus",
            lambda target, _: ["stats", "--prometheus", str(target)],
            stable=False,  # the figures include the time they were taken
        ),
        Writer(
            "ingest --rejects",
            lambda target, key: [
                "ingest",
                str(inputs / f"events{key}.jsonl"),
                "--rejects",
                str(target),
            ],
            code=3,
        ),
        Writer(
            "customer import --rejects",
            lambda target, _: [
                "customer",
                "import",
                str(inputs / "customers.csv"),
                "--rejects",
                str(target),
            ],
            code=3,
        ),
        Writer(
            "subscription import --rejects",
            lambda target, _: [
                "subscription",
                "import",
                str(inputs / "subs.csv"),
                "--rejects",
                str(target),
            ],
            code=3,
        ),
    ]


def run(cli: Cli, argv: list[str], code: int) -> None:
    result = cli(*argv, "--project", "acme")
    assert result.exit_code == code, (argv, result.stdout[-2000:], result.stderr[-2000:])


@pytest.fixture
def shop(sqlite_cli: Cli, tmp_path: Path) -> Cli:
    return invoice_shop(sqlite_cli, tmp_path)


def _fresh_events(inputs: Path, key: str) -> None:
    """A copy of the events file whose good line is new, so each ingest has the same
    rejects (the bad line) whatever ran before."""
    text = (inputs / "events.jsonl").read_bytes().replace(b"ok-1", f"ok-{key}".encode())
    (inputs / f"events{key}.jsonl").write_bytes(text)


def _reference(cli: Cli, writer: Writer, folder: Path, key: str) -> bytes:
    folder.mkdir(exist_ok=True)
    target = folder / writer.name.replace(" ", "_")
    run(cli, writer.argv(target, key), writer.code)
    return target.read_bytes()


def _mknod_null(path: Path) -> None:
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, NULL_DEVICE)
    except PermissionError:
        pytest.skip("creating a device node is not permitted here")


def _is_null_device(path: Path) -> bool:
    info = os.lstat(path)
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == NULL_DEVICE


def test_a_device_target_is_written_in_place_and_stays_a_device(shop: Cli, tmp_path: Path) -> None:
    """`mknod -m 666 mynull c 1 3; neruba ... --output mynull`: still the device after every
    command (the bug: a regular file replaced it)."""
    inputs = _inputs(tmp_path / "in")
    for number, writer in enumerate(writers(inputs)):
        key = f"dev{number}"
        _fresh_events(inputs, key)
        node = tmp_path / f"mynull-{number}"
        _mknod_null(node)
        run(shop, writer.argv(node, key), writer.code)
        assert _is_null_device(node), writer.name
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], writer.name


def test_a_device_among_the_report_files_of_compare_and_simulate(shop: Cli, tmp_path: Path) -> None:
    inputs = _inputs(tmp_path / "in")
    for command in (
        ["compare", str(inputs / "baseline.csv"), "--period", "2026-10"],
        ["simulate", "--catalog", str(inputs / "new.toml"), "--period", "2026-10"],
    ):
        folder = tmp_path / command[0]
        folder.mkdir()
        _mknod_null(folder / "report.html")
        run(shop, [*command, "--output", str(folder)], 0)
        assert _is_null_device(folder / "report.html"), command[0]
        assert (folder / "summary.json").is_file() and (folder / "lines.csv").is_file()
        assert sorted(p.name for p in folder.iterdir()) == [
            "customers.csv",
            "lines.csv",
            "report.html",
            "summary.json",
        ]


def test_a_block_device_or_a_folder_is_refused_and_left_alone(shop: Cli, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    try:
        os.mknod(disk, 0o600 | stat.S_IFBLK, os.makedev(7, 200))
    except PermissionError:
        pytest.skip("creating a device node is not permitted here")
    result = shop("export", "events", "--output", str(disk), "--project", "acme")
    assert result.exit_code == 1 and "is a block device" in result.stderr
    assert stat.S_ISBLK(os.lstat(disk).st_mode)
    folder = shop("stats", "--prometheus", str(tmp_path), "--project", "acme")
    assert folder.exit_code == 1 and "is a folder" in folder.stderr


def _read_fifo(path: Path) -> tuple[threading.Thread, list[bytes]]:
    got: list[bytes] = []

    def read() -> None:
        with open(path, "rb") as pipe:
            got.append(pipe.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader, got


def test_a_fifo_target_is_written_in_place(shop: Cli, tmp_path: Path) -> None:
    """A reader on a named pipe gets what the file would have held; the FIFO stays a FIFO."""
    inputs = _inputs(tmp_path / "in")
    for number, writer in enumerate(writers(inputs)):
        key = f"fifo{number}"
        _fresh_events(inputs, key)
        fifo = tmp_path / f"pipe-{number}"
        os.mkfifo(fifo)
        reader, got = _read_fifo(fifo)
        run(shop, writer.argv(fifo, key), writer.code)
        reader.join(timeout=60)
        if reader.is_alive():  # never opened: release the reader, then fail
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            pytest.fail(f"{writer.name} never wrote to the FIFO")
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode), writer.name
        expected = _reference(shop, writer, tmp_path / "files", key)  # the same rejects again
        if writer.stable:
            assert got == [expected], writer.name
        else:
            assert got[0].splitlines()[0] == expected.splitlines()[0], writer.name


def test_dash_is_stdout_and_the_summary_goes_to_stderr(shop: Cli, tmp_path: Path) -> None:
    inputs = _inputs(tmp_path / "in")
    _fresh_events(inputs, "std")

    def out(*argv: str, code: int = 0) -> tuple[bytes, str]:
        result = shop(*argv, "--project", "acme", "--json")
        assert result.exit_code == code, (argv, result.stdout, result.stderr)
        return result.stdout_bytes, result.stderr

    catalog, _ = out("catalog", "export", "--output", "-")  # as without --output
    assert catalog == shop("catalog", "export", "--project", "acme", "--json").stdout_bytes
    assert not (Path.cwd() / "-").exists()

    report, summary = out(
        "reconcile", "stripe", "--period", "2026-10", "--output", "-", "--format", "json"
    )
    assert orjson.loads(report)["period"] == "2026-10"
    assert orjson.loads(summary)["matched"] == orjson.loads(report)["matched"]

    text, summary = out("stats", "--prometheus", "-")
    assert text.startswith(b"# HELP") and b"neruba_events_total" in text
    assert orjson.loads(summary)["project"] == "acme"

    rejects, summary = out("ingest", str(inputs / "eventsstd.jsonl"), "--rejects", "-", code=3)
    assert [orjson.loads(line)["line"] for line in rejects.splitlines()] == [2]
    assert orjson.loads(summary)["rejected"] == 1

    folder = shop(
        "compare",
        str(inputs / "baseline.csv"),
        "--period",
        "2026-10",
        "--output",
        "-",
        "--project",
        "acme",
    )
    assert folder.exit_code == 1 and "cannot go to stdout" in folder.stderr


PLANTED = ("{name}.tmp", ".{name}.tmp", ".{name}.partial")


def _plant(folder: Path, name: str, victim: Path) -> list[Path]:
    """Symlinks to `victim` under every name a temporary of `name` used to get."""
    links = [folder / pattern.format(name=name) for pattern in PLANTED]
    for link in links:
        link.symlink_to(victim)
    return links


def test_planted_symlinks_are_never_written_through(shop: Cli, tmp_path: Path) -> None:
    """`drop/ev.csv.tmp -> victim` planted before `export --output drop/ev.csv` (and the same
    for every command): the victim keeps its bytes, the target is a new regular file."""
    inputs = _inputs(tmp_path / "in")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    drop = tmp_path / "drop"
    drop.mkdir()
    for number, writer in enumerate(writers(inputs)):
        key = f"sym{number}"
        _fresh_events(inputs, key)
        target = drop / f"out-{number}.csv"
        links = _plant(drop, target.name, victim)
        run(shop, writer.argv(target, key), writer.code)
        assert victim.read_text() == "precious\n", writer.name
        assert target.is_file() and not target.is_symlink() and target.stat().st_size > 0
        assert all(link.is_symlink() for link in links), writer.name
    # the report folders of compare and simulate
    for command in (
        ["compare", str(inputs / "baseline.csv"), "--period", "2026-10"],
        ["simulate", "--catalog", str(inputs / "new.toml"), "--period", "2026-10"],
    ):
        folder = tmp_path / command[0]
        folder.mkdir()
        for name in ("summary.json", "customers.csv", "lines.csv", "report.html"):
            _plant(folder, name, victim)
        run(shop, [*command, "--output", str(folder)], 0)
        assert victim.read_text() == "precious\n", command[0]
        assert (folder / "report.html").is_file() and not (folder / "report.html").is_symlink()
    # a symlink at the target's own name is replaced by the file, never followed
    named = drop / "named.csv"
    named.symlink_to(victim)
    run(shop, ["export", "events", "--output", str(named)], 0)
    assert victim.read_text() == "precious\n" and not named.is_symlink()


def test_a_new_output_file_gets_the_umask_mode(shop: Cli, tmp_path: Path) -> None:
    """Not the 0600 of a private temporary: 0666 less the umask, as any new file."""
    previous = os.umask(0o027)
    try:
        run(shop, ["export", "events", "--output", str(tmp_path / "ev.csv")], 0)
        run(shop, ["stats", "--prometheus", str(tmp_path / "n.prom")], 0)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "ev.csv").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "n.prom").st_mode) == 0o640


def test_catalog_export_to_a_file_is_what_stdout_shows(shop: Cli, tmp_path: Path) -> None:
    target = tmp_path / "catalog.toml"
    run(shop, ["catalog", "export", "--output", str(target)], 0)
    assert target.read_bytes() == shop("catalog", "export", "--project", "acme").stdout_bytes


def test_dev_stdout_redirected_to_a_file_by_cron(shop: Cli, tmp_path: Path) -> None:
    """`neruba export events --output /dev/stdout > events.csv` (through a private link to
    /proc/self/fd/1, standing in for /dev/stdout): the file gets the export, the link stays."""
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    assert shop.db_url is not None
    target = tmp_path / "events.csv"
    with target.open("wb") as out:
        subprocess.run(
            neruba_argv(shop.db_url, "export", "events", "--output", str(link), "--quiet"),
            stdout=out,
            check=True,
            env={**os.environ, **ENV},
        )
    assert target.read_bytes() == shop("export", "events", "--project", "acme").stdout_bytes
    assert link.is_symlink()
