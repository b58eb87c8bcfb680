"""Errors the domain raises; the CLI maps each kind to an exit code from DESIGN.md."""

from __future__ import annotations


class NerubaError(Exception):
    """A problem the operator can act on: printed as one line, never as a traceback."""

    exit_code = 1
    kind = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message} ({self.hint})"


class InvalidInput(NerubaError):
    """A value failed validation (a flag, a config entry, a row of a file)."""

    kind = "invalid_input"


class UsageError(NerubaError):
    """The command was called wrongly; exit 2 like a bad flag."""

    exit_code = 2
    kind = "usage_error"


class NotFound(NerubaError):
    kind = "not_found"


class AlreadyExists(NerubaError):
    kind = "already_exists"


class DatabaseError(NerubaError):
    """The database is unreachable, misconfigured, or not at the schema this code needs."""

    kind = "database_error"


class LockHeld(NerubaError):
    """Another holder owns a lease; exit 5 so cron can tell 'busy' from 'broken'."""

    exit_code = 5
    kind = "lock_held"


class LockLost(NerubaError):
    """Our lease expired and someone else took it: every further write must stop."""

    exit_code = 5
    kind = "lock_lost"
