"""The one settings object: read from CITYOPS_* variables once, at the edge (CLI), and passed down."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, AnyHttpUrl, Field, FilePath, SecretStr, ValidationError, field_validator,
                      model_validator)
from pydantic_settings import BaseSettings, SettingsConfigDict

from cityops.errors import ConfigError
from cityops.units import DEFAULT_RUNBOOK_BASE


FOOD_DEFAULT_LATENESS_S = 7 * 86400.0  # a week of store-and-forward EPCIS uploads


def _read_secret(path: Path) -> SecretStr:
    # Docker/Kubernetes secrets are files: read once at start, trailing newline dropped (as `echo` adds one).
    try:
        text = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the secret file {path}: {exc}") from None
    if not text:
        raise ValueError(f"the secret file {path} is empty")
    return SecretStr(text)


# A ``*_FILE`` setting names a file; the field holds the secret read from it (never the path).
SecretFile = Annotated[FilePath, AfterValidator(_read_secret)]


class KafkaSettings(BaseSettings):
    """How to reach Kafka: bootstrap servers and security (SASL, TLS). Every CITYOPS_* command that talks
    to Kafka (worker, simulate, topics, evaluate-alerts) reads these, so all its clients connect alike."""

    model_config = SettingsConfigDict(env_prefix="CITYOPS_", frozen=True, extra="ignore")

    kafka_bootstrap: str = Field(description="Kafka bootstrap servers, host:port[,host:port]")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka's security.protocol")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_sasl_password_file: SecretFile | None = Field(None, description="file holding the SASL password")
    kafka_ssl_cafile: FilePath | None = Field(None, description="PEM CA bundle that signed the brokers' "
                                              "certificates (unset: the system's CAs)")
    kafka_ssl_certfile: FilePath | None = Field(None, description="PEM client certificate (mutual TLS)")
    kafka_ssl_keyfile: FilePath | None = Field(None, description="PEM private key of the client certificate")
    kafka_ssl_key_password: SecretStr | None = None
    kafka_ssl_key_password_file: SecretFile | None = None
    kafka_ssl_check_hostname: bool = Field(True, description="verify the broker's name against its certificate")

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap(cls, v: str) -> str:
        for part in v.split(","):
            host, _, port = part.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port], got {v!r}")
        return v

    @field_validator("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password", "kafka_sasl_password_file",
                     "kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "kafka_ssl_key_password",
                     "kafka_ssl_key_password_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: Any) -> Any:
        # An env file or compose `environment:` often lists optional settings with no value: that means unset.
        return None if v == "" else v

    @model_validator(mode="after")
    def _kafka_security(self) -> "KafkaSettings":
        _one_of(self, "kafka_sasl_password", "kafka_sasl_password_file")
        _one_of(self, "kafka_ssl_key_password", "kafka_ssl_key_password_file")
        proto = self.kafka_security_protocol
        sasl = {"kafka_sasl_mechanism": self.kafka_sasl_mechanism, "kafka_sasl_username": self.kafka_sasl_username,
                "kafka_sasl_password": self.kafka_sasl_password or self.kafka_sasl_password_file}
        if proto.startswith("SASL_"):
            missing = [k for k, v in sasl.items() if not v]
            if missing:
                raise ValueError(f"CITYOPS_KAFKA_SECURITY_PROTOCOL={proto} needs "
                                 + ", ".join(_env(k) for k in missing) + " (or CITYOPS_KAFKA_SASL_PASSWORD_FILE)")
        else:
            given = [k for k, v in sasl.items() if v]
            if given:
                raise ValueError(f"{_env(given[0])} is set but CITYOPS_KAFKA_SECURITY_PROTOCOL={proto}: "
                                 "set it to SASL_SSL (or SASL_PLAINTEXT on a trusted network)")
        tls = [k for k in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "kafka_ssl_key_password",
                           "kafka_ssl_key_password_file") if getattr(self, k) is not None]
        if tls and not proto.endswith("SSL"):
            raise ValueError(f"{_env(tls[0])} is set but CITYOPS_KAFKA_SECURITY_PROTOCOL={proto}: "
                             "set it to SSL or SASL_SSL")
        if self.kafka_ssl_keyfile is not None and self.kafka_ssl_certfile is None:
            raise ValueError("CITYOPS_KAFKA_SSL_KEYFILE is set without CITYOPS_KAFKA_SSL_CERTFILE")
        if proto.endswith("SSL"):
            from cityops.connections import kafka_ssl_context

            kafka_ssl_context(self)  # loads the CA and the client certificate now: a bad file stops start-up
        return self

    @property
    def kafka_broker_url(self) -> str:
        return ",".join(f"kafka://{p.strip()}" for p in self.kafka_bootstrap.split(","))


def _env(field: str) -> str:
    return "CITYOPS_" + field.upper()


def _one_of(settings: BaseSettings, a: str, b: str) -> None:
    if getattr(settings, a) is not None and getattr(settings, b) is not None:
        raise ValueError(f"{_env(a)} and {_env(b)} are both set: give one")


class Settings(KafkaSettings):
    """Worker configuration. Every field maps to CITYOPS_<FIELD> (e.g. CITYOPS_KAFKA_BOOTSTRAP)."""

    influx_url: AnyHttpUrl = Field(description="InfluxDB base URL, e.g. http://127.0.0.1:8086")
    influx_database: str = Field("cityops", min_length=1, description="v1 database (2.x/3.x: bucket)")
    influx_token: SecretStr | None = Field(None, description="2.x/3.x token; unset for InfluxDB 1.x")
    influx_token_file: SecretFile | None = None
    influx_username: str | None = Field(None, description="1.x user (with [http] auth-enabled)")
    influx_password: SecretStr | None = None
    influx_password_file: SecretFile | None = None
    influx_ca_file: FilePath | None = Field(None, description="PEM CA bundle for an https:// InfluxDB")
    influx_verify_tls: bool = Field(True, description="verify InfluxDB's certificate (false: encrypt only)")
    influx_org: str | None = Field(None, description="2.x org: set to use the v2 write API with a bucket")
    pseudonym_key: SecretStr = Field(description="key of the keyed hash that pseudonymizes card numbers")
    data_dir: Path = Field(description="durable engine state (snapshot + commit log)")
    web_port: int = Field(6066, ge=1, le=65535, description="serves /metrics and /healthz")
    web_host: str = Field("127.0.0.1", min_length=1, description="address /metrics and /healthz listen on; "
                          "0.0.0.0 in a container so Prometheus in another container can scrape")
    alertmanager_url: AnyHttpUrl | None = Field(None, description="Alertmanager base URL; unset = none")
    alertmanager_username: str | None = Field(None, description="basic auth user (--web.config.file)")
    alertmanager_password: SecretStr | None = None
    alertmanager_password_file: SecretFile | None = None
    alertmanager_token: SecretStr | None = Field(None, description="bearer token (e.g. behind a proxy)")
    alertmanager_token_file: SecretFile | None = None
    alertmanager_ca_file: FilePath | None = Field(None, description="PEM CA bundle for an https:// Alertmanager")
    alertmanager_verify_tls: bool = True
    topic_partitions: int = Field(6, ge=1, le=1024)
    allowed_lateness_s: float = Field(600.0, ge=0, description="allowed lateness of the city streams (event time)")
    food_allowed_lateness_s: float | None = Field(
        None, ge=0, description="allowed lateness of food.trace-events; unset = 7 days, or CITYOPS_ALLOWED_LATENESS_S "
        "if larger (EPCIS is store-and-forward: parties upload hours or days of captured events at once)")
    max_future_s: float = Field(300.0, ge=0, description="events dated further ahead of their Kafka record's "
                                "timestamp are dead-lettered (reason `future`)")
    dedup_horizon_s: float = Field(86400.0 * 1.05, ge=86400.0, description="at least 24 h of event time")
    window_s: int = Field(60, ge=1)
    idle_partition_s: float = Field(120.0, gt=0, description="wall seconds without records before a partition "
                                    "no longer holds windows and rule clocks back")
    flush_interval_s: float = Field(1.0, gt=0, le=5.0, description="commit + write cadence; points reach InfluxDB within 5 s")
    max_pending_points: int = Field(200_000, ge=100, description="sink backlog that stops consumption")
    influx_batch_size: int = Field(5000, ge=1)
    consumer_session_timeout_s: float = Field(30.0, gt=0)
    offset_check_s: float = Field(30.0, gt=0, description="how often the worker checks that each partition's "
                                  "log still holds the record at its committed offset (topic re-created or "
                                  "log truncated: offsets went backwards)")
    max_message_bytes: int = Field(4 << 20, ge=1024)
    state_store: Literal["local", "kafka"] = Field(
        "local", description="where engine state is committed: `local` = CITYOPS_DATA_DIR (snapshot + log); "
        "`kafka` = the cityops.state topic (acks=all; the data directory is only a cache)")
    state_chunk_bytes: int = Field(512 << 10, ge=1024, le=8 << 20, description="largest cityops.state message "
                                   "(snapshots and big commits are split into chunks of this size)")
    state_snapshot_bytes: int = Field(64 << 20, ge=1 << 10, description="bytes of commits after which a snapshot "
                                      "is written (bounds what a restore reads)")
    task: str | None = Field(None, description="run one task (a stream group: traffic, health, food, or a "
                             "plugin's) as its active worker, without the lease group; unset = all tasks (with "
                             "CITYOPS_STATE_STORE=kafka: the worker joins the lease group and runs its share, "
                             "warm standbys for the rest)")
    gc_threshold: int = Field(50_000, ge=0, description="the worker's generation-0 threshold for Python's cyclic "
                              "garbage collector (0 = Python's default, 700): the engine keeps hundreds of "
                              "thousands of live objects, and frequent full scans of them cost a third of the "
                              "throughput with every alert rule on")
    source_registry: Path | None = Field(None, description="source registry file; unset or none = no registry; "
                                         "simulator = the simulated city's (streams/sources.json, packaged)")
    unknown_sources: Literal["enforce", "observe"] = Field(
        "enforce", description="with a registry, events of unlisted sources: enforce = dead-lettered; observe = "
        "processed, counted and UntrustedSource raised once per source")
    rules_dir: Path | None = Field(None, description="rule manifests + runbooks; unset = the reference city's "
                                   "shipped in the package (= agents/); none = no alert rules")
    rules_watch_s: float = Field(0.0, ge=0, description="how often (s) the worker looks for changed files in the "
                                 "rules directory and reloads them; 0 = only on SIGHUP")
    runbook_base: str = DEFAULT_RUNBOOK_BASE
    plugins: str | None = Field(None, description="installed agent plugins to load (entry points "
                                "cityops.agents): unset = all; none = the built-in agents alone; or a comma "
                                "list of plugin names")
    food_retention_s: float = Field(7 * 86400.0, gt=0)
    alert_resend_s: float = Field(60.0, gt=0)
    log_level: str = "INFO"

    @field_validator("task", mode="before")
    @classmethod
    def _empty_task_is_unset(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("source_registry", "rules_dir", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, v: Any) -> Any:
        # VAR= (set but empty, as compose and env files write it) means unset, not the current directory.
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("pseudonym_key")
    @classmethod
    def _key(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (it keys the card-number hash)")
        return v

    @field_validator("influx_token", "influx_token_file", "influx_username", "influx_password",
                     "influx_password_file", "influx_ca_file", "alertmanager_username", "alertmanager_password",
                     "alertmanager_password_file", "alertmanager_token", "alertmanager_token_file",
                     "alertmanager_ca_file", mode="before")
    @classmethod
    def _empty_http_secret_is_unset(cls, v: Any) -> Any:
        return None if v == "" else v

    @model_validator(mode="after")
    def _http_security(self) -> "Settings":
        for service in ("influx", "alertmanager"):
            for secret in ("password", "token"):
                _one_of(self, f"{service}_{secret}", f"{service}_{secret}_file")
            user = getattr(self, f"{service}_username")
            password = getattr(self, f"{service}_password") or getattr(self, f"{service}_password_file")
            token = getattr(self, f"{service}_token") or getattr(self, f"{service}_token_file")
            if (user is None) != (password is None):
                given, missing = ("username", "password") if user is not None else ("password", "username")
                raise ValueError(f"{_env(service + '_' + given)} is set without {_env(service + '_' + missing)}")
            if user is not None and token is not None:
                raise ValueError(f"{_env(service + '_username')} and {_env(service + '_token')} are both set: "
                                 "give a user and password, or a token")
            url = getattr(self, f"{service}_url")
            ca = getattr(self, f"{service}_ca_file")
            if ca is not None and (url is None or url.scheme != "https"):
                raise ValueError(f"{_env(service + '_ca_file')} is set but {_env(service + '_url')} is not "
                                 "https://: the CA would not be used")
            if ca is not None:
                from cityops.connections import http_ssl

                http_ssl(ca, True, _env(service + "_ca_file"))  # a bad CA file stops start-up
        return self

    @property
    def stream_lateness_s(self) -> dict[str, float]:
        """Allowed lateness per topic that differs from ``allowed_lateness_s`` (seconds of event time)."""
        food = self.food_allowed_lateness_s
        if food is None:
            food = max(FOOD_DEFAULT_LATENESS_S, self.allowed_lateness_s)
        return {"food.trace-events": float(food)}

    @property
    def influx_secret(self) -> SecretStr | None:
        """The InfluxDB token (2.x/3.x), from CITYOPS_INFLUX_TOKEN or CITYOPS_INFLUX_TOKEN_FILE."""
        return self.influx_token or self.influx_token_file


def load_kafka_settings(env: dict[str, str] | None = None, **overrides: Any) -> KafkaSettings:
    """Only the Kafka connection settings (for simulate, topics, evaluate-alerts); fails naming the variable."""
    return _load(KafkaSettings, env, overrides)


# CITYOPS_* variables read by commands other than the worker (they are not worker settings, but they are
# ours: an environment that sets them is not misconfigured).
OTHER_VARIABLES: dict[str, str] = {
    "CITYOPS_GRAFANA_URL": "`cityops dashboards push`: Grafana base URL",
    "CITYOPS_GRAFANA_TOKEN": "`cityops dashboards push`: Grafana service-account token",
    # Read by cityops.engine.kafka_state (crash tests): documented in README, so it is no typo.
    "CITYOPS_FAULT_KILL_AT": "test hook: SIGKILL the worker at a state kill point (point[@n])",
}


# Settings that existed and were removed: naming one gets this instead of "unknown setting".
REMOVED_VARIABLES: dict[str, str] = {
    "CITYOPS_COLD_CHAIN_MIN_C": "the cold-chain range is the FoodColdChainBreach rule's params min_c/max_c "
                                "in agents/food-safety.yml (CITYOPS_RULES_DIR)",
    "CITYOPS_COLD_CHAIN_MAX_C": "the cold-chain range is the FoodColdChainBreach rule's params min_c/max_c "
                                "in agents/food-safety.yml (CITYOPS_RULES_DIR)",
}


def setting_names() -> list[str]:
    """Every CITYOPS_* variable cityops knows: one per Settings field, plus OTHER_VARIABLES."""
    return sorted({"CITYOPS_" + name.upper() for name in Settings.model_fields} | set(OTHER_VARIABLES))


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """Messages for CITYOPS_* variables of ``env`` that are no setting (a typo would silently be a default)."""
    known = set(setting_names())
    problems = []
    for name in sorted(env):
        if name.upper() in REMOVED_VARIABLES:
            problems.append(f"{name}: removed setting: {REMOVED_VARIABLES[name.upper()]}")
        elif name.upper().startswith("CITYOPS_") and name.upper() not in known:
            close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else " (see the settings table in README.md)"
            problems.append(f"{name}: unknown setting{hint}")
    return problems


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read settings from ``env`` (default: the process environment) or fail naming the variable.

    Raises ConfigError listing every bad, missing or unknown CITYOPS_* variable (``.problems``: one each).
    """
    return _load(Settings, env, overrides)


def _load(cls: Any, env: Mapping[str, str] | None, overrides: dict[str, Any]) -> Any:
    # Unknown CITYOPS_* names are refused by every command that reads settings: a typo must not leave a
    # default silently in force.
    unknown = unknown_variables(os.environ if env is None else env)
    try:
        if env is None:
            settings = cls(**overrides)
        else:
            values = {k[len("CITYOPS_"):].lower(): v for k, v in env.items() if k.startswith("CITYOPS_")}
            values.update(overrides)
            settings = cls.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = "is required but not set" if err["type"] == "missing" else err["msg"]
            if err["loc"]:
                problems.append("CITYOPS_" + "_".join(str(p) for p in err["loc"]).upper() + f": {msg}")
            else:  # a check across settings: its message names them
                problems.append(msg.removeprefix("Value error, "))
        problems += unknown
        raise ConfigError("bad configuration: " + "; ".join(problems), problems) from None
    if unknown:
        raise ConfigError("bad configuration: " + "; ".join(unknown), unknown)
    return settings
