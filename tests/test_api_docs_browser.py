"""/v1/docs in a real browser (Playwright driving Debian's chromium, headless): Swagger UI
loads from this process alone, under the page's strict CSP, and shows the operations with
their descriptions, roles and error ids. Requests to any other origin fail the test."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient
from playwright.async_api import Browser, expect

from tests.browser_support import browser  # noqa: F401 (the fixture)

pytestmark = pytest.mark.browser  # `make test PYTEST_ARGS='-m "not browser"'` skips this file





async def test_the_reference_page_renders_every_operation_from_local_assets(api: TestClient,
                                                                           browser: Browser) -> None:
    base = str(api.make_url("/")).rstrip("/")
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(20_000)
    problems: list[str] = []
    foreign: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("request", lambda req: None if req.url.startswith(base) else foreign.append(req.url))
    try:
        await page.goto(base + "/v1/docs")
        await expect(page.locator(".opblock").first).to_be_visible()
        assert await page.locator(".opblock").count() >= 45  # every operation
        operation = page.locator(".opblock", has_text="/v1/tenants/{tenant}/subjects/{source}/{ref}/preferences")
        await operation.first.locator(".opblock-summary").click()
        await expect(operation.first).to_contain_text("Who may call")
        await expect(operation.first).to_contain_text("unknown_policy_version")
        await expect(operation.first).to_contain_text("given_on")
    finally:
        await context.close()
    assert foreign == [], "the page loaded something from elsewhere"
    assert problems == []
