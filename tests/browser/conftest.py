"""Headless Chromium (Debian's /usr/bin/chromium) driven by Playwright, against the real
server fixture (real Redis, real Ray). Screenshots go to test-artifacts/ (gitignored)."""
from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.api.conftest import api, app_settings, clients, server, show  # noqa: F401 (fixtures)

CHROMIUM = os.environ.get("BMM_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[object]:
    assert shutil.which(CHROMIUM), f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        await chromium.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
