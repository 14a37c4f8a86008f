"""The one settings object: read from CITYOPS_* variables once, at the edge (CLI), and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cityops.errors import ConfigError


class Settings(BaseSettings):
    """Worker configuration. Every field maps to CITYOPS_<FIELD> (e.g. CITYOPS_KAFKA_BOOTSTRAP)."""

    model_config = SettingsConfigDict(env_prefix="CITYOPS_", frozen=True, extra="ignore")

    kafka_bootstrap: str = Field(description="Kafka bootstrap servers, host:port[,host:port]")
    influx_url: AnyHttpUrl = Field(description="InfluxDB base URL, e.g. http://127.0.0.1:8086")
    influx_database: str = Field("cityops", min_length=1, description="v1 database (2.x/3.x: bucket)")
    influx_token: SecretStr | None = Field(None, description="2.x/3.x token; unset for InfluxDB 1.x")
    influx_org: str | None = Field(None, description="2.x org: set to use the v2 write API with a bucket")
    pseudonym_key: SecretStr = Field(description="key of the keyed hash that pseudonymizes card numbers")
    data_dir: Path = Field(description="durable engine state (snapshot + commit log)")
    web_port: int = Field(6066, ge=1, le=65535, description="serves /metrics and /healthz")
    web_host: str = "127.0.0.1"
    alertmanager_url: AnyHttpUrl | None = Field(None, description="Alertmanager base URL; unset = none")
    topic_partitions: int = Field(6, ge=1, le=1024)
    allowed_lateness_s: float = Field(600.0, ge=0)
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
    gc_threshold: int = Field(50_000, ge=0, description="the worker's generation-0 threshold for Python's cyclic "
                              "garbage collector (0 = Python's default, 700): the engine keeps hundreds of "
                              "thousands of live objects, and frequent full scans of them cost a third of the "
                              "throughput with every alert rule on")
    source_registry: Path | None = Field(None, description="streams/sources.json: enforce known/signing sources")
    rules_dir: Path | None = Field(None, description="agents/ directory with rule manifests")
    runbook_base: str = "https://git.cityops.example/cityops/-/blob/main"
    cold_chain_min_c: float = 0.0
    cold_chain_max_c: float = 4.0
    food_retention_s: float = Field(7 * 86400.0, gt=0)
    alert_resend_s: float = Field(60.0, gt=0)
    log_level: str = "INFO"

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap(cls, v: str) -> str:
        for part in v.split(","):
            host, _, port = part.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port], got {v!r}")
        return v

    @field_validator("pseudonym_key")
    @classmethod
    def _key(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (it keys the card-number hash)")
        return v

    @property
    def kafka_broker_url(self) -> str:
        return ",".join(f"kafka://{p.strip()}" for p in self.kafka_bootstrap.split(","))


def load_settings(env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Read settings from ``env`` (default: the process environment) or fail naming the variable."""
    try:
        if env is None:
            return Settings(**overrides)
        values = {k[len("CITYOPS_"):].lower(): v for k, v in env.items() if k.startswith("CITYOPS_")}
        values.update(overrides)
        return Settings.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = "CITYOPS_" + "_".join(str(p) for p in err["loc"]).upper()
            msg = "is required but not set" if err["type"] == "missing" else err["msg"]
            problems.append(f"{name}: {msg}")
        raise ConfigError("bad configuration: " + "; ".join(problems)) from None
