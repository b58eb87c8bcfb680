"""Private, throwaway database servers that a test may stop and start at will.

The shared MariaDB and PostgreSQL on 3306/5432 serve everyone's tests and must never be
stopped, so the outage tests run their own: a PostgreSQL cluster made with `initdb` (run as
the `postgres` user, since PostgreSQL refuses to run as root) and a MariaDB data directory
made with `mariadb-install-db`, each in a temporary folder, listening on a free port on
127.0.0.1 with a passwordless superuser (trust / normal root authentication). `stop()` kills
the server the hard way (`pg_ctl stop -m immediate`, SIGKILL for mariadbd), `start()` brings it
back on the same port with the same data (crash recovery included).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from glob import glob
from pathlib import Path

from sqlalchemy import create_engine, text

from neruba_cli.db.engine import parse_database_url

START_TIMEOUT = 60.0


class ServerUnavailable(Exception):
    """The binaries are missing or the server would not start: the caller skips or fails."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run(argv: list[str], what: str, timeout: float = 120.0) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServerUnavailable(f"{what}: {exc}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ServerUnavailable(f"{what} exited {done.returncode}: {' | '.join(tail)}")


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


class PrivateServer:
    dialect: str
    port: int
    folder: Path

    def url(self, database: str) -> str:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return _port_open(self.port)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """A new empty database (utf8mb4 on MariaDB); its URL."""
        admin = create_engine(
            parse_database_url(self.url(self.admin_database)),
            isolation_level="AUTOCOMMIT",
            connect_args={"connect_timeout": 5},
        )
        suffix = " CHARACTER SET utf8mb4" if self.dialect == "mariadb" else ""
        try:
            with admin.connect() as conn:
                conn.execute(text(f"CREATE DATABASE {name}{suffix}"))
        finally:
            admin.dispose()
        return self.url(name)

    admin_database = ""

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if _port_open(self.port):
                engine = create_engine(
                    parse_database_url(self.url(self.admin_database)),
                    connect_args={"connect_timeout": 2},
                )
                try:
                    with engine.connect() as conn:
                        conn.execute(text("SELECT 1"))
                    return
                except Exception:
                    pass
                finally:
                    engine.dispose()
            time.sleep(0.1)
        raise ServerUnavailable(f"{self.dialect} on port {self.port} did not start: {self.log()}")

    def log(self) -> str:
        return ""


class PrivatePostgres(PrivateServer):
    dialect = "postgresql"
    admin_database = "postgres"

    def __init__(self) -> None:
        found = sorted(glob("/usr/lib/postgresql/*/bin/initdb"))
        initdb = found[-1] if found else shutil.which("initdb")
        if initdb is None or shutil.which("runuser") is None:
            raise ServerUnavailable("no initdb (PostgreSQL server binaries) or runuser")
        self.bin = Path(initdb).parent
        # Outside pytest's tmp folders: those are private to root, and the server runs as
        # the postgres user.
        self.folder = Path(tempfile.mkdtemp(prefix="neruba-pg-"))
        try:
            shutil.chown(self.folder, "postgres", "postgres")
        except (LookupError, OSError) as exc:  # no postgres user to run the server as
            shutil.rmtree(self.folder, ignore_errors=True)
            raise ServerUnavailable(f"cannot give {self.folder} to user postgres: {exc}") from None
        self.data = self.folder / "data"
        self.port = free_port()
        try:
            _run(
                self._as_postgres(
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.data),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--no-instructions",
                ),
                "initdb",
            )
            self.start()
        except BaseException:  # no half-made cluster left behind
            self.close()
            raise

    def _as_postgres(self, *argv: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv]

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c shared_buffers=32MB"
        )
        _run(
            self._as_postgres(
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-o",
                options,
                "-l",
                str(self.folder / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ),
            "pg_ctl start",
        )
        self._wait_ready()

    def stop(self) -> None:
        """Immediate shutdown: every backend is killed, no checkpoint (a crash, for clients)."""
        _run(
            self._as_postgres(
                str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"
            ),
            "pg_ctl stop",
        )

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


class PrivateMariaDB(PrivateServer):
    dialect = "mariadb"
    admin_database = "mysql"

    def __init__(self) -> None:
        install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        server = shutil.which("mariadbd") or (
            "/usr/sbin/mariadbd" if os.path.exists("/usr/sbin/mariadbd") else None
        )
        if install is None or server is None:
            raise ServerUnavailable("no mariadb-install-db/mariadbd (MariaDB server binaries)")
        self.server = server
        self.folder = Path(tempfile.mkdtemp(prefix="neruba-maria-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        try:
            _run(
                [
                    install,
                    "--no-defaults",
                    f"--datadir={self.data}",
                    "--user=root",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    "--skip-name-resolve",
                ],
                "mariadb-install-db",
            )
            self.start()
        except BaseException:  # no half-made data directory left behind
            self.close()
            raise

    def url(self, database: str) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        argv = [
            self.server,
            "--no-defaults",
            f"--datadir={self.data}",
            f"--port={self.port}",
            f"--socket={self.folder / 'mysqld.sock'}",
            "--bind-address=127.0.0.1",
            "--user=root",
            "--skip-name-resolve",
            f"--pid-file={self.folder / 'mysqld.pid'}",
            f"--log-error={self.folder / 'error.log'}",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=64M",
            "--innodb-log-file-size=32M",
            # The log reaches the OS at every commit: a killed server (not a crashed machine)
            # loses nothing, and the test does not wait for fsyncs.
            "--innodb-flush-log-at-trx-commit=2",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
        ]
        self.process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            self._wait_ready()
        except BaseException:  # never leave a server behind
            self.stop()
            raise

    def stop(self) -> None:
        """SIGKILL: the server vanishes mid-whatever, its sockets closed by the kernel."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None

    def log(self) -> str:
        path = self.folder / "error.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""
