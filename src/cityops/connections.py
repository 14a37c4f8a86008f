"""Secured connections, built once from settings: every Kafka client cityops creates (Faust app, aiokafka,
kafka-python) gets the same SASL/TLS configuration, every HTTP client (InfluxDB, Alertmanager) the same
TLS verification and credentials. Nothing here reads the environment; a bad file or credential stops
start-up with a ConfigError naming the setting.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from cityops.errors import ConfigError

if TYPE_CHECKING:
    from cityops.settings import KafkaSettings, Settings

log = logging.getLogger("cityops.connections")

__all__ = ["HttpSecurity", "alertmanager_http", "describe_security", "faust_broker_credentials", "http_ssl",
           "influx_http",
           "kafka_client_security", "kafka_ssl_context", "preflight"]


# -- Kafka ------------------------------------------------------------------------------------------------
def kafka_ssl_context(s: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context every Kafka client uses (None for PLAINTEXT / SASL_PLAINTEXT).

    Built with aiokafka's ``create_ssl_context``: the CA file (or the system CAs), the client certificate
    and key (mutual TLS) decrypted with the key password. Raises ConfigError naming the setting whose
    file cannot be loaded.
    """
    if not s.kafka_security_protocol.endswith("SSL"):
        return None
    from aiokafka.helpers import create_ssl_context

    password = s.kafka_ssl_key_password or s.kafka_ssl_key_password_file
    try:
        ctx = create_ssl_context(cafile=s.kafka_ssl_cafile)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"CITYOPS_KAFKA_SSL_CAFILE={s.kafka_ssl_cafile}: not a PEM CA bundle ({exc})") from None
    if s.kafka_ssl_certfile is not None:
        try:
            ctx.load_cert_chain(s.kafka_ssl_certfile, s.kafka_ssl_keyfile,
                                password.get_secret_value() if password else None)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"CITYOPS_KAFKA_SSL_CERTFILE={s.kafka_ssl_certfile} / CITYOPS_KAFKA_SSL_KEYFILE={s.kafka_ssl_keyfile}"
                f": cannot load the client certificate and key ({exc}); an encrypted key needs "
                "CITYOPS_KAFKA_SSL_KEY_PASSWORD") from None
    # Off only on request, for brokers addressed by a name their certificate does not carry.
    ctx.check_hostname = s.kafka_ssl_check_hostname
    return ctx


def kafka_client_security(s: KafkaSettings, ssl_context: ssl.SSLContext | None = None) -> dict[str, Any]:
    """Keyword arguments for any aiokafka or kafka-python client (producer, consumer, admin).

    Both libraries take the same names: ``security_protocol``, ``ssl_context``, ``sasl_mechanism``,
    ``sasl_plain_username``, ``sasl_plain_password`` (used by PLAIN and SCRAM alike). Pass ``ssl_context``
    to share one context (it is built from settings otherwise).
    """
    out: dict[str, Any] = {"security_protocol": s.kafka_security_protocol}
    if s.kafka_security_protocol.endswith("SSL"):
        out["ssl_context"] = ssl_context if ssl_context is not None else kafka_ssl_context(s)
    if s.kafka_security_protocol.startswith("SASL_"):
        password = s.kafka_sasl_password or s.kafka_sasl_password_file
        assert password is not None  # settings require it with SASL_*
        out.update(sasl_mechanism=s.kafka_sasl_mechanism, sasl_plain_username=s.kafka_sasl_username,
                   sasl_plain_password=password.get_secret_value())
    return out


def faust_broker_credentials(s: KafkaSettings, ssl_context: ssl.SSLContext | None = None) -> Any:
    """faust-streaming's ``broker_credentials`` for the same security: SASLCredentials (SASL_PLAINTEXT, or
    SASL_SSL when it carries the TLS context), SSLCredentials (SSL), or None (PLAINTEXT)."""
    import faust

    proto = s.kafka_security_protocol
    ctx = ssl_context if ssl_context is not None else kafka_ssl_context(s)
    if proto.startswith("SASL_"):
        password = s.kafka_sasl_password or s.kafka_sasl_password_file
        assert password is not None
        return faust.SASLCredentials(username=s.kafka_sasl_username, password=password.get_secret_value(),
                                     mechanism=s.kafka_sasl_mechanism, ssl_context=ctx)
    if proto == "SSL":
        return faust.SSLCredentials(ctx)
    return None


