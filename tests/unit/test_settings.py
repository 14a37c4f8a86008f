"""Configuration: read once from CITYOPS_*, bad values stop start-up naming the setting, Faust env ignored."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cityops.errors import ConfigError
from cityops.settings import load_settings, unknown_variables

GOOD = {"CITYOPS_KAFKA_BOOTSTRAP": "127.0.0.1:9092", "CITYOPS_INFLUX_URL": "http://127.0.0.1:8086",
        "CITYOPS_PSEUDONYM_KEY": "0123456789abcdef", "CITYOPS_DATA_DIR": "/tmp/cityops-test"}


def test_good_settings_load() -> None:
    s = load_settings(GOOD)
    assert s.kafka_broker_url == "kafka://127.0.0.1:9092"
    assert s.influx_database == "cityops" and s.web_port == 6066


@pytest.mark.parametrize("name,value,fragment", [
    ("CITYOPS_KAFKA_BOOTSTRAP", "localhost", "host:port"),
    ("CITYOPS_INFLUX_URL", "not a url", "CITYOPS_INFLUX_URL"),
    ("CITYOPS_PSEUDONYM_KEY", "short", "at least 16"),
    ("CITYOPS_WEB_PORT", "70000", "CITYOPS_WEB_PORT"),
    ("CITYOPS_FLUSH_INTERVAL_S", "30", "CITYOPS_FLUSH_INTERVAL_S"),
])
def test_bad_value_names_the_setting(name: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(dict(GOOD, **{name: value}))
    assert name in str(err.value) and fragment in str(err.value)


def test_missing_setting_is_named() -> None:
    env = {k: v for k, v in GOOD.items() if k != "CITYOPS_PSEUDONYM_KEY"}
    with pytest.raises(ConfigError, match="CITYOPS_PSEUDONYM_KEY: is required"):
        load_settings(env)


def test_worker_refuses_to_start_on_bad_config(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOPS_")}
    env.update(GOOD, CITYOPS_INFLUX_URL="nope", CITYOPS_DATA_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "cityops.cli", "worker"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert "CITYOPS_INFLUX_URL" in r.stderr


def test_faust_environment_variables_do_not_override_ours(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    from cityops.agents.app import create_app

    monkeypatch.setenv("BROKER_URL", "kafka://evil:1")
    monkeypatch.setenv("WEB_PORT", "1")
    app, runtime = create_app(load_settings(dict(GOOD, CITYOPS_DATA_DIR=str(tmp_path), CITYOPS_WEB_PORT="7777",
                                                 CITYOPS_RULES_DIR="none", CITYOPS_SOURCE_REGISTRY="none")))
    assert [str(u) for u in app.conf.broker] == ["kafka://127.0.0.1:9092"]
    assert app.conf.web_port == 7777
    runtime.store.close()


def test_faust_monitor_sensor_is_not_run_per_event(tmp_path: Path) -> None:
    """Faust's Monitor (per-event sensor upkeep) is left out: cityops reports through its own metrics."""
    from cityops.agents.app import create_app

    app, runtime = create_app(load_settings(dict(GOOD, CITYOPS_DATA_DIR=str(tmp_path), CITYOPS_RULES_DIR="none",
                                                 CITYOPS_SOURCE_REGISTRY="none")))
    app.on_init_dependencies()
    assert app.monitor not in set(app.sensors)
    runtime.store.close()


def test_worker_gc_tuning_setting() -> None:
    """CITYOPS_GC_THRESHOLD sets the worker's generation-0 threshold (0 keeps Python's), named when bad."""
    import gc

    from cityops.cli import tune_gc

    before = gc.get_threshold()
    try:
        tune_gc(load_settings(dict(GOOD, CITYOPS_GC_THRESHOLD="40000")).gc_threshold)
        assert gc.get_threshold()[0] == 40000
        gc.set_threshold(*before)
        tune_gc(load_settings(dict(GOOD, CITYOPS_GC_THRESHOLD="0")).gc_threshold)
        assert gc.get_threshold() == before
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    with pytest.raises(ConfigError, match="CITYOPS_GC_THRESHOLD"):
        load_settings(dict(GOOD, CITYOPS_GC_THRESHOLD="-1"))


def test_unknown_cityops_variable_is_refused_with_the_closest_name() -> None:
    """A typo would otherwise leave a default in force silently (the old compose file's CITYOPS_KAFKA_BROKERS)."""
    with pytest.raises(ConfigError) as err:
        load_settings(dict(GOOD, CITYOPS_KAFKA_BROKERS="kafka:9092", CITYOPS_FLUSH_INTERVAL="2"))
    assert err.value.problems == [
        "CITYOPS_FLUSH_INTERVAL: unknown setting (did you mean CITYOPS_FLUSH_INTERVAL_S?)",
        "CITYOPS_KAFKA_BROKERS: unknown setting (did you mean CITYOPS_KAFKA_BOOTSTRAP?)",
    ]
    # Reported together with bad and missing ones, each named.
    env = {k: v for k, v in GOOD.items() if k != "CITYOPS_DATA_DIR"}
    with pytest.raises(ConfigError) as err:
        load_settings(dict(env, CITYOPS_WEB_PORT="0", CITYOPS_NONSENSE="1"))
    names = [p.split(":")[0] for p in err.value.problems]
    assert names == ["CITYOPS_DATA_DIR", "CITYOPS_WEB_PORT", "CITYOPS_NONSENSE"]


