"""The fault suite runs on the same real multi-process cluster as tests/cluster (one per
module); see tests/cluster/conftest.py."""
from tests.cluster.conftest import cluster  # noqa: F401 (the fixture, shared)
