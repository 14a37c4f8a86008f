"""Real servers for the integration tests, started once per session on free ports.

A server that cannot be started makes its tests FAIL (with the reason), never skip: CI must notice.
Each section below is self-contained: one fixture per server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cityops.localproc import ManagedProcess
from cityops.localstack import start_alertmanager


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in item.nodeid.replace("\\", "/") or item.nodeid.startswith("integration/"):
            item.add_marker(pytest.mark.integration)


# ==================================================================================== Alertmanager ====
@pytest.fixture(scope="session")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """A real Alertmanager (Debian `prometheus-alertmanager`) on 127.0.0.1:<free port>; `.url` is its base URL.

    Missing binary → LocalProcessError ("apt-get install prometheus-alertmanager"): the tests error out.
    """
    workdir: Path = tmp_path_factory.mktemp("alertmanager")
    am = start_alertmanager(workdir)
    try:
        yield am
    finally:
        am.stop()
