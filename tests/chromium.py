"""Headless Chromium for the browser tests: Debian's package, driven by Playwright.

Playwright is pointed at the system browser (``scripts/system-deps.sh`` installs it),
so nothing is downloaded. Where either is missing, the tests skip with a loud
reason; ``.ci/run`` installs both, so CI never skips them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import BOUND

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

try:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the dev group brings it
    sync_playwright = None  # type: ignore[assignment]
    PlaywrightError = Exception  # type: ignore[assignment,misc]  # never raised: launch() skips

CHROMIUM = Path("/usr/bin/chromium")
# No internet here: without the background-networking flags Chromium floods refused connections.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = BOUND * 1000  # Playwright counts in milliseconds


@contextmanager
def launch(*extra_args: str) -> Iterator[Browser]:
    """The system's Chromium, or a loud skip naming what to install."""
    if sync_playwright is None:
        pytest.skip(
            "PLAYWRIGHT IS NOT INSTALLED: the tests in a real browser did not run."
            " Install the dev group: pip install -e '.[all,unidecode]' --group dev (make test does)"
        )
    executable = str(CHROMIUM) if CHROMIUM.exists() else shutil.which("chromium")
    if executable is None:
        pytest.skip(
            "CHROMIUM IS NOT INSTALLED: the tests in a real browser did not run."
            " Install it with `sudo scripts/system-deps.sh` (make test does so when run as root;"
            " .ci/run always does)."
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=[*ARGS, *extra_args])
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def open_page(browser: Browser) -> Iterator[Page]:
    """A page in a fresh context (no state shared between tests) whose script errors
    fail the test: a page that broke would otherwise just record nothing."""
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"the page's script failed: {errors}"
