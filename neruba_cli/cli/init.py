"""`neruba init`"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from neruba_cli.cli.paths import output_file
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.config import (
    CONFIG_FILE_NAME,
    ENV_DATABASE_URL,
    Settings,
    resolve_settings,
    write_config_file,
)
from neruba_cli.db import migrate
from neruba_cli.db.engine import (
    anchored_sqlite_url,
    display_url,
    parse_database_url,
    redact,
)
from neruba_cli.services.tenancy.access import OPERATOR


def register(app: typer.Typer) -> None:
    @command(app, "init", scope=OPERATOR, mutating=True)
    def init(
        rt: Runtime,
        force: Annotated[
            bool, typer.Option("--force", help="Overwrite an existing config.")
        ] = False,
    ) -> None:
        """Write ./neruba.toml (or --config) and create or upgrade the database."""
        target = Path(rt.options.config) if rt.options.config else Path(CONFIG_FILE_NAME)
        wrote = force or not target.exists()
        if wrote:
            output_file(target, "--config")
        if not target.exists():  # the file is being created: read nothing from it
            rt.use_settings(resolve_settings(db=rt.options.db, project=rt.options.project))
        parse_database_url(rt.settings.database_url)
        if wrote:
            rt.use_settings(_anchored(rt.settings, target))
        url = rt.settings.database_url
        engine = rt.engine(check_schema=False)
        before = migrate.current_revision(engine)
        migrate.upgrade(engine)
        after = migrate.current_revision(engine)
        left_out = False  # the config file never holds the password (see write_config_file)
        if wrote:  # only once the database is reachable and migrated
            left_out = write_config_file(target, database_url=url, project=rt.settings.project)
        rt.out.emit(
            {
                "config": str(target),
                "config_written": wrote,
                "database": redact(engine.url),
                "password_left_out": left_out,
                "from": before,
                "to": after,
            }
        )
        if wrote:
            rt.out.say(f"Wrote {target}.")
        else:
            rt.out.say(f"Kept the existing {target} (use --force to overwrite it).")
        rt.out.say(f"Database {display_url(url)} is at {after}.")
        if left_out:
            rt.out.warn(
                f"the database password was not written to {target} (a config file never "
                f"holds secrets): set {ENV_DATABASE_URL} to the full URL in the environment "
                "of every neruba command, e.g. in the cron job or a file only you can read"
            )


def _anchored(settings: Settings, config: Path) -> Settings:
    """The config file gets an absolute SQLite path, so it names the same file from any
    working directory: the default database goes beside the config file, a relative --db or
    NERUBA_DATABASE_URL is read against the working directory as it was typed."""
    default = settings.sources.get("database_url") == "default"
    folder = config.absolute().parent if default else Path.cwd()
    return replace(settings, database_url=anchored_sqlite_url(settings.database_url, folder))
