"""The built wheel is self-sufficient: it ships the migrations and runs without the checkout."""

from __future__ import annotations

import configparser
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import orjson
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# Build from a copy so the build leaves no build/ or *.egg-info behind in the working tree
# (setuptools reuses a stale build/lib, which could smuggle deleted files into the wheel).
_NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    "*.db",
    "*.db-wal",
    "*.db-shm",
    "neruba.toml",
)


def _build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT, source, ignore=_NOT_SOURCE)
    assert (source / "pyproject.toml").is_file()
    out = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    wheels = sorted(out.glob("neruba-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _run(args: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-S", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_wheel_ships_migrations_and_runs_without_the_checkout(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert "neruba_cli/migrations/env.py" in names
        assert "neruba_cli/migrations/script.py.mako" in names
        revisions = [
            name
            for name in names
            if name.startswith("neruba_cli/migrations/versions/")
            and name.endswith(".py")
            and not name.endswith("/__init__.py")
        ]
        assert revisions, sorted(names)
        entry_points_files = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert len(entry_points_files) == 1, sorted(names)
        entry_points = configparser.ConfigParser()
        entry_points.read_string(archive.read(entry_points_files[0]).decode())
        assert entry_points["console_scripts"]["neruba"].strip() == "neruba_cli.cli.app:main"

        unpacked = tmp_path / "unpacked"
        archive.extractall(unpacked)

    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(unpacked), *site.getsitepackages()]),
        "NO_COLOR": "1",
    }
    for variable in ("NERUBA_DATABASE_URL", "NERUBA_PROJECT", "NERUBA_CONFIG", "NERUBA_API_KEY"):
        env.pop(variable, None)

    # The package and its migrations come from the unpacked wheel, not the source tree.
    where = _run(
        [
            "-c",
            "import neruba_cli, neruba_cli.migrations as m; from neruba_cli.db import migrate; "
            "print(neruba_cli.__file__); print(m.__file__); print(migrate.migrations_path()); "
            "print(neruba_cli.__version__)",
        ],
        cwd=workdir,
        env=env,
    )
    assert where.returncode == 0, where.stderr
    package_file, migrations_file, migrations_dir, version = where.stdout.split()
    for path in (package_file, migrations_file, migrations_dir):
        assert Path(path).resolve().is_relative_to(unpacked.resolve()), where.stdout
    assert not Path(package_file).resolve().is_relative_to(REPO_ROOT)
    assert version == "0.1.0"

    init = _run(["-m", "neruba_cli", "init"], cwd=workdir, env=env)
    assert init.returncode == 0, init.stdout + init.stderr
    assert (workdir / "neruba.toml").is_file()
    assert (workdir / "neruba.db").is_file()

    upgrade = _run(["-m", "neruba_cli", "db", "upgrade"], cwd=workdir, env=env)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr

    current = _run(["-m", "neruba_cli", "db", "current", "--json"], cwd=workdir, env=env)
    assert current.returncode == 0, current.stdout + current.stderr
    state = orjson.loads(current.stdout)
    assert state["at_head"] is True
    assert state["current"] == state["head"]
    assert state["current"] is not None

    doctor = _run(["-m", "neruba_cli", "doctor", "--json"], cwd=workdir, env=env)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    report = orjson.loads(doctor.stdout)
    assert report["healthy"] is True
    assert {check["name"] for check in report["checks"]} >= {"config", "database", "schema"}