def describe_security(s: Settings) -> str:
    """What each connection uses, for the start-up log and check-config; never a secret. E.g.
    ``kafka=SASL_SSL/SCRAM-SHA-512 user=cityops influxdb=https basic-auth user=writer alertmanager=off``."""
    kafka = s.kafka_security_protocol
    if kafka.startswith("SASL_"):
        kafka += f"/{s.kafka_sasl_mechanism} user={s.kafka_sasl_username}"
    if s.kafka_ssl_certfile is not None:
        kafka += " client-certificate"
    parts = [f"kafka={kafka}"]
    for name, url, user, token in (
            ("influxdb", s.influx_url, s.influx_username, s.influx_secret),
            ("alertmanager", s.alertmanager_url, s.alertmanager_username,
             s.alertmanager_token or s.alertmanager_token_file)):
        if url is None:
            parts.append(f"{name}=off")
            continue
        auth = f"basic-auth user={user}" if user else "token" if token else "no-auth"
        parts.append(f"{name}={url.scheme} {auth}")
    return " ".join(parts)


# -- HTTP (InfluxDB, Alertmanager) ------------------------------------------------------------------------
def http_ssl(ca_file: Path | None, verify: bool, setting: str = "CA file") -> ssl.SSLContext | bool:
    """aiohttp's ``ssl`` argument: a context trusting ``ca_file``; True (system CAs); False (no verification).

    Raises ConfigError naming ``setting`` if the CA file is not a PEM bundle.
    """
    if not verify:
        return False
    if ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{setting}={ca_file}: not a PEM CA bundle ({exc})") from None


