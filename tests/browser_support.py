"""Headless chromium for the browser tests (Debian's, which `make test` installs with apt).

One module-scoped ``browser`` fixture for every browser test file: a test module uses it by
importing it (``from tests.browser_support import browser``). Screenshots go to
``test-artifacts/`` (git-ignored).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.portal_support import World

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    assert Path(CHROMIUM).exists(), "chromium is missing: `make test` installs it (apt-get install -y chromium)"
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        await b.close()


def url(world: World, path: str) -> str:
    """The absolute address of ``path`` on the world's portal test server."""
    return str(world.client.make_url(path))


async def shot(page: Page, name: str) -> None:
    """A full-page screenshot in test-artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
