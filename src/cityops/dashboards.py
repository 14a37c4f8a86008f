"""Grafana dashboards as code: load, validate, render panel queries, push to Grafana."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cityops.catalogue import Measurement, measurements

__all__ = [
    "INFLUX_DS_UID",
    "MEASUREMENTS",
    "PROM_DS_UID",
    "PROMETHEUS_METRICS",
    "PROVISIONED_DATASOURCES",
    "Measurement",
    "check_influxql",
    "load_dashboards",
    "panel_queries",
    "push",
    "render_query",
    "validate",
    "validate_all",
]

# Datasource uids pinned in deploy/grafana/provisioning/datasources/cityops.yml.
INFLUX_DS_UID = "cityops-influx"
PROM_DS_UID = "cityops-prom"
PROVISIONED_DATASOURCES: dict[str, str] = {
    INFLUX_DS_UID: "influxdb",
    PROM_DS_UID: "prometheus",
    "cityops-alertmanager": "alertmanager",
}
# Grafana's own pseudo datasources (built-in annotations, mixed panels).
_BUILTIN_DS_UIDS = {"grafana", "-- Grafana --", "-- Mixed --", "-- Dashboard --"}


# The catalogue of what the worker writes (cityops.catalogue: derived from the KPI declarations and the
# alert point). Dashboards may query only these measurements, tags and fields.
MEASUREMENTS: dict[str, Measurement] = measurements()

# Metric families the worker exposes (prometheus-client names; histograms add suffixes).
PROMETHEUS_METRICS: frozenset[str] = frozenset(
    {
        "cityops_events_total",
        "cityops_dead_letters_total",
        "cityops_sink_pending_points",
        "cityops_sink_writes_total",
        "cityops_sink_write_errors_total",
        "cityops_backpressure",
        "cityops_checkpoint_duration_seconds",
        "cityops_checkpoint_duration_seconds_bucket",
        "cityops_checkpoint_duration_seconds_sum",
        "cityops_checkpoint_duration_seconds_count",
        "cityops_checkpoint_age_seconds",
        "cityops_watermark_lag_seconds",
        "cityops_alerts_active",
        "cityops_alert_notifications_total",
        "cityops_build_info",
        # Prometheus' own series used by the platform dashboard.
        "up",
        "ALERTS",
        "ALERTS_FOR_STATE",
    }
)

# Grafana's dashboard schema version for the Grafana pinned in docker-compose.yml.
SCHEMA_VERSION = 39
_GRID_COLUMNS = 24


# --------------------------------------------------------------------------- loading


def load_dashboards(directory: str | Path) -> list[dict[str, Any]]:
    """Read every ``*.json`` dashboard in ``directory`` (sorted by file name).

    Each dict gets no extra keys; a file that is not a JSON object raises ``ValueError``
    naming the file.
    """
    out: list[dict[str, Any]] = []
    for path in sorted(Path(directory).glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"dashboard file={path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"dashboard file={path} must hold a JSON object")
        out.append(data)
    return out


# --------------------------------------------------------------------------- walking


def _iter_panels(panels: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    """Panels in order, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        nested = panel.get("panels")
        if isinstance(nested, list):
            yield from _iter_panels(nested)


def _ds_uid(ds: Any) -> str | None:
    if isinstance(ds, Mapping):
        uid = ds.get("uid")
        return str(uid) if uid is not None else None
    if isinstance(ds, str):
        return ds  # legacy: datasource by name
    return None


def _target_ds_uid(target: Mapping[str, Any], panel: Mapping[str, Any]) -> str | None:
    return _ds_uid(target.get("datasource")) or _ds_uid(panel.get("datasource"))


def _is_influx(uid: str | None) -> bool:
    return uid is not None and PROVISIONED_DATASOURCES.get(uid) == "influxdb"


def _is_prom(uid: str | None) -> bool:
    return uid is not None and PROVISIONED_DATASOURCES.get(uid) == "prometheus"


def _annotation_query(ann: Mapping[str, Any]) -> str | None:
    target = ann.get("target")
    if isinstance(target, Mapping) and target.get("query"):
        return str(target["query"])
    q = ann.get("query")
    return str(q) if q else None


def _variable_query(var: Mapping[str, Any]) -> str | None:
    q = var.get("query")
    if isinstance(q, Mapping):
        q = q.get("query")
    return str(q) if q else None


