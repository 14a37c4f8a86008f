"""Is the server there? A TCP probe first, so a missing server is one line naming the setting.

Client libraries (kafka-python, aiokafka) retry an unreachable bootstrap address for tens of seconds and log
every attempt; a command that cannot go on without the server should instead say once which address it
tried, which setting that address came from, and exit.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from cityops.errors import Unreachable

__all__ = ["KAFKA_WAIT_S", "check_kafka", "describe", "host_ports", "quiet_logs"]

# How long a command waits for a broker that refuses connections before it gives up: covers a broker
# that is still starting (a container started in the same `docker compose up`), not an outage.
KAFKA_WAIT_S = 5.0


def host_ports(bootstrap: str) -> list[tuple[str, int]]:
    """``host:port[,host:port]`` → [(host, port)]; ``[::1]:9092`` → ("::1", 9092). ValueError if malformed."""
    out = []
    for part in bootstrap.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"expected host:port[,host:port], got {bootstrap!r}")
        out.append((host.strip("[]"), int(port)))
    return out


def describe(exc: BaseException | None) -> str:
    """A short, one-line cause: ``connection refused`` rather than a class name and a stack."""
    if exc is None:
        return "no answer"
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror or exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = " ".join(str(exc).split())
    # HTTP clients wrap the socket error several levels deep: "... [Errno 111] Connection refused'))".
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return errno.group(1).strip().lower()
    return text[:300] or type(exc).__name__


def check_kafka(bootstrap: str, setting: str, wait_s: float = KAFKA_WAIT_S) -> None:
    """Return once one bootstrap address accepts a TCP connection; else raise ``Unreachable`` after ``wait_s`` s.

    Only the TCP connection is checked: protocol, TLS and SASL problems are the Kafka client's to report.
    """
    try:
        addresses = host_ports(bootstrap)
    except ValueError as exc:
        raise Unreachable("the Kafka broker", bootstrap, setting, str(exc)) from None
    deadline = time.monotonic() + wait_s
    while True:
        last: BaseException | None = None
        for host, port in addresses:
            try:
                timeout = max(0.5, min(3.0, deadline - time.monotonic()))
                with socket.create_connection((host, port), timeout=timeout):
                    return
            except OSError as exc:
                last = exc
        if time.monotonic() >= deadline:
            raise Unreachable("the Kafka broker", bootstrap, setting, describe(last))
        time.sleep(0.25)


@contextmanager
def quiet_logs(*names: str, level: int = logging.CRITICAL) -> Iterator[None]:
    """Raise the level of the named loggers for the block (a client's per-attempt connection errors)."""
    loggers = [logging.getLogger(n) for n in names]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, old):
            lg.setLevel(lvl)
