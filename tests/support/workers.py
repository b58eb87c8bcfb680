"""Competing OS processes that each run `neruba` commands in-process, started together.

A worker is a real Python process with its own database connections that runs its commands
one after another through the CLI (argument parsing, the runtime, error mapping, the audit
record), in-process: starting `neruba` afresh for each of dozens of commands would take far
longer than the races themselves. It says "ready", waits for "go" on stdin, then prints one
JSON line per mutating command (exit code, output, error, the deadlock messages it retried,
start and end), then "done". A "revoker" worker instead revokes each grant whose reason starts
with "revocable" as soon as it sees it.

RETRIES lets a worker retry a command that failed with a deadlock; it is 0, so one fails the
test: the services keep one lock order and rerun a transaction the database picked as a
deadlock victim themselves (db/retry.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RETRIES = 0
TIMEOUT = 120

# One process: says "ready", waits for "go" on stdin, then runs its commands through the CLI
# in-process and prints one JSON line per mutating command (exit code, output, error, the
# deadlock messages it retried, start and end), then "done".
WORKER = r"""
import json, re, sys, time
from pathlib import Path
from tests.support.cli import Cli, neruba_command

spec = json.loads(Path(sys.argv[1]).read_text())
cli = Cli(spec["db"])
neruba_command()  # built before the gate opens: the race starts at the first command
DEADLOCK = re.compile(r"deadlock", re.I)

def invoke(argv):
    try:
        result = cli(*argv, "--project", "acme", "--json")
    except Exception as exc:  # a crash: reported as such, the other workers go on
        return 1, "", {"type": "unparsed", "exit_code": 1, "message": repr(exc)}
    error = None
    if result.exit_code != 0:
        lines = result.stderr.strip().splitlines()
        try:
            error = json.loads(lines[-1])["error"]
        except Exception:
            error = {"type": "unparsed", "exit_code": result.exit_code, "message": result.stderr}
    return result.exit_code, result.stdout, error

def run(argv):
    started, retried = time.time(), []
    while True:
        code, out, error = invoke(argv)
        if (code != 0 and error and error.get("type") == "database_error"
                and DEADLOCK.search(error.get("message", ""))
                and len(retried) < spec["retries"]):
            retried.append(error["message"])
            time.sleep(0.05 * len(retried))
            continue
        break
    data = json.loads(out) if code == 0 else None
    print(json.dumps({"argv": argv, "code": code, "data": data, "error": error,
                      "retried": retried, "start": started, "end": time.time()}), flush=True)
    return code

print("ready", flush=True)
sys.stdin.readline()
if spec["mode"] == "commands":
    for argv in spec["commands"]:
        run(argv)
        time.sleep(spec.get("pause", 0))
else:  # revoker: revoke each grant whose reason marks it, as soon as it appears
    revoked, deadline, polls = set(), time.time() + spec["deadline"], 0
    while len(revoked) < spec["expected"] and time.time() < deadline:
        polls += 1
        code, out, error = invoke(["credits", "list", spec["customer"]])
        if code != 0:
            print(json.dumps({"argv": ["credits", "list"], "code": code, "data": None,
                              "error": error, "retried": [], "start": 0, "end": 0}), flush=True)
            break
        for grant in json.loads(out):
            if grant["reason"].startswith("revocable") and grant["id"] not in revoked:
                run(["credits", "revoke", grant["id"], "--reason", "concurrency"])
                revoked.add(grant["id"])
        time.sleep(0.05)
    print(json.dumps({"polls": polls, "revoked": len(revoked)}), flush=True)
print("done", flush=True)
"""


class Worker:
    """One OS process running WORKER with its spec."""

    def __init__(self, name: str, tmp_path: Path, spec: dict[str, Any]) -> None:
        self.name = name
        path = tmp_path / f"worker-{name}.json"
        path.write_text(json.dumps({"retries": RETRIES, **spec}))
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "TERM": "dumb"},
            cwd=tmp_path,
        )
        self.results: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}

    def wait_ready(self) -> None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if line != "ready":
            _out, err = self.process.communicate(timeout=TIMEOUT)
            pytest.fail(f"{self.name} did not start: {line!r} {err[-4000:]}")

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def finish(self) -> None:
        out, err = self.process.communicate(timeout=TIMEOUT)
        lines = out.strip().splitlines()
        assert self.process.returncode == 0 and lines and lines[-1] == "done", (
            self.name,
            out[-2000:],
            err[-4000:],
        )
        for line in lines[:-1]:
            item = json.loads(line)
            if "argv" in item:
                self.results.append(item)
            else:
                self.summary = item


def run_together(workers: list[Worker]) -> None:
    """Start every worker at once (each loaded and waiting at the gate first)."""
    try:
        for worker in workers:
            worker.wait_ready()
        for worker in workers:
            worker.go()
        for worker in workers:
            worker.finish()
    finally:
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.communicate()


def failures(workers: list[Worker]) -> list[tuple[str, list[str], int, dict[str, Any]]]:
    return [
        (worker.name, item["argv"], item["code"], item["error"])
        for worker in workers
        for item in worker.results
        if item["code"] != 0
    ]
