"""pytest-benchmark suites: `pytest bench --benchmark-only` (see harness.py for what runs where)."""

import pytest

from bench.harness import copy_bandwidth_gbps


@pytest.fixture(scope="session")
def copy_gbps() -> float:
    return copy_bandwidth_gbps()