def basic_auth(user: str, password: str) -> dict[str, str]:
    """The ``Authorization`` header of HTTP basic auth (RFC 7617: base64 of ``user:password``, UTF-8)."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")}


@dataclass(frozen=True)
class HttpSecurity:
    """How one HTTP client reaches its server: TLS (``ssl`` as aiohttp takes it) and credentials.

    ``headers``: the ``Authorization`` header (``Basic …``, ``Bearer …`` or ``Token …``), or none.
    ``settings``: the names of the settings behind it, for error messages.
    """

    ssl: ssl.SSLContext | bool = True
    headers: dict[str, str] = field(default_factory=dict)
    ca_file: str | None = None
    verify: bool = True
    settings: str = ""

    def session(self, timeout: aiohttp.ClientTimeout | None = None) -> aiohttp.ClientSession:
        """A new aiohttp session with this TLS configuration and these credentials (close it when done)."""
        return aiohttp.ClientSession(timeout=timeout, headers=self.headers,
                                     connector=aiohttp.TCPConnector(ssl=self.ssl))

    def __repr__(self) -> str:  # never print the credentials
        scheme = self.headers.get("Authorization", "none").split(" ")[0]
        return f"HttpSecurity(ssl={self.ssl!r}, authorization={scheme}, settings={self.settings!r})"


def influx_http(s: Settings) -> HttpSecurity:
    """InfluxDB: 1.x user + password as HTTP basic auth (what influxd's auth-enabled accepts), or the
    2.x/3.x token as ``Authorization: Token …``; TLS verification from CITYOPS_INFLUX_CA_FILE/_VERIFY_TLS."""
    password = s.influx_password or s.influx_password_file
    token = s.influx_secret
    headers = ({"Authorization": f"Token {token.get_secret_value()}"} if token else
               basic_auth(s.influx_username, password.get_secret_value()) if s.influx_username and password else {})
    names = ("CITYOPS_INFLUX_USERNAME / CITYOPS_INFLUX_PASSWORD" if s.influx_username else
             "CITYOPS_INFLUX_TOKEN" if token else "CITYOPS_INFLUX_USERNAME / CITYOPS_INFLUX_PASSWORD (none set)")
    return HttpSecurity(ssl=http_ssl(s.influx_ca_file, s.influx_verify_tls, "CITYOPS_INFLUX_CA_FILE"),
                        headers=headers, ca_file=str(s.influx_ca_file) if s.influx_ca_file else None,
                        verify=s.influx_verify_tls, settings=names)


def alertmanager_http(s: Settings) -> HttpSecurity:
    """Alertmanager: basic auth (its ``--web.config.file`` ``basic_auth_users``) or a bearer token (a proxy
    in front of it); TLS verification from CITYOPS_ALERTMANAGER_CA_FILE/_VERIFY_TLS."""
    password = s.alertmanager_password or s.alertmanager_password_file
    token = s.alertmanager_token or s.alertmanager_token_file
    headers = ({"Authorization": f"Bearer {token.get_secret_value()}"} if token else
               basic_auth(s.alertmanager_username, password.get_secret_value())
               if s.alertmanager_username and password else {})
    names = ("CITYOPS_ALERTMANAGER_USERNAME / CITYOPS_ALERTMANAGER_PASSWORD" if s.alertmanager_username else
             "CITYOPS_ALERTMANAGER_TOKEN" if token else
             "CITYOPS_ALERTMANAGER_USERNAME / CITYOPS_ALERTMANAGER_PASSWORD (none set)")
    return HttpSecurity(ssl=http_ssl(s.alertmanager_ca_file, s.alertmanager_verify_tls,
                                     "CITYOPS_ALERTMANAGER_CA_FILE"),
                        headers=headers,
                        ca_file=str(s.alertmanager_ca_file) if s.alertmanager_ca_file else None,
                        verify=s.alertmanager_verify_tls, settings=names)


def tls_failure(exc: BaseException, url: str, ca_setting: str) -> ConfigError | None:
    """A ConfigError for a certificate that did not verify (or a TLS mismatch), else None."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return ConfigError(f"{url}: its TLS certificate did not verify ({exc.certificate_error}): set {ca_setting} "
                           f"to the CA that signed it (or {ca_setting.replace('CA_FILE', 'VERIFY_TLS')}=false)")
    if isinstance(exc, aiohttp.ClientSSLError):
        return ConfigError(f"{url}: TLS handshake failed ({exc}); check the URL scheme and {ca_setting}")
    return None


async def preflight(s: Settings) -> None:
    """Check the credentials and TLS of InfluxDB and Alertmanager before the worker starts.

    Refused credentials or an unverifiable certificate raise ConfigError naming the settings; a server
    that is merely down is logged and left to the worker's retries (it keeps the data until then).
    """
    from cityops.sinks.influx import InfluxSink, InfluxUnavailable

    sink = InfluxSink(str(s.influx_url), s.influx_database, org=s.influx_org, http=influx_http(s),
                      token=s.influx_secret.get_secret_value() if s.influx_secret else None)
    try:
        await sink.setup()
    except InfluxUnavailable as exc:
        log.warning("influxdb not reachable at start (the worker retries): %s", exc)
    finally:
        await sink.close()
    if s.alertmanager_url is not None:
        from cityops.sinks.alertmanager import AlertmanagerSink, AlertmanagerUnavailable

        am = AlertmanagerSink(str(s.alertmanager_url), http=alertmanager_http(s), attempts=1)
        try:
            await am.status()
        except AlertmanagerUnavailable as exc:
            log.warning("alertmanager not reachable at start (alerts wait in the outbox): %s", exc)
        finally:
            await am.close()


def run_preflight(s: Settings) -> None:
    """``preflight`` from synchronous code (the CLI, before Faust starts its loop)."""
    asyncio.run(preflight(s))
