"""InfluxDB sink: window points as line protocol, batched, retried, never dropped while InfluxDB is down.

Points are keyed by (measurement, tags, timestamp): a newer version of a window replaces the queued one,
so the backlog is bounded by the number of open windows, not by the event rate. When it still grows past
``max_pending`` (InfluxDB down for a long time) the engine stops consuming — backpressure, not memory.

Failures are sorted by cause (like quix-streams' InfluxDB 3 sink): unavailable or throttled → back off and
retry with the data kept; rejected (HTTP 400: the data itself is wrong) → counted and handed back to the
caller for the dead-letter topic; anything else → raised.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiohttp
import orjson
from influxdb_client import Point as InfluxPoint
from influxdb_client import WritePrecision

from cityops.connections import HttpSecurity, tls_failure
from cityops.engine.pipeline import Point
from cityops.errors import CityopsError, ConfigError
from cityops.types import SinkResult

log = logging.getLogger("cityops.sinks.influx")

PointKey = tuple[str, tuple[tuple[str, str], ...], int]
T = TypeVar("T")


class InfluxUnavailable(CityopsError):
    """InfluxDB did not answer, or answered 5xx / 429: retry later, keep the data."""


@dataclass
class SinkStats:
    writes: int = 0
    points: int = 0
    errors_unavailable: int = 0
    errors_throttled: int = 0
    rejected: int = 0


# Tag values that line protocol cannot carry as they are. InfluxDB 1.x unescapes only ``\,`` ``\=`` and
# ``\ `` in a tag value, and influxdb-client escapes a trailing backslash as ``\ `` and a newline, tab or
# CR as ``\n`` ``\t`` ``\r``, which InfluxDB keeps as two characters: so ``B12\`` and ``B12 `` would be
# one series, and so would a newline and a backslash followed by ``n``. Any value with a backslash or a
# control character (Unicode category Cc) is therefore written encoded, and so is any value that starts
# with the marker (else an input could pose as an encoded value): the mapping stays one to one.
TAG_MARKER = "~b64:"
_TAG_UNSAFE = re.compile(r"[\\\x00-\x1f\x7f-\x9f]")


@functools.lru_cache(maxsize=65536)
def encode_tag(value: str) -> str:
    """The tag value as written to InfluxDB: ``value`` itself, or ``~b64:`` + unpadded base64url(UTF-8).

    Reversible (``decode_tag``) and one to one: two different values are never the same series. Values
    without a backslash or control character that do not start with ``~b64:`` are written unchanged.
    """
    if _TAG_UNSAFE.search(value) is None and not value.startswith(TAG_MARKER):
        return value
    return TAG_MARKER + base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_tag(stored: str) -> str:
    """The original tag value of a value read back from InfluxDB (inverse of ``encode_tag``)."""
    if not stored.startswith(TAG_MARKER):
        return stored
    body = stored[len(TAG_MARKER):]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()


def to_line(point: Point) -> str:
    """Serialize one point with influxdb-client's own line-protocol encoder (escaping, int vs float).

    Tag values go through ``encode_tag``; an empty tag value is written as no tag (InfluxDB 1.x cannot
    store an empty tag value). Raises ``ValueError`` for a NaN or infinite field: line protocol cannot carry
    one, and influxdb-client would silently leave the field out (a point of only such fields would be an
    empty line that InfluxDB answers 204 to, storing nothing).
    """
    for k, v in point.fields.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"field {k}={v!r} is not a finite number: line protocol cannot carry it")
    # A window's point is rewritten at every commit while the window is open: its series part (measurement
    # and tags, the costlier half to encode) is encoded once per series; fields and time each time.
    series = _series(point.measurement, tuple(sorted(point.tags.items())))
    p = InfluxPoint("m")
    for k, v in point.fields.items():
        p.field(k, v)
    p.time(point.ts, WritePrecision.S)
    rest = p.to_line_protocol()  # "m <fields> <time>", or "" when no field is left
    return series + rest[2:] if rest else ""


@functools.lru_cache(maxsize=65536)
def _series(measurement: str, tags: tuple[tuple[str, str], ...]) -> str:
    """The escaped ``measurement,tag=value,... `` part of a point's line (with its trailing space), as
    influxdb-client writes it (taken from a line with one placeholder field)."""
    p = InfluxPoint(measurement)
    for k, v in tags:
        if v != "":
            p.tag(k, encode_tag(v))
    p.field("f", 0)
    line = p.to_line_protocol()
    return line[: -len("f=0i")]


class InfluxSink:
    """Batching writer with a keyed backlog. Lifecycle: ``setup()``, ``add()``, ``flush()``, ``close()``.

    ``on_rejected(line, measurement, reason)`` receives each point InfluxDB refuses (HTTP 4xx for that
    line alone: field type conflict, series or tag limits, key too long...) with InfluxDB's own reason; the
    worker dead-letters it. Without it a refused point raises instead of being dropped.
    """

    def __init__(
        self,
        url: str,
        database: str,
        *,
        token: str | None = None,
        org: str | None = None,
        batch_size: int = 5000,
        max_pending: int = 200_000,
        timeout_s: float = 10.0,
        on_rejected: Callable[[str, str, str], None] | None = None,
        metrics: Any = None,
        http: HttpSecurity | None = None,
    ) -> None:
        """``http``: TLS and credentials (cityops.connections.influx_http); default: ``token`` only."""
        self.url = url.rstrip("/")
        self.database = database
        self.token = token
        if http is None:
            http = HttpSecurity(headers={"Authorization": f"Token {token}"} if token else {},
                                settings="CITYOPS_INFLUX_TOKEN")
        self.http = http
        self.org = org
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.on_rejected = on_rejected
        self.metrics = metrics
        self.pending: dict[PointKey, tuple[str, tuple[str, dict[str, str], int]]] = {}
        # Points line protocol cannot carry (see to_line): key -> (text, meta, reason), refused at next flush.
        self._unwritable: dict[PointKey, tuple[str, tuple[str, dict[str, str], int], str]] = {}
        self.stats = SinkStats()
        self._session: aiohttp.ClientSession | None = None
        self._v2: Any = None
        self.healthy = False

    # -- lifecycle ----------------------------------------------------------------------------------
    async def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = self.http.session(self.timeout)
        return self._session

    def _refused(self, what: str, status: int, body: str) -> ConfigError:
        return ConfigError(f"InfluxDB {self.url} refused {what} ({status}: {body.strip()[:200]}): "
                           f"check {self.http.settings}")

    async def setup(self) -> None:
        """Create the database if missing (v1 API). Raises InfluxUnavailable if InfluxDB is down, ConfigError
        (naming the settings) if it refuses the credentials or its certificate does not verify."""
        if self.org:  # 2.x bucket: created by the operator, as 2.x buckets carry retention and org
            return
        sess = await self._sess()
        try:
            async with sess.post(f"{self.url}/query", data={"q": f'CREATE DATABASE "{self.database}"'}) as r:
                body = await r.text()
                if r.status >= 500 or r.status == 429:
                    raise InfluxUnavailable(f"InfluxDB {self.url} answered {r.status}: {body[:200]}")
                if r.status == 403 and await self._database_visible(sess):
                    # A least-privilege 1.x user (WRITE on an existing database) may not create it.
                    log.info("influx database=%s exists; this user may not create databases", self.database)
                elif r.status >= 400:
                    raise self._refused("CREATE DATABASE", r.status, body)
        except aiohttp.ClientError as exc:
            bad_tls = tls_failure(exc, self.url, "CITYOPS_INFLUX_CA_FILE")
            if bad_tls is not None:
                raise bad_tls from None
            raise InfluxUnavailable(f"InfluxDB {self.url} unreachable: {exc}") from exc
        self.healthy = True

    async def _database_visible(self, sess: aiohttp.ClientSession) -> bool:
        # SHOW DATABASES lists, for a non-admin 1.x user, the databases it has a privilege on.
        async with sess.get(f"{self.url}/query", params={"q": "SHOW DATABASES"}) as r:
            if r.status != 200:
                return False
            data = await r.json()
        for series in data.get("results", [{}])[0].get("series", []):
            if any(row and row[0] == self.database for row in series.get("values") or []):
                return True
        return False

    async def close(self) -> None:
        if self._v2 is not None:
            await self._v2.close()
            self._v2 = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- data ---------------------------------------------------------------------------------------
    def add(self, points: Iterable[Point]) -> None:
        for p in points:
            try:
                line = to_line(p)
            except ValueError as exc:
                # Refused before it is sent (InfluxDB would never store it): handed to on_rejected at the
                # next flush, like a point InfluxDB refuses, and confirmed done then.
                self.pending.pop(p.key, None)
                text = f"{p.measurement} tags={p.tags!r} fields={p.fields!r} time={p.ts}"
                self._unwritable[p.key] = (text, (p.measurement, p.tags, p.ts), f"cityops: {exc}")
                continue
            self._unwritable.pop(p.key, None)
            self.pending[p.key] = (line, (p.measurement, p.tags, p.ts))
        self._gauge()

    @property
    def full(self) -> bool:
        return len(self.pending) >= self.max_pending

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.sink_pending.labels(sink="influxdb").set(len(self.pending))

    async def flush(self) -> list[tuple[str, dict[str, str], int]]:
        """Write everything pending, batch by batch; returns the points confirmed written.

        On an outage it stops at the first failing batch (keeping it and the rest) and raises
        InfluxUnavailable; the caller backs off and calls again.
        """
        confirmed: list[tuple[str, dict[str, str], int]] = []
        while self._unwritable:
            key, (text, meta, reason) = next(iter(self._unwritable.items()))
            self.stats.rejected += 1
            self._err("rejected")
            log.error("influx point not writable measurement=%s reason=%r", meta[0], reason)
            if self.on_rejected is None:
                raise CityopsError(f"a point cannot be written to InfluxDB ({reason}) and no dead-letter "
                                   "output is connected (on_rejected)")
            self.on_rejected(text, meta[0], reason)
            del self._unwritable[key]
            confirmed.append(meta)
        while self.pending:
            keys = list(self.pending)[: self.batch_size]
            batch = [self.pending[k] for k in keys]
            body = "\n".join(line for line, _ in batch).encode()
            try:
                await self._write(body)
            except _Rejected:
                # The data itself is wrong somewhere in the batch: write line by line, so the good
                # lines land and only the bad ones are counted and handed back for dead-lettering.
                for k, entry in zip(keys, batch):
                    try:
                        await self._write(entry[0].encode())
                    except _Rejected as exc:
                        self.stats.rejected += 1
                        self._err("rejected")
                        log.error("influx rejected point measurement=%s reason=%r line=%r", entry[1][0],
                                  str(exc), entry[0][:300])
                        if self.on_rejected is None:
                            raise CityopsError("InfluxDB refused a point and no dead-letter output is "
                                               "connected (on_rejected)") from exc
                        self.on_rejected(entry[0], entry[1][0], str(exc))
                    if self.pending.get(k) is entry:
                        del self.pending[k]
                        confirmed.append(entry[1])  # written or given up on: either way it is done
                continue
            # Only forget what was not replaced by a newer version while we were writing.
            for k, entry in zip(keys, batch):
                if self.pending.get(k) is entry:
                    del self.pending[k]
                    confirmed.append(entry[1])
            self.stats.writes += 1
            self.stats.points += len(batch)
            if self.metrics is not None:
                self.metrics.sink_writes.labels(sink="influxdb").inc()
        self._gauge()
        self.healthy = True
        return confirmed

    def _unavailable(self) -> None:
        self.stats.errors_unavailable += 1
        self._err("unavailable")
        self.healthy = False

    def _err(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.sink_errors.labels(sink="influxdb", kind=kind).inc()

    async def _write_v2(self, body: bytes) -> None:
        """InfluxDB 2.x/3.x bucket: influxdb-client's own async v2 write API."""
        from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
        from influxdb_client.rest import ApiException

        if self._v2 is None:
            self._v2 = InfluxDBClientAsync(url=self.url, token=self.token, org=self.org,
                                           timeout=int(self.timeout.total * 1000) if self.timeout.total else 10_000,
                                           verify_ssl=self.http.verify, ssl_ca_cert=self.http.ca_file)
        try:
            await self._v2.write_api().write(bucket=self.database, org=self.org, record=body.decode(),
                                             write_precision=WritePrecision.S)
        except ApiException as exc:
            status = exc.status or 0
            if status == 429 or status >= 500:
                self._err("throttled" if status == 429 else "unavailable")
                raise InfluxUnavailable(f"HTTP {status}: {exc.reason}") from exc
            if status in (401, 403):
                raise self._refused("the write", status, str(exc.body)) from exc
            text = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body)
            raise _Rejected(f"HTTP {status}: {_reason(text, body)}") from exc
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            self._unavailable()
            raise InfluxUnavailable(f"unreachable: {exc}") from exc

    async def _write(self, body: bytes) -> None:
        if self.org:
            await self._write_v2(body)
            return
        sess = await self._sess()
        url = f"{self.url}/write"
        params = {"db": self.database, "precision": "s"}
        try:
            async with sess.post(url, params=params, data=body) as r:
                if r.status in (200, 204):
                    return
                text = await r.text()
                if r.status == 429:
                    self.stats.errors_throttled += 1
                    self._err("throttled")
                    raise InfluxUnavailable(f"throttled (429): {text[:200]}")
                if r.status >= 500:
                    self.stats.errors_unavailable += 1
                    self._err("unavailable")
                    raise InfluxUnavailable(f"HTTP {r.status}: {text[:200]}")
                if r.status == 404 and "database not found" in text:
                    await self.setup()
                    raise InfluxUnavailable("database was missing; created it")
                if r.status in (401, 403):
                    raise self._refused("the write", r.status, text)
                raise _Rejected(f"HTTP {r.status}: {_reason(text, body)}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self._unavailable()
            raise InfluxUnavailable(f"unreachable: {exc!r}") from exc


class _Rejected(CityopsError):
    pass


def _reason(text: str, body: bytes) -> str:
    """InfluxDB's answer to a refused write, without the echo of the line itself (which can be 64 KiB
    long and is in the dead letter anyway): ``unable to parse '<line>': max key length exceeded ...``."""
    try:
        doc = orjson.loads(text)
        text = doc.get("error") or doc.get("message") or text  # 1.x: error; 2.x/3.x: message
    except (orjson.JSONDecodeError, AttributeError):
        pass
    for line in body.decode(errors="replace").split("\n"):
        if len(line) > 40:
            text = text.replace(line, "<line>")
    return text.strip()[:500]


async def query(url: str, database: str, q: str, token: str | None = None,
                http: HttpSecurity | None = None) -> list[dict[str, Any]]:
    """Run InfluxQL on the v1 /query endpoint; returns the series of the first statement.

    ``http``: TLS and credentials (cityops.connections.influx_http); default: ``token`` only.
    """
    if http is None:
        http = HttpSecurity(headers={"Authorization": f"Token {token}"} if token else {})
    async with http.session() as sess:
        async with sess.get(f"{url.rstrip('/')}/query", params={"db": database, "q": q, "epoch": "s"}) as r:
            r.raise_for_status()
            data = await r.json()
    result = data["results"][0]
    if "error" in result:
        raise CityopsError(f"InfluxQL error: {result['error']}")
    return result.get("series", [])


class InfluxPointSink(Generic[T]):
    """A ``cityops.types.Sink`` putting items (e.g. alert transitions) into InfluxDB as points.

    ``name``: its outbox cursor; ``to_point(item) -> Point``. Items are queued in ``influx``'s pending
    points and written with the KPI points by ``InfluxSink.flush`` (same retries; refused points go to
    ``on_rejected``). While ``influx`` is full (backpressure) every item is kept for a later round.
    """

    def __init__(self, name: str, influx: InfluxSink, to_point: Callable[[T], Point]) -> None:
        self.name = name
        self.influx = influx
        self.to_point = to_point

    async def write(self, batch: Sequence[tuple[Any, T]]) -> SinkResult[Any]:
        if self.influx.full:
            return SinkResult(retry=[k for k, _ in batch])
        self.influx.add([self.to_point(item) for _, item in batch])
        return SinkResult(done=[k for k, _ in batch])
