"""Real `neruba` processes for the reliability suite, killing them at a chosen
moment, and the consistency sweep as the last word.

A process is `python -m neruba_cli ...` (the same entry point as the `neruba` console script).
Where several must start at the same instant, `gated` loads the CLI first, says "ready", and
runs `main()` only when the test writes "go": Python's start-up (about a second here) is then
out of the race.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine

from neruba_cli.db import locks
from tests.support.cli import Cli, ok

ROOT = Path(__file__).resolve().parents[2]
ENV = {"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "120", "PYTHONPATH": str(ROOT)}

# The console script's own entry point, imported before the gate opens.
GATE = r"""
import sys
from neruba_cli.cli.app import main
sys.argv = ["neruba", *sys.argv[1:]]
print("ready", flush=True)
sys.stdin.readline()
main()
"""


def neruba_argv(db_url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "neruba_cli", *args, "--project", "acme", "--db", db_url]


def spawn(
    db_url: str, *args: str, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A `neruba` process whose stdout and stderr go to `log` (.out / .err): a pipe nobody
    reads could block it before the kill."""
    out = log.with_suffix(".out").open("wb")
    err = log.with_suffix(".err").open("wb")
    try:
        return subprocess.Popen(
            neruba_argv(db_url, *args),
            stdout=out,
            stderr=err,
            env={**os.environ, **ENV, **(env or {})},
        )
    finally:
        out.close()
        err.close()


def logs(log: Path) -> str:
    parts = [log.with_suffix(s) for s in (".err", ".out")]
    return " | ".join(p.read_text(errors="replace")[-2000:] for p in parts if p.exists())


@dataclass
class Kill:
    """How a kill went: the extra delay after the trigger, and whether the process was still
    running when SIGKILL reached it (`killed`) or had already exited (`code`)."""

    trigger: str
    delay: float
    killed: bool
    code: int

    def __str__(self) -> str:
        state = "killed" if self.killed else f"had exited {self.code}"
        return f"SIGKILL {self.delay:.3f}s after {self.trigger}: {state}"


def kill_after(
    process: subprocess.Popen[Any],
    trigger: str,
    reached: Callable[[], bool],
    rng: random.Random,
    max_delay: float,
    timeout: float = 120,
) -> Kill:
    """Poll until `reached()` (progress the process has committed), wait a seeded random
    extra delay in [0, max_delay), then SIGKILL it."""
    deadline = time.monotonic() + timeout
    delay = rng.uniform(0, max_delay)
    try:
        while not reached():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"never saw {trigger} (exit {process.poll()})")
            time.sleep(0.01)
        time.sleep(delay)
        alive = process.poll() is None
        if alive:
            os.kill(process.pid, signal.SIGKILL)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    kill = Kill(trigger, delay, alive and code == -signal.SIGKILL, code)
    print(kill)  # shown with the test's output when it fails
    return kill


class Gated:
    """`neruba` processes loaded and waiting; `go()` starts them all at once."""

    def __init__(self, db_url: str, argvs: list[list[str]]) -> None:
        self.processes = [
            subprocess.Popen(
                [sys.executable, "-c", GATE, *argv, "--project", "acme", "--db", db_url],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, **ENV},
            )
            for argv in argvs
        ]

    def go(self, timeout: float = 180) -> list[tuple[int, str, str]]:
        """(exit code, stdout, stderr) of each, in the order they were given."""
        try:
            for process in self.processes:
                assert process.stdout is not None
                line = process.stdout.readline().strip()
                assert line == b"ready", (line, process.stderr.read() if process.stderr else b"")
            for process in self.processes:
                assert process.stdin is not None
                process.stdin.write(b"go\n")
                process.stdin.flush()
            results = []
            for process in self.processes:
                out, err = process.communicate(timeout=timeout)
                results.append((process.returncode, out.decode(), err.decode()))
            return results
        finally:
            for process in self.processes:
                if process.poll() is None:
                    process.kill()
                    process.communicate()


def assert_check_ok(cli: Cli, context: object = "") -> dict[str, Any]:
    """`neruba check --json`: exit 0 and ok, else every problem it lists."""
    result = cli("check", "--project", "acme", "--json")
    report: dict[str, Any] = orjson.loads(result.stdout) if result.stdout.strip() else {}
    problems = [
        (item["name"], item["problems"], item["details"][:10])
        for item in report.get("checks", [])
        if item.get("problems")
    ]
    assert result.exit_code == 0 and report.get("ok") is True, (
        f"check failed ({context}): exit {result.exit_code}, {problems or result.stderr[-3000:]}"
    )
    return report


def held_lock(cli: Cli, name: str) -> dict[str, Any] | None:
    """The lock `name` from `locks list --json` when somebody holds it."""
    for lock in ok(cli, "locks", "list"):
        if lock["name"] == name and lock["holder"]:
            return dict(lock)
    return None


def left_by(cli: Cli, name: str, pid: int) -> dict[str, Any] | None:
    """The lease a killed job left behind: still listed, held by the dead process. None when
    the kill came after the job had let go of it."""
    lock = held_lock(cli, name)
    if lock is not None:
        assert lock["holder"].endswith(f":{pid}"), (lock, pid)
    return lock


def assert_taken_over(engine: Engine, cli: Cli, left: dict[str, Any]) -> None:
    """README "Locks": a lease whose holder is a process of this host that no longer exists is
    taken over at once (no exit 5, no waiting for the expiry, no `locks release`), advancing
    the fencing token; the rerun let go of it when done."""
    assert held_lock(cli, left["name"]) is None, left
    state = locks.get(engine, left["name"])
    assert state is not None and state.token > left["token"], (state, left)


class ReleaseFromAnotherProcess:
    """An operator's `neruba locks release NAME --yes`, run in a process of its own each time
    it is called (from a test double's hook, while the holder is between two writes). A hook
    may run on another thread, whose assertion errors nobody would see: the outcomes are kept,
    and the test asserts them with `assert_released_once`."""

    def __init__(self, db_url: str, name: str) -> None:
        self.db_url, self.name = db_url, name
        self.outcomes: list[tuple[int, str]] = []

    def __call__(self) -> None:
        done = subprocess.run(
            neruba_argv(self.db_url, "locks", "release", self.name, "--yes", "--json"),
            capture_output=True,
            text=True,
            env={**os.environ, **ENV},
            timeout=120,
        )
        self.outcomes.append((done.returncode, done.stdout + done.stderr))

    def assert_released_once(self) -> None:
        assert len(self.outcomes) == 1, self.outcomes
        code, output = self.outcomes[0]
        assert code == 0 and self.name in output, output[-2000:]