def test_unknown_variable_in_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("CITYOPS_"):
            monkeypatch.delenv(key)
    for key, value in GOOD.items():
        monkeypatch.setenv(key, value)
    assert load_settings().kafka_bootstrap == "127.0.0.1:9092"
    monkeypatch.setenv("CITYOPS_GRAFANA_URL", "http://grafana:3000")  # read by `dashboards push`: known
    assert load_settings().web_port == 6066
    monkeypatch.setenv("cityops_influx_urll", "http://x:1")
    with pytest.raises(ConfigError, match="cityops_influx_urll: unknown setting"):
        load_settings()


def test_worker_refuses_to_start_on_unknown_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOPS_")}
    env.update(GOOD, CITYOPS_DATA_DIR=str(tmp_path), CITYOPS_KAFKA_BROKERS="kafka:9092")
    r = subprocess.run([sys.executable, "-m", "cityops.cli", "worker"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert "CITYOPS_KAFKA_BROKERS: unknown setting (did you mean CITYOPS_KAFKA_BOOTSTRAP?)" in r.stderr


def test_empty_path_settings_mean_unset() -> None:
    s = load_settings(dict(GOOD, CITYOPS_SOURCE_REGISTRY="", CITYOPS_RULES_DIR=" "))
    assert s.source_registry is None and s.rules_dir is None
    assert load_settings(GOOD).unknown_sources == "enforce"


def test_removed_setting_says_where_it_went() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(dict(GOOD, CITYOPS_COLD_CHAIN_MAX_C="5"))
    assert err.value.problems == ["CITYOPS_COLD_CHAIN_MAX_C: removed setting: the cold-chain range is the "
                                  "FoodColdChainBreach rule's params min_c/max_c in agents/food-safety.yml "
                                  "(CITYOPS_RULES_DIR)"]


def test_lateness_per_stream_and_future_guard_settings() -> None:
    s = load_settings(GOOD)
    assert s.allowed_lateness_s == 600 and s.max_future_s == 300
    assert s.stream_lateness_s == {"food.trace-events": 7 * 86400.0}  # store-and-forward EPCIS uploads
    wide = load_settings(dict(GOOD, CITYOPS_ALLOWED_LATENESS_S=str(30 * 86400)))
    assert wide.stream_lateness_s["food.trace-events"] == 30 * 86400.0  # never shorter than the city default
    own = load_settings(dict(GOOD, CITYOPS_FOOD_ALLOWED_LATENESS_S="3600"))
    assert own.stream_lateness_s["food.trace-events"] == 3600.0
    for name in ("CITYOPS_FOOD_ALLOWED_LATENESS_S", "CITYOPS_MAX_FUTURE_S"):
        with pytest.raises(ConfigError, match=name):
            load_settings(dict(GOOD, **{name: "-1"}))


@pytest.mark.parametrize(("variable", "args", "message"), [
    ("CITYOPS_PSEUDONYM", ["simulate", "--to", "file", "--out", "{tmp}/events.jsonl", "--duration", "1m", "--speedup", "0"],
     "cityops: CITYOPS_PSEUDONYM: unknown setting (did you mean CITYOPS_PSEUDONYM_KEY?)"),
    ("CITYOPS_X", ["evaluate-alerts", "--truth", "{tmp}/truth.jsonl", "--alerts", "{tmp}/alerts.jsonl"],
     "cityops: CITYOPS_X: unknown setting (did you mean CITYOPS_TASK?)"),
    ("CITYOPS_RULES_DIRS", ["dashboards", "validate"],
     "cityops: CITYOPS_RULES_DIRS: unknown setting (did you mean CITYOPS_RULES_DIR?)"),
    ("CITYOPS_DATADIR", ["topics", "--help"], None),  # argparse's --help exits before any command runs
    ("CITYOPS_DATADIR", ["agent", "new", "bike-docks", "--dir", "{tmp}"],
     "cityops: CITYOPS_DATADIR: unknown setting (did you mean CITYOPS_DATA_DIR?)"),
])
def test_every_subcommand_refuses_an_unknown_variable(variable: str, args: list[str], message: str | None,
                                                      tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOPS_")}
    env[variable] = "1"
    r = subprocess.run([sys.executable, "-m", "cityops.cli", *(a.format(tmp=tmp_path) for a in args)], env=env,
                       capture_output=True, text=True, timeout=120)
    if message is None:
        assert r.returncode == 0
        return
    assert (r.returncode, r.stderr) == (2, message + "\n")
    assert list(tmp_path.iterdir()) == []  # refused before doing anything


def test_the_documented_fault_hook_is_no_unknown_setting() -> None:
    assert unknown_variables({"CITYOPS_FAULT_KILL_AT": "commit-produced@2"}) == []
    env = dict(GOOD, CITYOPS_FAULT_KILL_AT="commit-produced@2")
    assert load_settings(env).kafka_bootstrap == GOOD["CITYOPS_KAFKA_BOOTSTRAP"]
