"""The cluster under test: real processes (tests/cluster/harness.py), one per module.

Nothing here uses the session's in-process Ray (tests/conftest.py `ray_cluster`): the
cluster's Ray runs in its own processes and is only reached over HTTP/WebSocket (the web
processes), Redis, and the `ray_probe` child process.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from .harness import Cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(web=2, ray_nodes=2) as cl:
        yield cl