# --------------------------------------------------------------------------- InfluxQL check

_SELECT_RE = re.compile(
    r"""^\s*SELECT\s+(?P<select>.+?)\s+FROM\s+(?P<from>.+?)
        (?:\s+WHERE\s+(?P<where>.+?))?
        (?:\s+GROUP\s+BY\s+(?P<group>.+?))?
        (?:\s+fill\((?P<fill>[^)]*)\))?
        (?:\s+ORDER\s+BY\s+(?P<order>time(?:\s+(?:ASC|DESC))?))?
        (?:\s+LIMIT\s+(?P<limit>\d+))?
        (?:\s+SLIMIT\s+(?P<slimit>\d+))?
        (?:\s+tz\('[^']*'\))?
        \s*;?\s*$""",
    re.IGNORECASE | re.DOTALL | re.VERBOSE,
)
_SHOW_TAG_VALUES_RE = re.compile(
    r"""^\s*SHOW\s+TAG\s+VALUES\s+FROM\s+(?P<from>"[^"]+"|\w+)\s+WITH\s+KEY\s*=\s*(?P<key>"[^"]+"|\w+)
        (?:\s+WHERE\s+(?P<where>.+?))?\s*;?\s*$""",
    re.IGNORECASE | re.DOTALL | re.VERBOSE,
)
_INFLUX_FUNCS = {
    "count", "distinct", "integral", "mean", "median", "mode", "spread", "stddev", "sum",
    "bottom", "first", "last", "max", "min", "percentile", "sample", "top",
    "abs", "ceil", "floor", "round", "sqrt", "derivative", "non_negative_derivative",
    "difference", "non_negative_difference", "moving_average", "cumulative_sum", "elapsed",
    "time", "now",
}  # fmt: skip
_KEYWORDS = {"as", "and", "or", "not", "true", "false", "asc", "desc", "null", "none", "previous", "linear"}
_STRING_LIT = re.compile(r"'(?:[^'\\]|\\.)*'")
_REGEX_LIT = re.compile(r"/(?:[^/\\]|\\.)*/")
_DURATION = re.compile(r"\b\d+(?:ns|u|µ|ms|s|m|h|d|w)\b")
_ALIAS = re.compile(r"\bAS\s+(\"[^\"]+\"|\w+)", re.IGNORECASE)
_QUOTED_IDENT = re.compile(r'"([^"]+)"')
_BARE_IDENT = re.compile(r"(?<![\w$.])([A-Za-z_]\w*)\b(?!\s*\()")
_GRAFANA_VAR = re.compile(r"\$\{[^}]+\}|\$__\w+|\$\w+|\[\[\w+\]\]")


def _strip_literals(text: str) -> str:
    text = _STRING_LIT.sub("''", text)
    text = _REGEX_LIT.sub("//", text)
    text = _GRAFANA_VAR.sub(" ", text)
    return _DURATION.sub(" ", text)


def _identifiers(expr: str) -> set[str]:
    expr = _strip_literals(expr)
    names = set(_QUOTED_IDENT.findall(expr))
    expr = _QUOTED_IDENT.sub(" ", expr)
    for word in _BARE_IDENT.findall(expr):
        if word.lower() not in _KEYWORDS and word.lower() not in _INFLUX_FUNCS:
            names.add(word)
    return names


def _unquote(name: str) -> str:
    name = name.strip()
    return name[1:-1] if len(name) >= 2 and name[0] == name[-1] == '"' else name


