"""Deploy files checked with their own tools (promtool, amtool) and cityops.dashboards."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from cityops import dashboards as dash
from cityops.localstack_configs import INFLUX_CONFIG_TEMPLATE, render_influx_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROM_DIR = DEPLOY / "prometheus"
RULES = PROM_DIR / "rules" / "cityops-platform.rules.yml"
RULE_TESTS = PROM_DIR / "rules" / "cityops-platform.tests.yml"
AM_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
DASHBOARD_DIR = REPO / "dashboards"
COMPOSE = REPO / "docker-compose.yml"


def _tool(name: str) -> str:
    """Path of a required binary; a missing one fails the test (it must not skip in CI)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get install prometheus prometheus-alertmanager")
    return path


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# ----------------------------------------------------------------- Prometheus


def test_promtool_check_config() -> None:
    _run(_tool("promtool"), "check", "config", "prometheus.yml", cwd=PROM_DIR)


def test_promtool_check_rules() -> None:
    _run(_tool("promtool"), "check", "rules", str(RULES))


def test_promtool_test_rules() -> None:
    out = _run(_tool("promtool"), "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert "SUCCESS" in out.stdout + out.stderr


def test_platform_rules_have_labels_and_runbooks() -> None:
    rules = [r for g in _yaml(RULES)["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert names == {
        "CityopsWorkerDown",
        "CityopsDeadLettersHigh",
        "CityopsSinkBacklog",
        "CityopsCheckpointStale",
        "CityopsStreamStale",
        "CityopsRulesReloadRefused",
    }
    tested = set(re.findall(r"alertname:\s*(\w+)", RULE_TESTS.read_text()))
    assert names <= tested, f"rules without a promtool test: {names - tested}"
    for rule in rules:
        assert rule["labels"]["domain"] == "platform"
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        ann = rule["annotations"]
        assert ann["summary"] and ann["description"]
        assert ann["runbook_url"] == f"agents/platform.md#{rule['alert'].lower()}"


def test_prometheus_scrapes_worker_and_itself() -> None:
    cfg = _yaml(PROM_DIR / "prometheus.yml")
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert {"prometheus", "cityops-worker"} <= set(jobs)
    assert jobs["cityops-worker"].get("metrics_path", "/metrics") == "/metrics"
    assert cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


# ----------------------------------------------------------------- Alertmanager


def test_amtool_check_config() -> None:
    out = _run(_tool("amtool"), "check-config", str(AM_CONFIG))
    assert "SUCCESS" in out.stdout


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        ("alertname=HospitalWaitHigh severity=critical domain=health", "pager,ops-webhook"),
        ("alertname=CardCloned severity=critical domain=security", "pager,security-team"),
        ("alertname=UntrustedSource severity=warning domain=security", "security-team"),
        ("alertname=RoadSpeedLow severity=warning domain=traffic", "ops-webhook"),
        ("alertname=CityopsStreamStale severity=warning domain=platform", "ops-webhook"),
        ("alertname=TraceRateInfo severity=info domain=food", "ops-webhook"),
        ("alertname=Unlabelled", "ops-webhook"),
    ],
)
def test_alertmanager_routes(labels: str, receivers: str) -> None:
    out = _run(
        _tool("amtool"), "config", "routes", "test", f"--config.file={AM_CONFIG}", *labels.split()
    )
    assert out.stdout.strip() == receivers


def test_alertmanager_groups_and_inhibits() -> None:
    cfg = _yaml(AM_CONFIG)
    assert cfg["route"]["group_by"] == ["alertname", "domain"]
    crit = cfg["inhibit_rules"][0]
    assert crit["source_matchers"] == ['severity="critical"']
    assert crit["target_matchers"] == ['severity="warning"']
    assert {"alertname", "card", "line", "hospital", "location", "source", "stream"} <= set(crit["equal"])
    for receiver in cfg["receivers"]:
        for hook in receiver["webhook_configs"]:
            assert hook["url"].startswith("http://oncall-gateway:9095/")


# ----------------------------------------------------------------- Grafana provisioning


