"""Headless Chromium for the ops console's tests and bench: Debian's /usr/bin/chromium driven by Playwright,
which never downloads a browser here (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 when installing)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import BrowserContext, sync_playwright

CHROMIUM = os.environ.get("STOCKWIRE_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("STOCKWIRE_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))


@contextmanager
def chromium() -> Iterator[BrowserContext]:
    """A fresh browser profile (its own --user-data-dir), removed afterwards."""
    profile = tempfile.mkdtemp(prefix="stockwire-chromium-")
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=FLAGS,
                viewport={"width": 1400, "height": 900},
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def screenshot_path(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name