def check_influxql(query: str, measurements: Mapping[str, Measurement] | None = None) -> list[str]:
    """Problems of one InfluxQL dashboard query against the ``MEASUREMENTS`` catalogue (or ``measurements``:
    with the installed plugins' KPIs, ``cityops.plugins.catalogue``).

    A minimal parser for the subset the dashboards use: ``SELECT … FROM one measurement
    [WHERE …] [GROUP BY …] [fill()] [ORDER BY time] [LIMIT n]`` and
    ``SHOW TAG VALUES FROM m WITH KEY = k [WHERE …]``. Subqueries, regex measurements and
    multi-statement queries are reported, not parsed.
    """
    catalogue = MEASUREMENTS if measurements is None else measurements
    problems: list[str] = []
    text = query.strip()
    if not text:
        return ["empty query"]
    if ";" in text.rstrip(";"):
        return ["more than one statement"]

    m = _SHOW_TAG_VALUES_RE.match(text)
    if m:
        meas = _unquote(m["from"])
        if meas not in catalogue:
            return [f"unknown measurement {meas!r}"]
        key = _unquote(m["key"])
        if key not in catalogue[meas].tags:
            problems.append(f"{key!r} is not a tag of {meas}")
        if m["where"]:
            problems += _check_names(_identifiers(m["where"]), meas, where=True, catalogue=catalogue)
        return problems

    m = _SELECT_RE.match(text)
    if not m:
        return ["not a SELECT/SHOW TAG VALUES statement this checker understands"]
    source = m["from"].strip()
    if source.startswith("(") or "select" in source.lower():
        return ["subqueries are not supported in dashboards"]
    meas = _unquote(source.split(".")[-1]) if not source.startswith('"') else _unquote(source)
    if meas not in catalogue:
        return [f"unknown measurement {meas!r}"]

    select = _ALIAS.sub(" ", m["select"])
    if select.strip() == "*":
        problems.append("SELECT * is not allowed: name the fields")
    else:
        names = _identifiers(select)
        problems += _check_names(names, meas, where=False, catalogue=catalogue)
        if not names & catalogue[meas].fields:
            problems.append("SELECT names no field (InfluxDB returns nothing for tags alone)")

    where = m["where"] or ""
    if "$timeFilter" not in where:
        problems.append("WHERE lacks $timeFilter (the query would ignore the dashboard time range)")
    problems += _check_names(_identifiers(where), meas, where=True, catalogue=catalogue)

    group = m["group"] or ""
    for part in (p.strip() for p in _split_top(group)):
        if not part:
            continue
        if part.lower().startswith("time("):
            if not re.fullmatch(r"time\(\s*(\$__interval|\$interval|\d+[smhdw])\s*\)", part, re.I):
                problems.append(f"GROUP BY {part}: use time($__interval)")
        elif part == "*":
            continue
        else:
            tag = _unquote(part)
            if tag not in catalogue[meas].tags:
                problems.append(f"GROUP BY {tag!r}: not a tag of {meas}")
    return problems


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _check_names(names: set[str], meas: str, *, where: bool,
                 catalogue: Mapping[str, Measurement] | None = None) -> list[str]:
    catalogue = MEASUREMENTS if catalogue is None else catalogue
    known = catalogue[meas].tags | catalogue[meas].fields
    if where:
        known = known | {"time"}
    return [f"{name!r} is neither a field nor a tag of {meas}" for name in sorted(names - known)]


def _check_promql(expr: str) -> list[str]:
    problems = []
    names = set(re.findall(r"\bcityops_\w+", expr))
    for name in sorted(names - PROMETHEUS_METRICS):
        problems.append(f"unknown metric {name!r}")
    if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
        problems.append("unbalanced brackets")
    return problems


# --------------------------------------------------------------------------- validation


