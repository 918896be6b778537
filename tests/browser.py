"""Headless Chromium for the browser tests (report page, labeling UI).

    from browser import headless_page

    with headless_page() as page:
        page.goto(url)
        ...
        assert page.errors == []

Uses Debian's `chromium` driven by the Python `playwright` package (`playwright install` cannot
download browsers on these machines). Set-up: `apt-get install -y chromium` and
`pip install playwright`. Without them the tests skip, except under CI (env var `CI` set), where a
missing browser is a failure: CI must run them.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

import pytest

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
# schemes a self-contained page may load; anything else is blocked under block_network=True
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


def chromium_path() -> str | None:
    """Path of the system Chromium binary, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _unavailable(reason: str):
    install = "apt-get install -y chromium && pip install playwright"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the browser tests ({install})")
    pytest.skip(f"{reason} ({install})")


@contextmanager
def headless_page(block_network: bool = False, viewport: dict | None = None):
    """A playwright Page in headless Chromium, with `page.errors`: console errors and page errors.

    block_network=True aborts every request whose scheme is not file:/data:/blob:/about: and
    records it in `page.errors`, which proves a page is self-contained (opens offline).
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright Python package is not installed")
    executable = chromium_path()
    if executable is None:
        _unavailable("no chromium binary on PATH")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport or {"width": 1280, "height": 900})
            errors: list[str] = []
            page.errors = errors
            page.on("console", lambda msg: msg.type == "error" and errors.append(f"console: {msg.text}"))
            page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
            if block_network:

                def route(r):
                    if r.request.url.startswith(LOCAL_SCHEMES):
                        r.continue_()
                    else:
                        errors.append(f"blocked request: {r.request.url}")
                        r.abort()

                page.route("**/*", route)
            yield page
        finally:
            browser.close()
