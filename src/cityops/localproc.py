"""Local helper processes (Alertmanager, Kafka, InfluxDB) for the demo and the integration tests."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cityops.errors import CityopsError

__all__ = ["LocalProcessError", "ManagedProcess", "free_port", "wait_http_ok"]


class LocalProcessError(CityopsError):
    """A local helper process is missing, died, or did not become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class ManagedProcess:
    """A child process we started, its base ``url`` and its log; ``stop()`` ends it (idempotent)."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    workdir: Path
    log_path: Path
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n_bytes: int = 4000) -> str:
        """The last ``n_bytes`` of the process log (for error messages)."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-n_bytes:].decode(errors="replace")

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout_s`` seconds, then SIGKILL; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def __enter__(self) -> "ManagedProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def wait_http_ok(url: str, timeout_s: float = 30.0, process: ManagedProcess | None = None, *,
                 context: Any = None, headers: dict[str, str] | None = None) -> None:
    """Poll ``url`` until it answers 2xx; fail early if ``process`` dies, or after ``timeout_s`` seconds.

    ``context``: an ``ssl.SSLContext`` for https (e.g. trusting a test CA); ``headers``: e.g. Authorization.
    """
    deadline = time.monotonic() + timeout_s
    last: str = "no answer yet"
    while time.monotonic() < deadline:
        if process is not None and not process.alive:
            raise LocalProcessError(
                f"{process.name} exited with code {process.proc.returncode} before {url} was ready; "
                f"log {process.log_path}:\n{process.log_tail()}"
            )
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2.0,
                                        context=context) as resp:
                if 200 <= resp.status < 300:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.1)
    name = process.name if process is not None else url
    tail = f"; log {process.log_path}:\n{process.log_tail()}" if process is not None else ""
    raise LocalProcessError(f"{name} not ready at {url} after {timeout_s:.0f}s ({last}){tail}")
