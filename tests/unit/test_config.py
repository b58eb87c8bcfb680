"""Settings resolution: flags > NERUBA_* environment > config file > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from neruba_cli.config import (
    DEFAULT_DATABASE_URL,
    read_config_file,
    resolve_settings,
    write_config_file,
)
from neruba_cli.domain.errors import InvalidInput


def test_defaults_without_file_or_environment(tmp_path: Path) -> None:
    settings = resolve_settings(env={}, cwd=tmp_path)
    assert settings.database_url == DEFAULT_DATABASE_URL == "sqlite:///./neruba.db"
    assert settings.project is None and settings.config_path is None


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    write_config_file(tmp_path / "neruba.toml", database_url="sqlite:///file.db", project="filep")
    env = {"NERUBA_DATABASE_URL": "sqlite:///env.db", "NERUBA_PROJECT": "envp"}
    from_file = resolve_settings(env={}, cwd=tmp_path)
    from_file_url = f"sqlite:///{tmp_path / 'file.db'}"  # beside the config file
    assert (from_file.database_url, from_file.project) == (from_file_url, "filep")
    from_env = resolve_settings(env=env, cwd=tmp_path)
    assert (from_env.database_url, from_env.project) == ("sqlite:///env.db", "envp")
    from_flag = resolve_settings(db="sqlite:///flag.db", project="flagp", env=env, cwd=tmp_path)
    assert (from_flag.database_url, from_flag.project) == ("sqlite:///flag.db", "flagp")
    assert from_flag.sources == {"database_url": "--db", "project": "--project"}


def test_xdg_config_is_the_fallback(tmp_path: Path) -> None:
    user = tmp_path / "xdg" / "neruba"
    user.mkdir(parents=True)
    write_config_file(user / "config.toml", database_url="sqlite:///user.db")
    settings = resolve_settings(env={"XDG_CONFIG_HOME": str(tmp_path / "xdg")}, cwd=tmp_path)
    assert settings.database_url == f"sqlite:///{user / 'user.db'}"
    assert settings.config_path == user / "config.toml"


def test_a_relative_sqlite_path_in_a_config_file_is_read_beside_it(tmp_path: Path) -> None:
    """From any working directory (cron runs in $HOME) the file names the same database."""
    config = tmp_path / "etc" / "neruba.toml"
    config.parent.mkdir()
    elsewhere = tmp_path / "home"
    for url, expected in (
        ("sqlite:///./neruba.db", f"sqlite:///{tmp_path / 'etc' / 'neruba.db'}"),
        ("sqlite:///../data/n.db?timeout=5", f"sqlite:///{tmp_path / 'data' / 'n.db'}?timeout=5"),
        ("sqlite:////srv/neruba.db", "sqlite:////srv/neruba.db"),
        ("sqlite://", "sqlite://"),
        # the file never holds the password: it stays in NERUBA_DATABASE_URL
        ("postgresql://neruba:secret@db/neruba", "postgresql://neruba@db/neruba"),
    ):
        left_out = write_config_file(config, database_url=url)
        assert left_out == ("secret" in url)
        settings = resolve_settings(config=str(config), env={}, cwd=elsewhere)
        assert settings.database_url == expected, url
    flag = resolve_settings(db="sqlite:///./flag.db", config=str(config), env={}, cwd=elsewhere)
    assert flag.database_url == "sqlite:///./flag.db"  # a flag is read against the cwd


def test_named_config_must_exist(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        resolve_settings(config=str(tmp_path / "missing.toml"), env={}, cwd=tmp_path)
    with pytest.raises(InvalidInput, match="does not exist"):
        resolve_settings(env={"NERUBA_CONFIG": str(tmp_path / "gone.toml")}, cwd=tmp_path)


def test_bad_toml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "neruba.toml"
    path.write_text('[database]\nurl = "x"\nurl = "y"\n')
    with pytest.raises(InvalidInput) as caught:
        read_config_file(path)
    assert str(path) in str(caught.value) and "line 3" in str(caught.value)


def test_unknown_keys_are_errors_with_their_path(tmp_path: Path) -> None:
    path = tmp_path / "neruba.toml"
    path.write_text('[database]\nurll = "sqlite:///x.db"\n')
    with pytest.raises(InvalidInput, match=r"unknown setting 'urll' in .* \[database\], line 2"):
        read_config_file(path)