def test_provisioned_datasources_match_module() -> None:
    cfg = _yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "cityops.yml")
    provisioned = {d["uid"]: d["type"] for d in cfg["datasources"]}
    assert provisioned == dash.PROVISIONED_DATASOURCES
    influx = next(d for d in cfg["datasources"] if d["uid"] == "cityops-influx")
    assert influx["url"] == "http://influxdb:8086"
    assert influx["jsonData"]["dbName"] == "cityops"
    assert influx["jsonData"]["version"] == "InfluxQL"


def test_dashboard_provider_points_at_mounted_dir() -> None:
    cfg = _yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "cityops.yml")
    (provider,) = cfg["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


# ----------------------------------------------------------------- dashboards


@pytest.fixture(scope="module")
def dashboards() -> list[dict[str, Any]]:
    return dash.load_dashboards(DASHBOARD_DIR)


def test_expected_dashboards_exist(dashboards: list[dict[str, Any]]) -> None:
    assert {d["uid"] for d in dashboards} == {
        "cityops-overview",
        "cityops-traffic",
        "cityops-health",
        "cityops-food",
        "cityops-alerts",
        "cityops-platform",
    }
    for path in DASHBOARD_DIR.glob("*.json"):
        assert json.loads(path.read_text())["uid"] == path.stem, "file name must be the uid"


def test_every_dashboard_validates(dashboards: list[dict[str, Any]]) -> None:
    assert dash.validate_all(dashboards) == []
    seen: set[str] = set()
    for d in dashboards:
        assert dash.validate(d, seen_uids=seen) == [], d["uid"]


def test_traffic_has_mode_and_line_variables(dashboards: list[dict[str, Any]]) -> None:
    traffic = next(d for d in dashboards if d["uid"] == "cityops-traffic")
    variables = {v["name"]: v for v in traffic["templating"]["list"]}
    assert variables["mode"]["query"].startswith('SHOW TAG VALUES FROM "traffic_ridership"')
    assert 'WITH KEY = "line"' in variables["line"]["query"]


def test_alerts_dashboard_has_influx_annotations(dashboards: list[dict[str, Any]]) -> None:
    alerts = next(d for d in dashboards if d["uid"] == "cityops-alerts")
    influx = [a for a in alerts["annotations"]["list"] if a.get("datasource", {}).get("uid") == "cityops-influx"]
    assert influx and all('FROM "alerts"' in a["target"]["query"] for a in influx)


def _minimal_dashboard() -> dict[str, Any]:
    return {
        "id": None,
        "uid": "t-dash",
        "title": "T",
        "schemaVersion": dash.SCHEMA_VERSION,
        "panels": [
            {
                "id": 1,
                "type": "timeseries",
                "title": "speed",
                "datasource": {"type": "influxdb", "uid": "cityops-influx"},
                "gridPos": {"x": 0, "y": 0, "w": 12, "h": 8},
                "targets": [
                    {
                        "refId": "A",
                        "rawQuery": True,
                        "query": 'SELECT mean("speed_kmh") FROM "traffic_road" WHERE $timeFilter '
                        'GROUP BY time($__interval), "segment" fill(none)',
                    }
                ],
            }
        ],
    }


def test_validate_accepts_minimal_dashboard() -> None:
    assert dash.validate(_minimal_dashboard()) == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.pop("uid"), "missing uid"),
        (lambda d: d.pop("title"), "missing title"),
        (lambda d: d["panels"][0].update(datasource={"type": "influxdb", "uid": "nope"}), "not provisioned"),
        (lambda d: d["panels"].append(copy.deepcopy(d["panels"][0]) | {"gridPos": {"x": 12, "y": 0, "w": 12, "h": 8}}), "duplicate panel id"),
        (lambda d: d["panels"][0]["gridPos"].update(x=20), "x+w"),
        (lambda d: d["panels"][0]["targets"][0].update(query='SELECT mean("speed") FROM "traffic_road" WHERE $timeFilter'), "'speed' is neither"),
        (lambda d: d["panels"][0]["targets"][0].update(query='SELECT mean("x") FROM "roads" WHERE $timeFilter'), "unknown measurement 'roads'"),
        (lambda d: d["panels"][0]["targets"][0].update(query='SELECT mean("flow") FROM "traffic_road" GROUP BY time(1m)'), "$timeFilter"),
        (lambda d: d["panels"][0]["targets"][0].update(query='SELECT mean("flow") FROM "traffic_road" WHERE $timeFilter GROUP BY "lane"'), "not a tag"),
        (lambda d: d["panels"][0]["targets"][0].update(rawQuery=False), "rawQuery"),
        (lambda d: d["panels"][0]["targets"][0].update(query="DROP DATABASE cityops"), "not a SELECT"),
    ],
)
def test_validate_reports_problems(mutate: Any, expected: str) -> None:
    d = _minimal_dashboard()
    mutate(d)
    problems = dash.validate(d)
    assert any(expected in p for p in problems), problems


