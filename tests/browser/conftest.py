"""Fixtures of the browser tests: Chromium, pages, servers stopped at teardown (see browser_harness)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from browser_harness import (ARTIFACTS, CHROMIUM, CHROMIUM_FLAGS, READY_SECONDS, Server,
                             missing_browser, start_server, stop_server)


@pytest.fixture(scope="session")
def browser_context():
    """A headless Debian Chromium with a fresh profile; skips when it or Playwright is missing."""
    reason = missing_browser()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright
    ARTIFACTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kdwb-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1800})   # a whole Dashboard in view
        context.set_default_timeout(READY_SECONDS * 1000)
        yield context
        context.close()


@pytest.fixture
def page(browser_context, request):
    """A new tab that records its uncaught errors (``page.errors``); on failure its screenshot goes
    to the artefacts as ``<test>-failed.png``."""
    tab = browser_context.new_page()
    tab.errors = []   # uncaught exceptions in the page (a widget that failed to load, ...)
    tab.on("pageerror", lambda error: tab.errors.append(f"{error}\n{error.stack or ''}"))
    yield tab
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        tab.screenshot(path=str(ARTIFACTS / f"{request.node.name}-failed.png"))
        if tab.errors:   # shown under "Captured stdout teardown"
            print(f"uncaught errors in the page ({len(tab.errors)}):", *tab.errors, sep="\n")
    tab.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report


@pytest.fixture(scope="module")
def server_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="module")
def start(server_root):
    """``start(name, command, env, cwd, url, token, probe_path)``: a server stopped at teardown."""
    started: list[Server] = []

    def _start(name, command, env, cwd, url, token, probe_path) -> Server:
        server = start_server(name, command, env, cwd, url, token, probe_path,
                              server_root / f"{name}.log")
        started.append(server)
        return server

    yield _start
    for server in reversed(started):
        stop_server(server)


