"""Real servers for the integration tests, started once per session on free ports.

A server that cannot be started makes its tests FAIL (with the reason), never skip: CI must notice.
Each section below is self-contained: one fixture per server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


# ======================================================== Alertmanager with TLS and basic auth (issue 8) ====
ALERTMANAGER_USER = ("cityops", "am-pass-1")


@pytest.fixture(scope="session")
def secure_alertmanager(tmp_path_factory: pytest.TempPathFactory, pki: Any) -> Iterator[ManagedProcess]:
    """A real Alertmanager started with ``--web.config.file``: TLS (test CA) and basic auth (bcrypt hash)."""
    import base64

    import bcrypt

    user, password = ALERTMANAGER_USER
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()
    web_config = (f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n"
                  f"basic_auth_users:\n  {user}: {hashed}\n")
    basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    am = start_alertmanager(tmp_path_factory.mktemp("alertmanager-secure"), web_config=web_config,
                            client_ssl=pki.client_context(), ready_headers={"Authorization": basic})
    try:
        yield am
    finally:
        am.stop()