def test_validate_all_reports_duplicate_uid() -> None:
    d = _minimal_dashboard()
    problems = dash.validate_all([d, copy.deepcopy(d)])
    assert any("duplicate uid" in p for p in problems)


# ----------------------------------------------------------------- panel_queries

START = datetime(2024, 5, 1, 8, 0, tzinfo=timezone.utc)
END = datetime(2024, 5, 1, 9, 30, tzinfo=timezone.utc)


def test_render_query_macros() -> None:
    q = dash.render_query(
        'SELECT sum("taps_in") FROM "traffic_ridership" WHERE "mode" =~ /^$mode$/ AND "line" = \'${line}\' '
        "AND $timeFilter GROUP BY time($__interval) -- $__interval_ms [[mode]] $__from $__to $unknown",
        start=START,
        end=END,
        interval="5m",
        variables={"mode": ".*", "line": "L1"},
    )
    assert "time >= '2024-05-01T08:00:00Z' AND time <= '2024-05-01T09:30:00Z'" in q
    assert "GROUP BY time(5m)" in q
    assert "/^.*$/" in q and "'L1'" in q
    assert "300000" in q and "[[" not in q
    assert str(int(START.timestamp() * 1000)) in q and str(int(END.timestamp() * 1000)) in q
    assert "$unknown" in q


def test_render_query_naive_datetime_is_utc_and_bad_interval_fails() -> None:
    q = dash.render_query("$timeFilter", start=datetime(2024, 1, 1), end="2024-01-01T01:00:00Z")
    assert q == "time >= '2024-01-01T00:00:00Z' AND time <= '2024-01-01T01:00:00Z'"
    with pytest.raises(ValueError, match="interval"):
        dash.render_query("x", start=START, end=END, interval="one minute")


def test_panel_queries_render_every_influx_query(dashboards: list[dict[str, Any]]) -> None:
    for d in dashboards:
        queries = dash.panel_queries(d, start=START, end=END)
        for title, q in queries:
            # No macro or variable left ("$/" is a regex anchor, not a variable).
            assert not re.search(r"\$\w|\$\{|\[\[", q), (d["uid"], title, q)
            assert "time >= '2024-05-01T08:00:00Z' AND time <= '2024-05-01T09:30:00Z'" in q or q.startswith("SHOW")
        if d["uid"] == "cityops-platform":
            titles = [t for t, _ in queries]
            assert titles == ["Stream quality (InfluxDB)"]  # the rest are Prometheus panels
    traffic = next(d for d in dashboards if d["uid"] == "cityops-traffic")
    rendered = dict(dash.panel_queries(traffic, start=START, end=END, interval="1m"))
    assert rendered["Taps in by line"] == (
        'SELECT sum("taps_in") FROM "traffic_ridership" WHERE "mode" =~ /^.*$/ AND "line" =~ /^.*$/ '
        "AND time >= '2024-05-01T08:00:00Z' AND time <= '2024-05-01T09:30:00Z' "
        'GROUP BY time(1m), "line" fill(none)'
    )
    assert rendered["variable: line"] == (
        'SHOW TAG VALUES FROM "traffic_ridership" WITH KEY = "line" WHERE "mode" =~ /^.*$/'
    )


def test_single_value_variable_renders_first_value() -> None:
    d = _minimal_dashboard()
    d["panels"][0]["targets"][0]["query"] = (
        'SELECT mean("speed_kmh") FROM "traffic_road" WHERE "segment" = \'$seg\' AND $timeFilter'
    )
    d["templating"] = {
        "list": [{"name": "seg", "type": "custom", "query": "S1,S2", "multi": False, "includeAll": False,
                  "options": [{"text": "S1", "value": "S1"}, {"text": "S2", "value": "S2"}]}]
    }
    [(title, q)] = dash.panel_queries(d, start=START, end=END)
    assert title == "speed" and "\"segment\" = 'S1'" in q


