"""Alertmanager output: alert transitions and re-sends posted to its API v2 (``POST /api/v2/alerts``).

Failures are sorted by cause, like the other sinks: unreachable or 5xx → back off and retry, keeping the
alerts (``post`` returns False after its attempts, the dispatcher keeps the outbox items and tries again
later); 401/403 (credentials refused) → the alerts are not at fault: logged naming the settings and kept,
like an outage; other 4xx → Alertmanager will never take those alerts: counted as ``rejected``, logged,
dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import aiohttp
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from cityops.connections import HttpSecurity, tls_failure
from cityops.errors import CityopsError, ConfigError
from cityops.types import Alert, AlertState, SinkResult, Transition

__all__ = ["AlertmanagerAuthError", "AlertmanagerError", "AlertmanagerSink", "AlertmanagerUnavailable",
           "rfc3339", "to_postable"]

log = logging.getLogger(__name__)

_METRICS: "weakref.WeakKeyDictionary[CollectorRegistry, Counter]" = weakref.WeakKeyDictionary()


class AlertmanagerError(CityopsError):
    """Alertmanager answered a query with an error (reading only; posting never raises for the server)."""


class AlertmanagerUnavailable(AlertmanagerError):
    """Alertmanager did not answer (or answered 5xx) a read: try again later."""


class AlertmanagerAuthError(AlertmanagerError, ConfigError):
    """Alertmanager refused the credentials (401/403) or its certificate did not verify; names the settings."""


_AUTH_REFUSED = (401, 403, 407)  # credentials refused: a configuration problem, never the alerts' fault


def _counter(registry: CollectorRegistry) -> Counter:
    # One Counter per registry: sinks may be created repeatedly (tests, restarts) without a
    # "Duplicated timeseries" error.
    counter = _METRICS.get(registry)
    if counter is None:
        counter = Counter(
            "cityops_alert_notifications",
            "Alerts handed to a notification receiver, by outcome "
            "(sent | retry = attempt failed, will retry | unavailable = gave up for now, kept | rejected = dropped)",
            ["receiver", "outcome"],
            registry=registry,
        )
        _METRICS[registry] = counter
    return counter


def rfc3339(ts: float) -> str:
    """Epoch seconds → RFC 3339 UTC with milliseconds, e.g. ``2024-05-01T08:00:00.000Z``."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_postable(item: Transition | Alert, now: float, resend_s: float = 60.0) -> dict[str, Any] | None:
    """One Alertmanager v2 postable alert from an outbox ``Transition`` or a firing ``Alert``; None = skip.

    Alertmanager judges ``startsAt``/``endsAt`` against its own wall clock: an alert whose ``endsAt`` is
    past is resolved, a firing alert's ``endsAt`` is a lease that each re-send renews, and a post with
    ``endsAt`` before ``startsAt`` is refused (``400 start time must be before end time``). cityops' alert
    times are event times, which may run ahead of the wall clock (a replay at ``--speedup``, a device clock)
    or far behind it (a backlog). So the wall clock ``now`` (epoch seconds) decides what Alertmanager sees:

    - ``startsAt`` = min(event-time start, ``now``): never in Alertmanager's future;
    - firing (a ``Transition`` whose ``am_action`` is firing, or an ``Alert``: a re-send):
      ``endsAt`` = ``now`` + 4 × ``resend_s``: a lease; if this worker stops re-sending, Alertmanager
      resolves the alert by itself;
    - resolved: ``endsAt`` = min(event-time end, ``now``), and never before ``startsAt``: in the past, so
      Alertmanager resolves it at once.

    The event times stay visible as the annotations ``event_starts_at`` (and ``event_ends_at`` on resolve),
    RFC 3339 UTC. Transitions with no ``am_action`` (pending, flapping, a cancelled pending alert) are not
    Alertmanager's business: None.
    """
    if isinstance(item, Alert):
        action: AlertState | None = AlertState.FIRING
        event_start = item.starts_at
        ends = None
    else:
        action = item.am_action
        if action is None:
            return None
        event_start = item.starts_at if item.starts_at is not None else item.ts
        ends = item.ends_at
    annotations = dict(item.annotations)
    annotations["event_starts_at"] = rfc3339(event_start)
    alert: dict[str, Any] = {"labels": dict(item.labels), "annotations": annotations}
    starts_at = min(event_start, now)
    if action == AlertState.FIRING:
        ends_at = now + 4 * resend_s
    else:
        event_end = float(ends) if ends is not None else now
        if ends is not None:
            annotations["event_ends_at"] = rfc3339(event_end)
        ends_at = max(min(event_end, now), starts_at)
    alert["startsAt"] = rfc3339(starts_at)
    alert["endsAt"] = rfc3339(ends_at)
    if item.generator_url:
        alert["generatorURL"] = item.generator_url
    return alert


