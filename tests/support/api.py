"""`neruba serve` as users meet it: a real process on a free port, a real HTTP client.

`ApiServer.start(db_url)` runs `python -m neruba_cli serve` (the console script's entry point)
against a database, waits until `/healthz` answers, and stops it at the end of the test
(`serve` fixture). `key(cli, *scopes)` makes a project key through the CLI and returns its
secret; `client(server, secret)` is an httpx client that sends it as a bearer token.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.cli import Cli, ok
from tests.support.processes import ENV

START_TIMEOUT = 60.0  # a loaded CI machine may take a while to import and bind


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ApiServer:
    db_url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(
        cls,
        db_url: str,
        log: Path,
        *args: str,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> ApiServer:
        chosen = port or free_port()
        argv = [
            sys.executable, "-m", "neruba_cli", "serve", "--db", db_url, "--port", str(chosen),
            *args,
        ]  # fmt: skip
        with log.open("ab") as sink:
            process = subprocess.Popen(
                argv,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**os.environ, **ENV, **(env or {})},
            )
        server = cls(db_url, chosen, process, log, tuple(args), dict(env or {}))
        server.wait_ready()
        return server

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise AssertionError(f"neruba serve exited {code}: {self.output()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"neruba serve did not answer in {START_TIMEOUT} s: {self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Stop the server (SIGTERM by default) and return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def key(cli: Cli, *scopes: str, project: str = "acme", extra: tuple[str, ...] = ()) -> str:
    """A new key of `project` with these scopes; its secret."""
    scope_args = [arg for scope in scopes for arg in ("--scope", scope)]
    return str(ok(cli, "key", "create", *scope_args, *extra, project=project)["secret"])


def client(server: ApiServer, secret: str | None = None, **options: object) -> httpx.Client:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=30, **options)  # type: ignore[arg-type]


class Servers:
    """The servers a test started, stopped when it ends."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[ApiServer] = []

    def __call__(self, db_url: str, *args: str, env: dict[str, str] | None = None) -> ApiServer:
        log = self.folder / f"serve-{len(self.started)}.log"
        server = ApiServer.start(db_url, log, *args, env=env)
        self.started.append(server)
        return server