def validate(
    dashboard: Mapping[str, Any],
    *,
    seen_uids: set[str] | None = None,
    datasources: Mapping[str, str] = PROVISIONED_DATASOURCES,
    measurements: Mapping[str, Measurement] | None = None,
) -> list[str]:
    """Problems found in one dashboard (an empty list means it is fine); ``measurements``: the catalogue its
    InfluxQL queries are checked against (default ``MEASUREMENTS``, the built-in one).

    Checks: uid present (and not already in ``seen_uids``, which is updated, so pass the
    same set across a folder to check uniqueness), title, schemaVersion, panel ids unique,
    titles on panels, gridPos inside the 24-column grid and not overlapping, every panel and
    target datasource is a provisioned uid, every InfluxQL target/annotation/variable query
    passes :func:`check_influxql`, every Prometheus expr names known metrics.
    """
    problems: list[str] = []
    uid = dashboard.get("uid")
    title = dashboard.get("title")
    where = f"dashboard {uid or title or '?'}"
    if not uid or not isinstance(uid, str):
        problems.append(f"{where}: missing uid")
    elif len(uid) > 40 or not re.fullmatch(r"[A-Za-z0-9_-]+", uid):
        problems.append(f"{where}: uid must be ≤40 chars of [A-Za-z0-9_-]")
    elif seen_uids is not None:
        if uid in seen_uids:
            problems.append(f"{where}: duplicate uid")
        seen_uids.add(uid)
    if not title or not isinstance(title, str):
        problems.append(f"{where}: missing title")
    if dashboard.get("id") is not None:
        problems.append(f"{where}: id must be null (Grafana assigns it; a fixed id breaks import)")
    if dashboard.get("schemaVersion") != SCHEMA_VERSION:
        problems.append(f"{where}: schemaVersion {dashboard.get('schemaVersion')} != {SCHEMA_VERSION}")

    def ds_problem(ctx: str, ds: Any) -> list[str]:
        uid_ = _ds_uid(ds)
        if uid_ is None:
            return [f"{ctx}: no datasource uid"]
        if uid_ in _BUILTIN_DS_UIDS:
            return []
        if uid_ not in datasources:
            return [f"{ctx}: datasource uid {uid_!r} is not provisioned"]
        if isinstance(ds, Mapping) and ds.get("type") not in (None, datasources[uid_]):
            return [f"{ctx}: datasource {uid_!r} has type {datasources[uid_]!r}, not {ds.get('type')!r}"]
        return []

    panels = dashboard.get("panels")
    if not isinstance(panels, list) or not panels:
        problems.append(f"{where}: no panels")
        panels = []
    ids: set[Any] = set()
    boxes: list[tuple[str, int, int, int, int]] = []
    for panel in _iter_panels(panels):
        ptitle = panel.get("title") or ""
        ctx = f"{where} panel {panel.get('id')} {ptitle!r}"
        pid = panel.get("id")
        if not isinstance(pid, int):
            problems.append(f"{ctx}: id must be an integer")
        elif pid in ids:
            problems.append(f"{ctx}: duplicate panel id {pid}")
        ids.add(pid)
        if not ptitle and panel.get("type") != "text":
            problems.append(f"{ctx}: missing title")
        problems += _grid_problems(ctx, panel.get("gridPos"), boxes)
        if panel.get("type") == "row":
            continue
        if panel.get("type") == "text" and not panel.get("targets"):
            continue
        problems += ds_problem(ctx, panel.get("datasource"))
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{ctx}: no targets")
        refids: set[str] = set()
        for t in targets:
            tctx = f"{ctx} target {t.get('refId')}"
            if t.get("refId") in refids:
                problems.append(f"{tctx}: duplicate refId")
            refids.add(t.get("refId"))
            if "datasource" in t:
                problems += ds_problem(tctx, t["datasource"])
            ds_uid = _target_ds_uid(t, panel)
            if _is_influx(ds_uid):
                if not t.get("rawQuery"):
                    problems.append(f"{tctx}: InfluxQL targets must set rawQuery: true")
                q = t.get("query")
                if not q:
                    problems.append(f"{tctx}: no query")
                else:
                    problems += [f"{tctx}: {p}" for p in check_influxql(str(q), measurements)]
                    if "GROUP BY time(" in str(q) and "$__interval" not in str(q):
                        problems.append(f"{tctx}: GROUP BY time() should use $__interval")
            elif _is_prom(ds_uid):
                if not t.get("expr"):
                    problems.append(f"{tctx}: no expr")
                else:
                    problems += [f"{tctx}: {p}" for p in _check_promql(str(t["expr"]))]

    for ann in (dashboard.get("annotations") or {}).get("list", []):
        actx = f"{where} annotation {ann.get('name')!r}"
        if ann.get("builtIn"):
            continue
        problems += ds_problem(actx, ann.get("datasource"))
        if _is_influx(_ds_uid(ann.get("datasource"))):
            q = _annotation_query(ann)
            if not q:
                problems.append(f"{actx}: no query")
            else:
                problems += [f"{actx}: {p}" for p in check_influxql(q, measurements)]

    for var in (dashboard.get("templating") or {}).get("list", []):
        vctx = f"{where} variable {var.get('name')!r}"
        if not var.get("name"):
            problems.append(f"{vctx}: missing name")
        if var.get("type") != "query":
            continue
        problems += ds_problem(vctx, var.get("datasource"))
        if _is_influx(_ds_uid(var.get("datasource"))):
            q = _variable_query(var)
            if not q:
                problems.append(f"{vctx}: no query")
            else:
                problems += [f"{vctx}: {p}" for p in check_influxql(q, measurements)]
    return problems


