"""`neruba locks ...`: the lease locks that keep cron jobs and operators from colliding."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from neruba_cli.cli.output import table
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.db import locks
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.tenancy import access

app = typer.Typer()


def _as_dict(state: locks.LockState, now: Any) -> dict[str, Any]:
    return {
        "name": state.name,
        "holder": state.holder,
        "token": state.token,
        "acquired_at": format_ts(state.acquired_at),
        "expires_at": format_ts(state.expires_at),
        "stale": state.is_stale(now),
    }


@command(app, "list", group="locks", scope="read")
def list_(rt: Runtime) -> None:
    """List held locks; a stale one has passed its expiry without being released."""
    now = rt.now()
    held = locks.list_held(rt.engine(), prefix=access.lock_prefix(rt.access))
    rows = [_as_dict(state, now) for state in held]
    columns = ("name", "holder", "token", "acquired_at", "expires_at", "stale")
    shown = [[row[c] for c in columns] for row in rows]
    rt.out.emit(rows, table(None, columns, shown, empty="No locks are held."))


@command(app, "release", group="locks", scope="admin", mutating=True)
def release(
    rt: Runtime,
    name: Annotated[str, typer.Argument(help="Lock name, as `neruba locks list` shows it.")],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm without asking.")] = False,
) -> None:
    """Release a lock by force. Only do this when its holder is gone."""
    access.admit_lock(rt.access, name)
    engine = rt.engine()
    state = locks.get(engine, name)
    if state is not None and state.holder is not None:
        rt.confirm(f"Release lock {name} held by {state.holder}?", yes=yes)
    released = locks.force_release(engine, name)
    rt.out.emit(_as_dict(released, rt.now()))
    rt.out.say(f"Released {name} (was held by {released.holder}, token {released.token}).")
