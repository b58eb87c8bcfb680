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
from typing import Any

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


# --------------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class Seed:
    """What `seed` wrote: project acme's customers and invoice numbers, and a foreign project
    `other` with its own customer, so lookups hit real rows and a key never sees the other
    project's."""

    customers: tuple[str, ...]
    invoices: tuple[str, ...]
    foreign_customer: str = "z-other-1"

    @property
    def path_values(self) -> dict[str, str]:
        """A real row of acme for each path parameter the API's routes take."""
        return {"external_id": self.customers[0], "number": self.invoices[0]}

    @property
    def identifiers(self) -> set[str]:
        return {*self.customers, *self.invoices}


def seed(cli: Cli, tmp_path: Path) -> Seed:
    """The invoice shop (customers, a catalog, subscriptions, usage, October's invoices) in
    acme, and a project `other` with one customer."""
    from tests.support.shops import invoice_shop, new_project

    invoice_shop(cli, tmp_path)
    new_project(cli, Seed.foreign_customer, slug="other")
    listed = ok(cli, "invoice", "list")
    rows = listed["invoices"] if isinstance(listed, dict) else listed
    numbers = tuple(str(row["number"]) for row in rows if row.get("number"))
    assert numbers, listed
    return Seed(customers=("c1", "c2"), invoices=numbers)


def load_schema(server: ApiServer) -> dict[str, Any]:
    """The OpenAPI document a `--docs` server serves."""
    answer = httpx.get(f"{server.url}/openapi.json", timeout=30)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


@dataclass(frozen=True)
class SchemaOperation:
    path: str
    method: str
    operation: dict[str, Any]

    @property
    def scope(self) -> str | None:
        found = self.operation.get("x-neruba-scope")
        return str(found) if found else None

    @property
    def path_parameters(self) -> list[str]:
        return [p["name"] for p in self.operation.get("parameters", []) if p["in"] == "path"]

    def url(self, values: dict[str, str]) -> str:
        path = self.path
        for name in self.path_parameters:
            path = path.replace("{" + name + "}", values[name])
        return path

    def __str__(self) -> str:
        return f"{self.method.upper()} {self.path}"


def schema_operations(schema: dict[str, Any]) -> list[SchemaOperation]:
    """Every operation of an OpenAPI document, in path order."""
    methods = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
    return [
        SchemaOperation(path, method, operation)
        for path, item in sorted(schema["paths"].items())
        for method, operation in item.items()
        if method in methods
    ]