# ----------------------------------------------------------------- push (fake Grafana)


class _FakeGrafana(BaseHTTPRequestHandler):
    received: list[tuple[str, str, dict[str, Any], str | None]] = []
    folders: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _reply(self, body: Any, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.received.append(("GET", self.path, {}, self.headers.get("Authorization")))
        if self.path.startswith("/api/folders"):
            self._reply(self.folders)
        else:
            self._reply({"message": "not found"}, 404)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        self.received.append(("POST", self.path, body, self.headers.get("Authorization")))
        if self.path == "/api/folders":
            folder = {"id": 7, "uid": body.get("uid"), "title": body["title"]}
            self.folders.append(folder)
            self._reply(folder)
        elif self.path == "/api/dashboards/db":
            uid = body["dashboard"]["uid"]
            self._reply({"id": 1, "uid": uid, "url": f"/d/{uid}", "status": "success", "version": 1})
        else:
            self._reply({"message": "not found"}, 404)


@pytest.fixture
def fake_grafana() -> Any:
    _FakeGrafana.received = []
    _FakeGrafana.folders = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeGrafana)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_push_creates_folder_and_overwrites_dashboards(
    fake_grafana: str, dashboards: list[dict[str, Any]]
) -> None:
    results = dash.push(dashboards, fake_grafana, "glsa_test_token", "CityOps")
    assert [r["uid"] for r in results] == [d["uid"] for d in dashboards]
    posts = [r for r in _FakeGrafana.received if r[0] == "POST"]
    assert posts[0][1] == "/api/folders" and posts[0][2] == {"title": "CityOps", "uid": "cityops"}
    pushed = [r for r in posts if r[1] == "/api/dashboards/db"]
    assert len(pushed) == len(dashboards)
    for (_, _, body, auth), original in zip(pushed, dashboards, strict=True):
        assert auth == "Bearer glsa_test_token"
        assert body["overwrite"] is True
        assert body["folderUid"] == "cityops"
        assert body["dashboard"]["uid"] == original["uid"]
        assert body["dashboard"]["id"] is None
        assert body["dashboard"]["panels"] == original["panels"]


def test_push_reuses_existing_folder_with_basic_auth(fake_grafana: str) -> None:
    _FakeGrafana.folders = [{"id": 3, "uid": "ops", "title": "CityOps"}]
    dash.push([_minimal_dashboard()], fake_grafana, ("admin", "secret"), "CityOps")
    paths = [(m, p) for m, p, _, _ in _FakeGrafana.received]
    assert ("POST", "/api/folders") not in paths
    body, auth = next((b, a) for m, p, b, a in _FakeGrafana.received if p == "/api/dashboards/db")
    assert body["folderUid"] == "ops"
    assert auth is not None and auth.startswith("Basic ")


# ----------------------------------------------------------------- compose, Dockerfile, Kafka, InfluxDB


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _yaml(COMPOSE)


