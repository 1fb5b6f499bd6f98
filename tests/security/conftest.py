"""Security tests run against the same real server as tests/api (real Redis, Ray, aiohttp)."""
from __future__ import annotations

from tests.api.conftest import api, app_settings, clients, server, show  # noqa: F401 (fixtures)