def _grid_problems(ctx: str, grid: Any, boxes: list[tuple[str, int, int, int, int]]) -> list[str]:
    if not isinstance(grid, Mapping):
        return [f"{ctx}: missing gridPos"]
    try:
        x, y, w, h = (int(grid[k]) for k in ("x", "y", "w", "h"))
    except (KeyError, TypeError, ValueError):
        return [f"{ctx}: gridPos needs integer x, y, w, h"]
    problems = []
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        problems.append(f"{ctx}: gridPos must have x,y ≥ 0 and w,h > 0")
    if x + w > _GRID_COLUMNS:
        problems.append(f"{ctx}: gridPos x+w = {x + w} > {_GRID_COLUMNS}")
    for other, ox, oy, ow, oh in boxes:
        if x < ox + ow and ox < x + w and y < oy + oh and oy < y + h:
            problems.append(f"{ctx}: gridPos overlaps {other}")
    boxes.append((ctx, x, y, w, h))
    return problems


# --------------------------------------------------------------------------- rendering

_INTERVAL_RE = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def _interval_ms(interval: str) -> int:
    m = _INTERVAL_RE.match(interval)
    if not m:
        raise ValueError(f"interval={interval!r}: use an InfluxQL duration like '1m' or '30s'")
    return int(m[1]) * _UNIT_MS[m[2]]


def _rfc3339(ts: datetime | str) -> str:
    if isinstance(ts, str):
        return ts
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)  # naive = UTC, like the sinks' timestamps
    ts = ts.astimezone(timezone.utc)
    frac = f".{ts.microsecond:06d}" if ts.microsecond else ""
    return ts.strftime("%Y-%m-%dT%H:%M:%S") + frac + "Z"


def _epoch_ms(ts: datetime | str) -> int:
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return int(ts.timestamp() * 1000)