def test_compose_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "kafka",
        "influxdb",
        "prometheus",
        "alertmanager",
        "grafana",
        "cityops-worker",
        "cityops-simulator",
    }
    assert "zookeeper" not in COMPOSE.read_text()
    assert compose["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_compose_images_pinned_in_one_place(compose: dict[str, Any]) -> None:
    pinned = compose["x-versions"]
    for name, image in pinned.items():
        assert ":" in image and not image.endswith(":latest"), f"{name} image {image} is not pinned"
    assert pinned["influxdb"].startswith("influxdb:1.8")
    assert pinned["kafka"].startswith("apache/kafka:")
    for name, svc in compose["services"].items():
        assert svc["image"] in pinned.values(), f"{name}: image not taken from x-versions"
    # Each image tag is written once in the file (the anchors), never repeated inline.
    text = COMPOSE.read_text()
    for image in pinned.values():
        assert text.count(image) == 1, image


def test_compose_healthchecks_and_ordering(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        hc = svc.get("healthcheck")
        has_check = bool(hc) and not hc.get("disable") and hc.get("test")
        deps = svc.get("depends_on") or {}
        assert has_check or deps, f"{name}: neither healthcheck nor depends_on"
        assert isinstance(deps, dict), f"{name}: depends_on must use conditions"
        for dep, cond in deps.items():
            assert cond == {"condition": "service_healthy"}, f"{name} -> {dep}"
            hc_dep = services[dep].get("healthcheck") or {}
            assert hc_dep.get("test") and not hc_dep.get("disable"), f"{dep} has no healthcheck to wait on"


def test_compose_worker_and_grafana(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker, sim = services["cityops-worker"], services["cityops-simulator"]
    assert worker["build"]["dockerfile"] == "deploy/Dockerfile"
    assert worker["command"] == ["worker"] and sim["command"][:3] == ["simulate", "--to", "kafka"]
    assert all(k.startswith("CITYOPS_") for k in worker["environment"])
    mounts = services["grafana"]["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    assert "./dashboards:/var/lib/grafana/dashboards:ro" in mounts
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "./deploy/alertmanager:/etc/alertmanager:ro" in services["alertmanager"]["volumes"]


def _dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions of deploy/Dockerfile by stage name: [(INSTRUCTION, arguments)], continuations joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = stages.setdefault("", [])
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            name = re.search(r"\bAS\s+(\S+)", rest, re.I)
            current = stages.setdefault(name.group(1) if name else f"stage{len(stages)}", [])
        current.append((word.upper(), rest.strip()))
    return stages


def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11[\w.-]*slim", text, re.M)
    stages = _dockerfile_stages()
    assert list(stages) == ["", "builder", "runtime"], "a builder stage, then the runtime stage"
    builder = " ".join(args for ins, args in stages["builder"] if ins == "RUN")
    # The builder makes the wheel exactly as `make test-wheel` does (and that wheel is what CI tests).
    assert "pip wheel --no-deps --wheel-dir /wheels ." in builder
    assert "pip wheel -q --no-deps --wheel-dir \"$WORK/wheels\" ." in (REPO / "scripts" / "test-wheel.sh").read_text()
    runtime = stages["runtime"]
    install = " ".join(args for ins, args in runtime if ins == "RUN")
    assert "pip install --no-index --find-links /wheels cityops" in install
    assert not re.search(r"pip install[^&]*(\s-e\s|\s\.(\s|$))", install), "runtime must not install the source tree"
    assert not [a for i, a in runtime if i == "COPY" and "--from" not in a], "no source tree in the runtime image"
    users = [a for i, a in runtime if i == "USER"]
    assert users and users[-1] not in ("root", "0")
    env = " ".join(a for i, a in runtime if i == "ENV")
    assert "CITYOPS_WEB_HOST=0.0.0.0" in env, "the worker must listen on all interfaces in a container"
    assert "HEALTHCHECK" in text and "/healthz" in text


def test_dockerfile_copies_what_the_wheel_needs() -> None:
    """The builder copies src/ and every folder the package-data symlinks point into, beside it as in git."""
    copies = {args.split()[0] for ins, args in _dockerfile_stages()["builder"] if ins == "COPY"}
    data = REPO / "src" / "cityops" / "data"
    links = [p for p in data.iterdir() if p.is_symlink()]
    assert {p.name for p in links} == {"agents", "streams", "dashboards"}
    for link in links:
        target = link.resolve().relative_to(REPO)
        assert str(target) in copies, f"Dockerfile builder does not COPY {target} (needed by {link.name})"
    assert {"pyproject.toml", "src"} <= copies
    for src in copies:
        assert (REPO / src).exists(), f"COPY {src}: not in the repository"
    ignore = (REPO / ".dockerignore").read_text().split()
    for needed in copies:
        assert needed not in ignore and needed + "/" not in ignore


# ----------------------------------------------------------------- compose: Compose Specification, settings


ENV_EXAMPLE = REPO / ".env.example"
_INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=value: {line!r}"
            out[key.strip()] = value.strip()
    return out


def _interpolate(value: Any, variables: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} (docs: compose file interpolation)."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in variables and (variables[name] or op is None or not op.startswith(":")):
            return variables[name]
        if op and op.endswith("?"):
            raise AssertionError(f"${{{name}}} is required ({arg}) but not set in {ENV_EXAMPLE.name}")
        return arg if op and op.endswith("-") else ""

    return _INTERPOLATION.sub(sub, str(value)).replace("$$", "$")


def _image_env() -> dict[str, str]:
    """CITYOPS_* defaults the runtime image sets with ENV (compose's environment overrides them)."""
    out = {}
    for ins, args in _dockerfile_stages()["runtime"]:
        if ins == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", args):
                out[key] = value
    return {k: v for k, v in out.items() if k.startswith("CITYOPS_")}


def _service_env(compose: dict[str, Any], name: str) -> dict[str, str]:
    svc = compose["services"][name]
    variables = _env_file(ENV_EXAMPLE)
    env = dict(_image_env())
    env.update({k: _interpolate(v, variables) for k, v in (svc.get("environment") or {}).items()})
    assert "env_file" not in svc, "secrets come through ${VAR} interpolation from .env, one by one"
    return env


def _cityops_services(compose: dict[str, Any]) -> list[str]:
    return [n for n, svc in compose["services"].items() if svc.get("build") or "cityops" in str(svc.get("image"))]


def test_compose_follows_the_compose_specification() -> None:
    from compose_spec import PyCompose

    text = COMPOSE.read_text()
    parsed = PyCompose.from_yaml(text)  # raises ValueError naming the path of anything the spec does not allow
    parsed.validate()  # volumes, networks, configs and secrets used by services are declared
    # No top-level `name` (Compose v1 rejects it); the project name, which prefixes the volumes that hold
    # the state, is pinned by COMPOSE_PROJECT_NAME in the env file instead.
    assert "name" not in _yaml(COMPOSE), "a top-level name breaks Compose v1: set COMPOSE_PROJECT_NAME in .env"
    assert _env_file(ENV_EXAMPLE).get("COMPOSE_PROJECT_NAME") == "cityops"
    assert "version" not in _yaml(COMPOSE), "the top-level version is obsolete in the Compose Specification"


def test_compose_secrets_come_from_env_file(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    used = {m.group(1) for m in _INTERPOLATION.finditer(text)}
    example = {k: v for k, v in _env_file(ENV_EXAMPLE).items() if k != "COMPOSE_PROJECT_NAME"}  # compose's own
    assert used == set(example), f"{ENV_EXAMPLE.name} must define exactly the ${{VAR}}s docker-compose.yml uses"
    assert "CITYOPS_PSEUDONYM_KEY" in used and "GRAFANA_ADMIN_PASSWORD" in used
    for name in used:  # compose stops naming the variable when .env lacks it
        assert re.search(rf"\$\{{{name}:\?[^}}]+\}}", text), f"${{{name}}} must be required (:?message)"
    gitignore = (REPO / ".gitignore").read_text().split()
    assert ".env" in gitignore, ".env holds the real secrets: it must not be committed"
    # No secret is written into the compose file itself.
    for svc in compose["services"].values():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|TOKEN|SECRET|_KEY$", key):
                assert str(value).startswith("${"), f"{key} must come from .env"


def test_compose_worker_environment_passes_check_config(compose: dict[str, Any]) -> None:
    """`cityops check-config` with each worker service's environment: no unknown, missing or bad setting."""
    from cityops.checkconfig import check_config
    from tests.installed_plugins import plugin_rules

    workers = [n for n in _cityops_services(compose) if compose["services"][n]["command"][0] == "worker"]
    assert workers == ["cityops-worker"]
    for name in workers:
        env = _service_env(compose, name)
        report = check_config(env)
        assert report.problems == [], f"{name}: {report.problems}"
        assert any(line.startswith("source registry: ") and "enforce" in line for line in report.lines)
        # (and the rules of agent plugins installed here, e.g. examples/cityops-parking)
        assert any(line.startswith(f"rules: {15 + plugin_rules()} from ") for line in report.lines), report.lines


def test_compose_other_cityops_services_use_only_known_variables(compose: dict[str, Any]) -> None:
    from cityops.cli import _address, build_parser
    from cityops.settings import unknown_variables

    others = [n for n in _cityops_services(compose) if compose["services"][n]["command"][0] != "worker"]
    assert others == ["cityops-simulator"]
    for name in others:
        env = _service_env(compose, name)
        assert unknown_variables(env) == [], name
        args = build_parser().parse_args(compose["services"][name]["command"])
        bootstrap, setting = _address(args.bootstrap, "--bootstrap", "CITYOPS_KAFKA_BOOTSTRAP", "unset:0", env)
        assert (bootstrap, setting) == ("kafka:9092", "CITYOPS_KAFKA_BOOTSTRAP"), f"{name} must reach the broker"


@pytest.mark.parametrize(("change", "named"), [
    ({"CITYOPS_KAFKA_BROKERS": "kafka:9092"}, "CITYOPS_KAFKA_BROKERS: unknown setting"),
    ({"CITYOPS_PSEUDONYM_KEY": None}, "CITYOPS_PSEUDONYM_KEY: is required"),
    ({"CITYOPS_SOURCE_REGISTRY": "/nonexistent/sources.json"}, "CITYOPS_SOURCE_REGISTRY"),
    ({"CITYOPS_UNKNOWN_SOURCES": "warn"}, "CITYOPS_UNKNOWN_SOURCES"),
])
def test_compose_environment_check_fails_naming_the_setting(compose: dict[str, Any], change: dict[str, Any],
                                                            named: str) -> None:
    """The compose check above would catch today's kinds of mistakes (the old file's CITYOPS_KAFKA_BROKERS)."""
    from cityops.checkconfig import check_config

    env = _service_env(compose, "cityops-worker")
    for key, value in change.items():
        if value is None:
            env.pop(key)
        else:
            env[key] = value
    report = check_config(env)
    assert any(named in p for p in report.problems), report.problems


def test_compose_influxdb_credentials_agree(compose: dict[str, Any]) -> None:
    """InfluxDB runs with authentication; the worker writes as the user compose creates, Grafana reads as
    the read-only one, each with the password of the same .env variable."""
    services = compose["services"]
    influx = services["influxdb"]["environment"]
    assert influx["INFLUXDB_HTTP_AUTH_ENABLED"] == "true"
    worker = services["cityops-worker"]["environment"]
    assert worker["CITYOPS_INFLUX_USERNAME"] == influx["INFLUXDB_USER"]
    assert worker["CITYOPS_INFLUX_PASSWORD"] == influx["INFLUXDB_USER_PASSWORD"]
    assert worker["CITYOPS_INFLUX_DATABASE"] == influx["INFLUXDB_DB"]
    ds = next(d for d in _yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "cityops.yml")["datasources"]
              if d["uid"] == "cityops-influx")
    assert ds["user"] == influx["INFLUXDB_READ_USER"]
    variable = ds["secureJsonData"]["password"].removeprefix("$")
    assert services["grafana"]["environment"][variable] == influx["INFLUXDB_READ_USER_PASSWORD"]
    # The health check logs in as the read user with the container's own copy of its password.
    assert "-username " + influx["INFLUXDB_READ_USER"] in " ".join(services["influxdb"]["healthcheck"]["test"])
    assert "$$INFLUXDB_READ_USER_PASSWORD" in " ".join(services["influxdb"]["healthcheck"]["test"])


def _container_ports(svc: dict[str, Any]) -> set[int]:
    ports = {int(str(p).split(":")[-1].split("/")[0]) for p in svc.get("ports") or []}
    return ports | {int(str(p).split("/")[0]) for p in svc.get("expose") or []}


def _host_port(url_or_target: str) -> tuple[str, int]:
    rest = url_or_target.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = rest.rpartition(":")
    return host, int(port)


def test_deploy_targets_match_compose_services_and_ports(compose: dict[str, Any]) -> None:
    """Prometheus scrape and Alertmanager targets, Grafana datasources and the worker's own URLs name a
    compose service and a port that service listens on."""
    services = compose["services"]
    worker_env = _service_env(compose, "cityops-worker")
    services_ports = {name: _container_ports(svc) for name, svc in services.items()}
    services_ports["cityops-worker"].add(int(worker_env["CITYOPS_WEB_PORT"]))
    prom = _yaml(PROM_DIR / "prometheus.yml")
    targets: list[tuple[str, str]] = []
    for job in prom["scrape_configs"]:
        for sc in job.get("static_configs", []):
            targets += [(f"prometheus job {job['job_name']}", t) for t in sc["targets"]]
    for am in prom["alerting"]["alertmanagers"]:
        for sc in am["static_configs"]:
            targets += [("prometheus alerting", t) for t in sc["targets"]]
    grafana = _yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "cityops.yml")
    targets += [(f"grafana datasource {d['uid']}", d["url"]) for d in grafana["datasources"]]
    targets += [(key, worker_env[key]) for key in
                ("CITYOPS_KAFKA_BOOTSTRAP", "CITYOPS_INFLUX_URL", "CITYOPS_ALERTMANAGER_URL")]
    for where, target in targets:
        host, port = _host_port(target)
        if where == "prometheus job prometheus":
            assert (host, port) == ("localhost", 9090)  # Prometheus scrapes itself inside its container
            assert 9090 in services_ports["prometheus"]
            continue
        assert host in services, f"{where}: {target}: no compose service {host!r}"
        assert port in services_ports[host], f"{where}: {target}: service {host} listens on {services_ports[host]}"
    worker_job = next(j for j in prom["scrape_configs"] if j["job_name"] == "cityops-worker")
    assert worker_job["static_configs"][0]["targets"] == [f"cityops-worker:{worker_env['CITYOPS_WEB_PORT']}"]
    assert worker_env["CITYOPS_WEB_HOST"] == "0.0.0.0", "Prometheus scrapes the worker from another container"
    # Grafana's dashboard provider reads the folder compose mounts, which holds the repository's dashboards.
    provider = _yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "cityops.yml")["providers"][0]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in services["grafana"]["volumes"]}
    assert mounts[provider["options"]["path"]] == "./dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"


def test_kafka_topics() -> None:
    topics = {t["name"]: t for t in _yaml(DEPLOY / "kafka" / "topics.yml")["topics"]}
    assert {n: t["partitions"] for n, t in topics.items()} == {
        "traffic.card-taps": 6,
        "traffic.road-detectors": 3,
        "health.card-events": 3,
        "food.trace-events": 1,  # lot histories are read in order
        "cityops.dead-letter": 3,
        "cityops.alerts": 1,
    }
    day_ms = 86_400_000
    assert int(topics["cityops.dead-letter"]["configs"]["retention.ms"]) == 14 * day_ms
    assert int(topics["cityops.alerts"]["configs"]["retention.ms"]) == 30 * day_ms
    assert topics["cityops.alerts"]["configs"]["cleanup.policy"] == "delete"


def test_influx_config_file_is_the_module_template() -> None:
    assert (DEPLOY / "influxdb" / "influxdb.conf").read_text() == INFLUX_CONFIG_TEMPLATE
    for placeholder in ("{data_dir}", "{http_bind}", "{bind_address}"):
        assert placeholder in INFLUX_CONFIG_TEMPLATE


def test_render_influx_config(tmp_path: Path) -> None:
    text = render_influx_config(tmp_path / "influx", 18086, 18088)
    assert 'bind-address = "127.0.0.1:18086"' in text
    assert 'bind-address = "127.0.0.1:18088"' in text
    assert f'dir = "{(tmp_path / "influx").as_posix()}/meta"' in text
    assert "{" not in text and "}" not in text
    with pytest.raises(ValueError, match="two free ports"):
        render_influx_config(tmp_path, 18086, 18086)
    with pytest.raises(ValueError, match="http_port"):
        render_influx_config(tmp_path, 0, 18088)


def test_influxd_accepts_rendered_config(tmp_path: Path) -> None:
    influxd = shutil.which("influxd")
    if influxd is None:
        pytest.fail("influxd is not installed: apt-get install influxdb")
    conf = tmp_path / "influxdb.conf"
    conf.write_text(render_influx_config(tmp_path / "data", 18086, 18088))
    out = _run(influxd, "config", "-config", str(conf))
    assert 'bind-address = "127.0.0.1:18086"' in out.stdout
    assert f'dir = "{(tmp_path / "data").as_posix()}/wal"' in out.stdout
