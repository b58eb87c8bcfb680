"""Settings resolution: flags > NERUBA_* environment > config file > defaults.

The config file is `--config PATH` (or NERUBA_CONFIG), else `./neruba.toml`, else
`$XDG_CONFIG_HOME/neruba/config.toml`. Secrets are never read from it: they come from the
environment only, so a config file can be committed or shared safely. A relative SQLite path
in it is read against the file's folder, so the same file names the same database from any
working directory (cron runs in $HOME).
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from neruba_cli.db.engine import anchored_sqlite_url, without_credentials
from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.suggest import close_match
from neruba_cli.domain.toml_lines import key_lines, line_of

DEFAULT_DATABASE_URL = "sqlite:///./neruba.db"
CONFIG_FILE_NAME = "neruba.toml"

ENV_DATABASE_URL = "NERUBA_DATABASE_URL"
ENV_PROJECT = "NERUBA_PROJECT"
ENV_CONFIG = "NERUBA_CONFIG"
ENV_DEBUG = "NERUBA_DEBUG"
ENV_API_KEY = "NERUBA_API_KEY"  # a secret: read from the environment only, never stored
ENV_API_PREFIX = "NERUBA_API_"  # `neruba serve` settings: NERUBA_API_HOST, NERUBA_API_PORT, ...


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


class ApiSection(BaseModel):
    """`[api]`: how `neruba serve` listens and behaves. Each setting is also read from
    NERUBA_API_<NAME> and, where `neruba serve` has the flag, from the flag (which wins)."""

    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = Field(default=8080, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    docs: bool = False  # /openapi.json and /docs are 404 unless this is on
    max_batch_events: int = Field(default=1000, ge=1, le=100_000)  # POST /v1/events/batch
    max_body_bytes: int = Field(default=5 << 20, ge=1024, le=1 << 30)  # a request body: 413 over
    # Requests per second per key (a token bucket in each worker); 0 turns the limit off.
    rate_limit: float = Field(default=0, ge=0, le=1_000_000)
    # Requests a key may send at once before the rate applies; default: one second's worth.
    rate_burst: int | None = Field(default=None, ge=1, le=10_000_000)
    # On SIGTERM or SIGINT: /readyz answers 503 for drain_delay_seconds while requests are
    # still served, then the listener closes and requests in flight get drain_seconds to end.
    drain_delay_seconds: float = Field(default=1.0, ge=0, le=3600)
    drain_seconds: int = Field(default=10, ge=0, le=3600)
    metrics_cache_seconds: float = Field(default=10.0, ge=0, le=3600)  # project figures

    @property
    def burst(self) -> int:
        return self.rate_burst or max(1, math.ceil(self.rate_limit))


class ConfigFile(BaseModel):
    """The schema of neruba.toml; unknown keys are errors so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid")
    database: _DatabaseSection = _DatabaseSection()
    defaults: _DefaultsSection = _DefaultsSection()
    privacy: _PrivacySection = _PrivacySection()
    api: ApiSection = ApiSection()


# Every section and its settings, for the hints of a misspelt one.
_SECTIONS: dict[str, tuple[str, ...]] = {
    name: tuple(info.annotation.model_fields)  # type: ignore[union-attr]
    for name, info in ConfigFile.model_fields.items()
}


@dataclass(frozen=True)
class Settings:
    database_url: str
    project: str | None
    config_path: Path | None
    sources: dict[str, str] = field(default_factory=dict)
    personal_properties: tuple[str, ...] = ()  # [privacy] personal_properties
    api: ApiSection = field(default_factory=ApiSection)  # [api], before NERUBA_API_* and flags

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
        text = path.read_bytes().decode("utf-8")
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise InvalidInput(f"config file {path} does not exist") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{path}: invalid TOML: {exc}") from None
    try:
        return ConfigFile.model_validate(data)
    except ValidationError as exc:
        lines = key_lines(text)
        problems = [_config_problem(path, error, lines) for error in exc.errors()]
        raise InvalidInput("\n".join(problems)) from None


