"""What a sweep reports: problems (discrepancies, exit 4) and notes (worth knowing, not a
fault), each listed up to a limit and counted exactly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from neruba_cli.db.schema import Project

MAX_LISTED = 50  # problems listed per check; the count is always exact


@dataclass
class CheckResult:
    name: str
    description: str
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    count: int = 0
    notes: list[str] = field(default_factory=list)  # worth knowing, not a discrepancy
    note_count: int = 0

    def fail(self, problem: str) -> None:
        self.count += 1
        if len(self.problems) < MAX_LISTED:
            self.problems.append(problem)

    def note(self, note: str) -> None:
        self.note_count += 1
        if len(self.notes) < MAX_LISTED:
            self.notes.append(note)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "status": "ok" if not self.count else "fail",
            "checked": self.checked,
            "problems": self.count,
            "details": self.problems,
            "notes": self.notes,
            "noted": self.note_count,
        }


@dataclass
class CheckReport:
    project: str
    results: list[CheckResult]

    @property
    def ok(self) -> bool:
        return all(not result.count for result in self.results)

    def as_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "ok": self.ok,
            "problems": sum(result.count for result in self.results),
            "checks": [result.as_dict() for result in self.results],
        }


Sweep = Callable[[Connection, Project, CheckResult], None]
