"""Settings resolution: flags > NERUBA_* environment > config file > defaults.

The config file is `--config PATH` (or NERUBA_CONFIG), else `./neruba.toml`, else
`$XDG_CONFIG_HOME/neruba/config.toml`. Secrets are never read from it: they come from the
environment only, so a config file can be committed or shared safely. A relative SQLite path
in it is read against the file's folder, so the same file names the same database from any
working directory (cron runs in $HOME).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w
from pydantic import BaseModel, ConfigDict, ValidationError

from neruba_cli.db.engine import anchored_sqlite_url
from neruba_cli.domain.errors import InvalidInput

DEFAULT_DATABASE_URL = "sqlite:///./neruba.db"
CONFIG_FILE_NAME = "neruba.toml"

ENV_DATABASE_URL = "NERUBA_DATABASE_URL"
ENV_PROJECT = "NERUBA_PROJECT"
ENV_CONFIG = "NERUBA_CONFIG"
ENV_DEBUG = "NERUBA_DEBUG"
ENV_API_KEY = "NERUBA_API_KEY"  # a secret: read from the environment only, never stored


class _DatabaseSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = None


class _DefaultsSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    project: str | None = None


class _PrivacySection(BaseModel):
    """`[privacy]`: the event properties that hold personal data (`neruba customer forget`
    removes them from the customer's events)."""

    model_config = ConfigDict(extra="forbid")
    personal_properties: list[str] = []


class ConfigFile(BaseModel):
    """The schema of neruba.toml; unknown keys are errors so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid")
    database: _DatabaseSection = _DatabaseSection()
    defaults: _DefaultsSection = _DefaultsSection()
    privacy: _PrivacySection = _PrivacySection()


@dataclass(frozen=True)
class Settings:
    database_url: str
    project: str | None
    config_path: Path | None
    sources: dict[str, str] = field(default_factory=dict)
    personal_properties: tuple[str, ...] = ()  # [privacy] personal_properties

    @property
    def database_origin(self) -> str:
        """Where the database URL came from, as a clause for errors about the database."""
        source = self.sources.get("database_url", "default")
        if source == "default":
            return f"its URL is the default: no --db, {ENV_DATABASE_URL} or config file names one"
        where = source if source in ("--db", ENV_DATABASE_URL) else f"config file {source}"
        return f"its URL is from {where}"


def find_config_file(
    explicit: str | None, env: Mapping[str, str], cwd: Path
) -> tuple[Path | None, bool]:
    """Return the config file to read and whether the user named it (then it must exist)."""
    named = explicit or env.get(ENV_CONFIG)
    if named:
        return Path(named).expanduser(), True
    local = cwd / CONFIG_FILE_NAME
    if local.is_file():
        return local, False
    xdg = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    user = xdg / "neruba" / "config.toml"
    return (user if user.is_file() else None), False


def read_config_file(path: Path) -> ConfigFile:
    """Parse and validate a config file; every error names the file and where in it."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise InvalidInput(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{path}: invalid TOML: {exc}") from None
    try:
        return ConfigFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidInput(f"{path}: {where}: {first['msg']}") from None


def resolve_settings(
    *,
    db: str | None = None,
    project: str | None = None,
    config: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    environ = os.environ if env is None else env
    path, named = find_config_file(config, environ, cwd or Path.cwd())
    file = ConfigFile()
    if path is not None:
        if named and not path.is_file():
            raise InvalidInput(f"config file {path} does not exist")
        file = read_config_file(path)
    url, url_source = _first(
        ("--db", db),
        (ENV_DATABASE_URL, environ.get(ENV_DATABASE_URL)),
        (str(path), file.database.url),
        ("default", DEFAULT_DATABASE_URL),
    )
    if path is not None and url is not None and url_source == str(path):
        url = anchored_sqlite_url(url, path.parent)  # beside the file, whatever the cwd
    slug, slug_source = _first(
        ("--project", project),
        (ENV_PROJECT, environ.get(ENV_PROJECT)),
        (str(path), file.defaults.project),
        ("default", None),
    )
    return Settings(
        database_url=url or DEFAULT_DATABASE_URL,
        project=slug,
        config_path=path,
        sources={"database_url": url_source, "project": slug_source},
        personal_properties=tuple(file.privacy.personal_properties),
    )


def _first(*candidates: tuple[str, str | None]) -> tuple[str | None, str]:
    for source, value in candidates:
        if value:
            return value, source
    return None, "default"


def write_config_file(path: Path, *, database_url: str, project: str | None = None) -> None:
    """Write neruba.toml with tomli-w (never by string formatting, so quoting is always right)."""
    document: dict[str, dict[str, str]] = {"database": {"url": database_url}}
    if project:
        document["defaults"] = {"project": project}
    path.write_text(tomli_w.dumps(document), encoding="utf-8")