def _config_problem(path: Path, error: ErrorDetails, lines: dict[str, int]) -> str:
    """One validation error in the operator's words (never pydantic's "Extra inputs are not
    permitted"): the setting, its file, section and line, and the setting probably meant."""
    loc = [str(part) for part in error["loc"]]
    line = line_of(lines, ".".join(loc))
    section = loc[0] if len(loc) > 1 else None
    where = f"{path} [{section}]" if section else str(path)
    at = f", line {line}" if line else ""
    if error["type"] == "extra_forbidden":
        if section is None and isinstance(error["input"], dict):
            match = close_match(loc[0], _SECTIONS)
            sections = ", ".join(f"[{name}]" for name in _SECTIONS)
            hint = f"did you mean [{match}]?" if match else f"the sections are {sections}"
            return f"unknown section [{loc[0]}] in {where}{at} — {hint}"
        hint = _setting_hint(loc[-1], section)
        return f"unknown setting {loc[-1]!r} in {where}{at} — {hint}"
    if error["type"] == "model_type" and section is None:
        return f"{where}{at}: [{loc[0]}] must be a table of settings"
    setting = " ".join(loc[1:]) if section else loc[0]
    message = error["msg"]
    return f"{where}{at}: {setting}: {message[:1].lower()}{message[1:]}"


def _setting_hint(key: str, section: str | None) -> str:
    """The setting probably meant: a near spelling in the same section, else the section and
    name where a setting of that name belongs (`database_url` or `url` at the top is the
    `url` of [database]), else what the section holds."""
    if section is not None:
        match = close_match(key, _SECTIONS[section])
        if match is not None:
            return f"did you mean {match!r}?"
    places = {
        f"{name}_{setting}": (name, setting)
        for name, settings in _SECTIONS.items()
        for setting in settings
    }
    places.update(
        {setting: (name, setting) for name, settings in _SECTIONS.items() for setting in settings}
    )
    match = close_match(key, places)
    if match is not None:
        home, setting = places[match]
        if home == section:
            return f"did you mean {setting!r}?"
        return f"did you mean {setting!r} in [{home}]?"
    if section is None:
        return "settings go in a section: " + ", ".join(f"[{name}]" for name in _SECTIONS)
    return f"[{section}] has " + ", ".join(_SECTIONS[section])


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
        api=file.api,
    )


SERVE_SETTINGS_VARIABLE = "NERUBA_SERVE_SETTINGS"  # `neruba serve` -> each uvicorn worker


@dataclass(frozen=True)
class ServeSettings:
    """What `neruba serve` resolved, handed to each of its uvicorn workers through
    SERVE_SETTINGS_VARIABLE: written and read here only, so both sides agree on the format."""

    database_url: str
    api: ApiSection
    metrics_dir: str | None = None  # where the workers add up their request counts

    def encode(self) -> str:
        return json.dumps(
            {
                "database_url": self.database_url,
                "api": self.api.model_dump(),
                "metrics_dir": self.metrics_dir,
            }
        )

    @classmethod
    def decode(cls, text: str) -> ServeSettings:
        data = json.loads(text)
        return cls(
            data["database_url"], ApiSection.model_validate(data["api"]), data["metrics_dir"]
        )


def resolve_api_settings(
    settings: Settings,
    flags: Mapping[str, object],
    env: Mapping[str, str] | None = None,
) -> ApiSection:
    """`neruba serve`'s settings: a flag that was given, else NERUBA_API_<NAME>, else the
    config file's [api], else the default. An environment value is validated like the file's,
    and an error names the variable."""
    environ = os.environ if env is None else env
    merged = settings.api.model_dump()
    for name in ApiSection.model_fields:
        variable = ENV_API_PREFIX + name.upper()
        if environ.get(variable):
            try:
                value = ApiSection.model_validate({name: environ[variable]})
            except ValidationError as exc:
                message = exc.errors()[0]["msg"]
                raise InvalidInput(f"{variable}: {message[:1].lower()}{message[1:]}") from None
            merged[name] = getattr(value, name)
    merged.update({name: value for name, value in flags.items() if value is not None})
    try:
        return ApiSection.model_validate(merged)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise InvalidInput(f"--{error['loc'][0]}: {error['msg']}") from None


def _first(*candidates: tuple[str, str | None]) -> tuple[str | None, str]:
    for source, value in candidates:
        if value:
            return value, source
    return None, "default"


def write_config_file(path: Path, *, database_url: str, project: str | None = None) -> bool:
    """Write neruba.toml with tomli-w (never by string formatting, so quoting is always right).

    The file never holds a secret: the database URL is written without its password (and
    without credential parameters such as `?password=`), which the operator keeps in
    NERUBA_DATABASE_URL. Returns whether something was left out."""
    url, left_out = without_credentials(database_url)
    document: dict[str, dict[str, str]] = {"database": {"url": url}}
    if project:
        document["defaults"] = {"project": project}
    path.write_text(tomli_w.dumps(document), encoding="utf-8")
    return left_out