class AlertmanagerSink:
    """Posts alerts to one Alertmanager (``url`` = its base URL, e.g. ``http://127.0.0.1:9093``).

    ``resend_s``: how often the caller re-sends firing alerts (default 60 s; sets ``endsAt``).
    ``timeout_s``: per request (default 10 s). ``attempts``: tries per ``post`` call (default 6),
    waiting ``backoff_s`` × 2^n between them, at most ``backoff_cap_s`` (defaults 0.5 s and 30 s).
    ``registry``: where ``cityops_alert_notifications_total{receiver,outcome}`` lives (default: global).
    Lifecycle: ``await start()`` (or first use) … ``await close()``; also an async context manager.
    A ``cityops.types.Sink``: ``write`` a batch of (cursor, Transition | Alert); its outbox cursor is ``name``.
    """

    name = "alertmanager"

    def __init__(
        self,
        url: str,
        *,
        receiver: str = "alertmanager",
        resend_s: float = 60.0,
        timeout_s: float = 10.0,
        attempts: int = 6,
        backoff_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        registry: CollectorRegistry | None = None,
        counter: Counter | None = None,
        now: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        session: aiohttp.ClientSession | None = None,
        http: HttpSecurity | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        self.url = url.rstrip("/")
        self.receiver = receiver
        self.resend_s = resend_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.backoff_cap_s = backoff_cap_s
        self.now = now
        self.sleep = sleep
        self._session = session
        self._own_session = session is None
        # TLS and credentials (cityops.connections.alertmanager_http); default: plain, no credentials.
        self.http = http if http is not None else HttpSecurity()
        # The worker passes its own cityops_alert_notifications_total; standalone use registers one.
        self._notifications = counter if counter is not None else _counter(
            registry if registry is not None else REGISTRY)

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._session is None:
            self._session = self.http.session(self.timeout)

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> "AlertmanagerSink":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            await self.start()
        assert self._session is not None
        return self._session

    def _count(self, outcome: str, n: int) -> None:
        if n:
            self._notifications.labels(self.receiver, outcome).inc(n)

    # -- output -------------------------------------------------------------------------------------
    async def post(self, alerts: Sequence[Transition | Alert]) -> bool:
        """Send transitions and/or firing alerts (re-sends); True = done (sent, skipped or rejected).

        False = Alertmanager stayed unreachable (or 5xx) for all attempts: keep the items, call again later.
        """
        result = await self.write(list(enumerate(alerts)))
        return not result.retry

    async def write(self, batch: Sequence[tuple[Any, Transition | Alert]]) -> SinkResult[Any]:
        """The ``Sink`` contract: post ``batch`` of (cursor, item); what was done, to retry, rejected and why.

        Items Alertmanager has no business with (no ``am_action``) are done without a request.
        """
        now = self.now()
        result: SinkResult[Any] = SinkResult()
        keys: list[Any] = []
        body: list[dict[str, Any]] = []
        for key, item in batch:
            alert = to_postable(item, now, self.resend_s)
            if alert is None:
                result.done.append(key)
            else:
                keys.append(key)
                body.append(alert)
        if not body:
            return result
        status, text = await self._post_with_retry(body)
        if status is None:
            self._count("unavailable", len(body))
            result.retry.extend(keys)
            return result
        if status < 300:
            self._count("sent", len(body))
            result.done.extend(keys)
            return result
        # 4xx. Alertmanager stores the valid alerts of a batch even when it answers 400 for the others;
        # re-post one by one (idempotent: same labels) to count and log exactly the rejected ones.
        if len(body) == 1:
            result.rejected.append((keys[0], self._reject(body[0], status, text)))
            return result
        for key, alert in zip(keys, body):
            st, txt = await self._post_with_retry([alert])
            if st is None:
                self._count("unavailable", 1)
                result.retry.append(key)
            elif st < 300:
                self._count("sent", 1)
                result.done.append(key)
            else:
                result.rejected.append((key, self._reject(alert, st, txt)))
        return result

    def _reject(self, alert: dict[str, Any], status: int, text: str) -> str:
        self._count("rejected", 1)
        log.error(
            "alertmanager rejected alert url=%s status=%d alertname=%s labels=%s reason=%s",
            self.url, status, alert.get("labels", {}).get("alertname"), alert.get("labels"), text.strip()[:300],
        )
        return f"alertmanager HTTP {status}: {text.strip()[:300]}"

    async def _post_with_retry(self, body: list[dict[str, Any]]) -> tuple[int | None, str]:
        """(HTTP status, body text) of the first non-retryable answer; (None, reason) when out of attempts."""
        reason = ""
        for attempt in range(self.attempts):
            if attempt:
                self._count("retry", len(body))
                await self.sleep(min(self.backoff_cap_s, self.backoff_s * 2 ** (attempt - 1)))
            try:
                session = await self._client()
                async with session.post(f"{self.url}/api/v2/alerts", json=body) as resp:
                    text = await resp.text()
                    if resp.status in _AUTH_REFUSED:
                        # Not the alerts' fault: keep them (like an outage) until the credentials are fixed.
                        reason = f"HTTP {resp.status}: credentials refused, check {self.http.settings}"
                    elif resp.status < 500:
                        return resp.status, text
                    else:
                        reason = f"HTTP {resp.status}: {text.strip()[:200]}"
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                bad_tls = tls_failure(exc, self.url, "CITYOPS_ALERTMANAGER_CA_FILE")
                reason = str(bad_tls) if bad_tls is not None else f"{type(exc).__name__}: {exc}"
            log.warning(
                "alertmanager post failed url=%s attempt=%d/%d alerts=%d reason=%s",
                self.url, attempt + 1, self.attempts, len(body), reason,
            )
        return None, reason

    # -- reading ------------------------------------------------------------------------------------
    async def _get(self, path: str, params: Sequence[tuple[str, str]] = ()) -> Any:
        """GET a JSON API path. 401/403 or a certificate that does not verify → AlertmanagerAuthError
        (naming the settings); unreachable or 5xx → AlertmanagerUnavailable; other errors → AlertmanagerError."""
        url = f"{self.url}{path}"
        session = await self._client()
        try:
            async with session.get(url, params=list(params)) as resp:
                if resp.status in _AUTH_REFUSED:
                    raise AlertmanagerAuthError(f"Alertmanager {self.url} refused the credentials "
                                                f"(HTTP {resp.status}): check {self.http.settings}")
                if resp.status >= 500:
                    raise AlertmanagerUnavailable(f"GET {url}: HTTP {resp.status}: {await resp.text()}")
                if resp.status != 200:
                    raise AlertmanagerError(f"GET {url}: HTTP {resp.status}: {await resp.text()}")
                return await resp.json()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            bad_tls = tls_failure(exc, self.url, "CITYOPS_ALERTMANAGER_CA_FILE")
            if bad_tls is not None:
                raise AlertmanagerAuthError(str(bad_tls)) from None
            raise AlertmanagerUnavailable(f"GET {url}: {type(exc).__name__}: {exc}") from exc

    async def status(self) -> dict[str, Any]:
        """``GET /api/v2/status`` (cluster, version, uptime): the health read, with the same TLS and credentials."""
        return dict(await self._get("/api/v2/status"))

    async def get_alerts(
        self,
        *,
        active: bool | None = None,
        silenced: bool | None = None,
        inhibited: bool | None = None,
        unprocessed: bool | None = None,
        filter: Sequence[str] = (),
        receiver: str | None = None,
    ) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts`` (resolved alerts are not listed); ``filter`` are matchers like ``card="p-1"``."""
        params: list[tuple[str, str]] = []
        for name, flag in (("active", active), ("silenced", silenced), ("inhibited", inhibited),
                           ("unprocessed", unprocessed)):
            if flag is not None:
                params.append((name, "true" if flag else "false"))
        params.extend(("filter", f) for f in filter)
        if receiver is not None:
            params.append(("receiver", receiver))
        return list(await self._get("/api/v2/alerts", params))
