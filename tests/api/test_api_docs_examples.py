"""The `curl` examples of the HTTP API pages (docs/api/*.md) stay true: each page's shell
blocks that call curl run in order with bash against a real `neruba serve`, on a shop that
holds what the examples name (project acme, customers c1, acme-us and cus_acme on a plan
since October 2026, October billed and finalized), and every request answers 2xx.

The pages' addresses (`http://127.0.0.1:8080`, `https://neruba.example.com`, `$API`) point at
the server, their key variables hold a key with every scope an application uses, and
`neruba` in a block is the CLI on the same database. A customer an example creates is put on
the plan of its currency before the next block runs, as the operator would."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import catalogs
from tests.support.api import key
from tests.support.cli import Cli, ok
from tests.support.doors import ALL_SCOPES
from tests.support.events import event, write_jsonl
from tests.support.shops import new_project

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api"
PAGES = sorted(path.name for path in DOCS.glob("*.md"))
ADDRESSES = ("http://127.0.0.1:8080", "https://neruba.example.com")
KEY_VARIABLES = ("NERUBA_KEY", "NERUBA_API_KEY", "NERUBA_INGEST_KEY", "KEY")
START = "2026-10-01T00:00:00Z"
CATALOG = catalogs.catalog(
    meters=[catalogs.meter("api_calls", "count")],
    plans=[
        catalogs.plan("pro", "10.00", catalogs.per_unit("api_calls", "0.01")),
        catalogs.plan("pro_eur", "10.00", catalogs.per_unit("api_calls", "0.01"), currency="EUR"),
    ],
)
# Every curl records its status and arguments; it fails (as --fail would) on 400 and above.
PRELUDE = r"""
set -e
curl() {
  local code headers="$CURL_LOG.headers" args="$*"
  code=$(command curl -sS -o /dev/null -D "$headers" -w '%{http_code}' "$@")
  local rid=$(sed -n 's/^[Rr]equest-[Ii]d: *\([^[:space:]]*\).*/\1/p' "$headers")
  printf '%s %s %s\n' "$code" "${rid:--}" "${args//$'\n'/ }" >> "$CURL_LOG"
  [ "$code" -lt 400 ]
}
neruba() { env -u NERUBA_API_KEY "$NERUBA_PYTHON" -m neruba_cli "$@"; }
command -v uuidgen >/dev/null ||
  uuidgen() { "$NERUBA_PYTHON" -c 'import uuid; print(uuid.uuid4())'; }
"""


def curl_blocks(page: str) -> list[str]:
    """The page's sh blocks that call curl, in order; a block that starts a server is its
    own subject (the OpenAPI page), not an example to run here."""
    text = (DOCS / page).read_text()
    blocks = re.findall(r"```(?:sh|bash|shell)\n(.*?)```", text, flags=re.S)
    return [block for block in blocks if "curl " in block and "neruba serve" not in block]


def subscribe_new(cli: Cli, subscribed: set[str]) -> None:
    for customer in ok(cli, "customer", "list"):
        external = customer["external_id"]
        if external not in subscribed:
            plan = "pro" if customer["currency"] == "USD" else "pro_eur"
            ok(cli, "subscription", "create", external, plan, "--start", START)
            subscribed.add(external)


@pytest.mark.skipif(shutil.which("curl") is None, reason="the examples need curl")
@pytest.mark.parametrize("page", [page for page in PAGES if curl_blocks(page)])
def test_the_curl_examples_of_each_api_page_answer(
    page: str, sqlite_cli: Cli, serve: Any, tmp_path: Path
) -> None:
    cli = sqlite_cli
    new_project(cli, "c1", "acme-us", "cus_acme")
    catalogs.apply_catalog(cli, tmp_path, CATALOG)
    subscribed: set[str] = set()
    subscribe_new(cli, subscribed)
    seed = [
        event(f"seed-{customer}-{n}", customer=customer, timestamp=f"2026-10-{n + 2:02d}T12:00:00Z")
        for customer in sorted(subscribed)
        for n in range(3)
    ]
    ok(cli, "ingest", str(write_jsonl(tmp_path / "october.jsonl", seed)))
    ok(cli, "run", "bill", "--period", "2026-10", "--as-of", "2026-11-02T00:00:00Z", "--finalize")
    secret = key(cli, *ALL_SCOPES)
    server = serve(cli.db_url)
    log = tmp_path / "curl.log"
    env = {
        **os.environ,
        **dict.fromkeys(KEY_VARIABLES, secret),
        "API": server.url,
        "CURL_LOG": str(log),
        "NERUBA_PYTHON": sys.executable,
        "NERUBA_DATABASE_URL": str(cli.db_url),
    }
    for block in curl_blocks(page):
        script = block
        for address in ADDRESSES:
            script = script.replace(address, server.url)
        ran = subprocess.run(
            ["bash", "-c", PRELUDE + script],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        answered = log.read_text() if log.exists() else ""
        assert ran.returncode == 0, (block, answered, ran.stdout[-2000:], ran.stderr[-2000:])
        subscribe_new(cli, subscribed)
    statuses = [line.split(" ", 2) for line in log.read_text().splitlines()]
    assert statuses, f"{page}: no request was sent"
    assert [(code, args) for code, _, args in statuses if not code.startswith("2")] == []