def _variable_values(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """Value each template variable renders to: ``.*`` for multi/All, else its first value."""
    values: dict[str, str] = {}
    for var in (dashboard.get("templating") or {}).get("list", []):
        name = var.get("name")
        if not name:
            continue
        if var.get("includeAll") or var.get("multi"):
            values[name] = ".*"
            continue
        current = (var.get("current") or {}).get("value")
        if isinstance(current, list):
            current = current[0] if current else None
        if current and current != "$__all":
            values[name] = str(current)
            continue
        options = var.get("options") or []
        if options:
            values[name] = str(options[0].get("value", ""))
        elif var.get("type") == "custom" and var.get("query"):
            values[name] = str(var["query"]).split(",")[0].strip()
        else:
            values[name] = ".*"
    return values


def render_query(
    query: str,
    *,
    start: datetime | str,
    end: datetime | str,
    interval: str = "1m",
    variables: Mapping[str, str] | None = None,
) -> str:
    """Expand Grafana macros in an InfluxQL string the way the InfluxDB datasource does.

    ``$timeFilter`` → ``time >= '<start>' AND time <= '<end>'`` (RFC 3339, UTC);
    ``$__interval``/``$interval`` → ``interval``; ``$__interval_ms`` → milliseconds;
    ``$__from``/``$__to`` → epoch milliseconds; ``$var``, ``${var}``, ``${var:regex}`` and
    ``[[var]]`` → ``variables[var]``. Unknown variables are left as they are.
    """
    variables = variables or {}
    ms = _interval_ms(interval)
    builtins = {
        "timeFilter": f"time >= '{_rfc3339(start)}' AND time <= '{_rfc3339(end)}'",
        "__interval_ms": str(ms),
        "__interval": interval,
        "interval": interval,
        "__from": str(_epoch_ms(start)),
        "__to": str(_epoch_ms(end)),
    }

    def sub(m: re.Match[str]) -> str:
        name = m.group("b") or m.group("k") or m.group("s")
        if name in builtins:
            return builtins[name]
        if name in variables:
            return variables[name]
        return m.group(0)

    pattern = re.compile(r"\$\{(?P<b>\w+)(?::\w+)?\}|\[\[(?P<k>\w+)\]\]|\$(?P<s>\w+)")
    return pattern.sub(sub, query)


def panel_queries(
    dashboard: Mapping[str, Any],
    *,
    start: datetime | str,
    end: datetime | str,
    interval: str = "1m",
) -> list[tuple[str, str]]:
    """Every InfluxQL query of a dashboard, rendered, as ``(title, influxql)`` pairs.

    Covers panel targets (title = panel title, ``" [refId]"`` appended when a panel has
    several), annotation queries (``"annotation: <name>"``) and query variables
    (``"variable: <name>"``); hidden targets are skipped. ``start``/``end`` are datetimes
    (naive = UTC) or RFC 3339 strings; ``interval`` is an InfluxQL duration, default 1m
    (the window size the workers write).
    """
    variables = _variable_values(dashboard)

    def render(query: str) -> str:
        return render_query(query, start=start, end=end, interval=interval, variables=variables)

    out: list[tuple[str, str]] = []
    for panel in _iter_panels(dashboard.get("panels") or []):
        targets = [t for t in panel.get("targets") or [] if not t.get("hide")]
        influx = [t for t in targets if _is_influx(_target_ds_uid(t, panel)) and t.get("query")]
        for t in influx:
            title = str(panel.get("title", ""))
            if len(influx) > 1:
                title += f" [{t.get('refId')}]"
            out.append((title, render(str(t["query"]))))
    for ann in (dashboard.get("annotations") or {}).get("list", []):
        q = _annotation_query(ann)
        if q and _is_influx(_ds_uid(ann.get("datasource"))):
            out.append((f"annotation: {ann.get('name')}", render(q)))
    for var in (dashboard.get("templating") or {}).get("list", []):
        q = _variable_query(var)
        if var.get("type") == "query" and q and _is_influx(_ds_uid(var.get("datasource"))):
            out.append((f"variable: {var.get('name')}", render(q)))
    return out


# --------------------------------------------------------------------------- pushing


def _folder_uid(title: str) -> str:
    slug = re.sub(r"[^a-z0-9_-]+", "-", title.lower()).strip("-")
    return (slug or "cityops")[:40]


def push(
    dashboards: Sequence[Mapping[str, Any]],
    url: str,
    token_or_basic_auth: str | tuple[str, str] | None,
    folder: str | None = "CityOps",
    *,
    message: str = "cityops dashboards push",
    timeout: float = 10.0,
) -> list[dict[str, Any]]:
    """Create or overwrite ``dashboards`` in the Grafana at ``url`` (e.g. http://grafana:3000).

    ``token_or_basic_auth`` is a service-account token, a ``(user, password)`` pair, or None
    (credentials in the URL or anonymous). ``folder`` is a folder title or uid; it is created
    (uid derived from the title) when absent; None or "" means Grafana's General folder.
    Returns Grafana's answer per dashboard (``uid``, ``url``, ``version``, ``status``).
    ``timeout`` is in seconds.
    """
    from grafana_client import GrafanaApi

    api = GrafanaApi.from_url(url, credential=token_or_basic_auth, timeout=timeout)
    folder_uid: str | None = None
    if folder:
        existing = api.folder.get_all_folders() or []
        match = next(
            (f for f in existing if folder in (f.get("uid"), f.get("title"))),
            None,
        )
        if match is None:
            match = api.folder.create_folder(folder, uid=_folder_uid(folder))
        folder_uid = match["uid"]
    results: list[dict[str, Any]] = []
    for dash in dashboards:
        body: dict[str, Any] = {
            # id None: Grafana matches on uid, so the same file updates the same dashboard.
            "dashboard": {**dash, "id": None},
            "overwrite": True,
            "message": message,
        }
        if folder_uid:
            body["folderUid"] = folder_uid
        results.append(api.dashboard.update_dashboard(body))
    return results


def validate_all(dashboards: Iterable[Mapping[str, Any]]) -> list[str]:
    """Problems across a set of dashboards, including uid and title uniqueness."""
    seen: set[str] = set()
    titles: set[str] = set()
    problems: list[str] = []
    for d in dashboards:
        problems += validate(d, seen_uids=seen)
        t = d.get("title")
        if isinstance(t, str):
            if t in titles:
                problems.append(f"dashboard {d.get('uid')}: duplicate title {t!r}")
            titles.add(t)
    return problems
