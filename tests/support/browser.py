"""Headless Chromium for the pages Neruba renders (the compare report, the API's docs page).

`chromium(*args)` runs Debian's Chromium headless (`--dump-dom URL` prints the DOM after the
page's scripts ran); `require_chromium()` skips a test without it, or fails it where the CI
promises every tool (NERUBA_REQUIRE_SERVERS=1). `OFFLINE` keeps Chromium from reaching any
host but loopback, and from its own background traffic.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

# No name resolves but loopback's: a page that reaches for a CDN finds nothing there.
OFFLINE = (
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
)


def require_chromium() -> None:
    if shutil.which("chromium") is None:
        if os.environ.get("NERUBA_REQUIRE_SERVERS") == "1":
            pytest.fail("chromium is not installed (NERUBA_REQUIRE_SERVERS=1)")
        pytest.skip("chromium is not installed")


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
