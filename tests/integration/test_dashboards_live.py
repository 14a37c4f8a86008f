"""Every dashboard query against a real InfluxDB filled by a real worker: it runs, and KPI panels show data.

Prometheus panels have no Prometheus here: the metric names they use must be in the worker's /metrics instead.
"""

from __future__ import annotations

import heapq
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from cityops.dashboards import MEASUREMENTS, _is_prom, _iter_panels, _target_ds_uid, load_dashboards, panel_queries
from cityops.simulate import food
from cityops.simulate.run import Batcher, _event_ts, events
from tests.conftest import influx_query, influx_rows, produce

pytestmark = pytest.mark.integration

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
CST = timezone(timedelta(hours=8))
KPI_BOARDS = {"cityops-traffic", "cityops-health", "cityops-food", "cityops-overview"}
# Written only when an alert changes state; this run has no incidents, so those panels may be empty.
EVENT_DRIVEN = {"alerts"}
# Series Prometheus makes itself (scrape health, its own rule evaluation), not the worker.
PROMETHEUS_OWN = {"up", "ALERTS", "ALERTS_FOR_STATE"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "or", "and",
                "unless", "le", "inf", "nan"}


def measurement_of(query: str) -> str | None:
    m = re.search(r'\bFROM\s+"?(\w+)"?', query, re.IGNORECASE)
    return m.group(1) if m else None


def promql_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside {}, [] and by/without lists, not calls."""
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    expr = re.sub(r'"[^"]*"', "", expr)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[m.end():].lstrip()
        if rest.startswith("(") or m.group(0).lower() in PROMQL_WORDS:
            continue
        names.add(m.group(0))
    return names


def exposed(metrics_text: str) -> set[str]:
    """Sample names and declared families of a Prometheus text exposition."""
    names = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE ") or line.startswith("# HELP "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def simulate(start: datetime, minutes: float) -> tuple[list[tuple[str, bytes]], int]:
    """City streams + food for ``minutes``, plus food from 9 h before so lots reach retail sale in the range."""
    city, _ = events(seed=41, start=start, duration_s=minutes * 60, rate=8, streams={"traffic", "health", "food"},
                     incidents=False)
    warm = food.generate(seed=42, start=start - timedelta(hours=9), duration_s=9 * 3600 + minutes * 60, rate=0.5)
    merged = list(heapq.merge(city, warm, key=lambda tv: _event_ts(*tv)))  # one event-time order: none late
    b = Batcher(20)
    msgs = [m for m in (b.add(t, v) for t, v in merged) if m is not None] + b.drain()
    n = sum(len(v["epcisBody"]["eventList"]) if t == "food.trace-events" else 1 for t, v in merged)
    end = start + timedelta(minutes=minutes)
    sales = [v for t, v in merged if t == "food.trace-events"
             for e in v["epcisBody"]["eventList"]
             if e.get("bizStep") == "retail_selling" and start <= datetime.fromisoformat(e["eventTime"]) < end]
    inspections = [v for t, v in merged if t == "food.trace-events"
                   for e in v["epcisBody"]["eventList"]
                   if e.get("bizStep") == "inspecting" and start <= datetime.fromisoformat(e["eventTime"]) < end]
    assert sales and inspections, "the simulated range must hold retail sales and inspections"
    return msgs, n


def test_every_panel_query_runs_and_kpi_panels_have_data(kafka: Any, influx: Any, worker_factory: Any) -> None:
    # A fixed weekday morning (hospitals open, metro running), whatever the wall clock says; the
    # processing-time stream_quality windows are queried over the minutes around now instead.
    start = datetime(2026, 11, 24, 9, 0, tzinfo=CST)
    msgs, n = simulate(start, 20)
    wall_start = datetime.now(CST) - timedelta(minutes=5)
    produce(kafka.url, msgs)
    w = worker_factory().start()
    w.wait(lambda: sum(r["accepted"] for r in influx_rows(influx, "stream_quality")) >= n,
           what=f"{n} accepted events in InfluxDB", timeout_s=180)
    w.wait(lambda: (w.health() or {}).get("influx_pending_points", 1) == 0, what="sink drained")
    for m in MEASUREMENTS:
        if m not in EVENT_DRIVEN:
            assert influx_rows(influx, m), f"measurement {m} was not written by the run"
    end = start + timedelta(minutes=22)
    wall_end = datetime.now(CST) + timedelta(minutes=2)

    boards = load_dashboards(DASHBOARDS)
    assert {b["uid"] for b in boards} >= KPI_BOARDS
    empty: list[str] = []
    ran = 0
    for board in boards:
        event_range = panel_queries(board, start=start, end=end)
        wall_range = panel_queries(board, start=wall_start, end=wall_end)
        for (title, q), (_t, q_wall) in zip(event_range, wall_range):
            series = influx_query(influx, q)  # raises on an InfluxQL error
            ran += 1
            rows = sum(len(s.get("values") or []) for s in series)
            m = measurement_of(q)
            if m == "stream_quality":  # written in processing-time windows: look around now
                rows = sum(len(s.get("values") or []) for s in influx_query(influx, q_wall))
            if board["uid"] in KPI_BOARDS and m in MEASUREMENTS and m not in EVENT_DRIVEN and rows == 0:
                empty.append(f"{board['uid']} / {title}: {q}")
    assert ran > 40
    assert not empty, "KPI panels without data:\n" + "\n".join(empty)

    metrics = exposed(w.metrics())
    missing: list[str] = []
    checked: set[str] = set()
    for board in boards:
        for panel in _iter_panels(board.get("panels") or []):
            for t in panel.get("targets") or []:
                if _is_prom(_target_ds_uid(t, panel)) and t.get("expr"):
                    for name in promql_metrics(str(t["expr"])) - PROMETHEUS_OWN:
                        checked.add(name)
                        if name not in metrics:
                            missing.append(f"{board['uid']} / {panel.get('title')}: {name}")
    assert {"cityops_events_total", "cityops_alerts_active", "cityops_checkpoint_duration_seconds_bucket"} <= checked
    assert not missing, "metrics used by panels but not exposed by the worker:\n" + "\n".join(missing)
    assert w.terminate() == 0


def test_promql_metric_names_are_extracted() -> None:
    expr = ('histogram_quantile(0.95, sum by (le) (rate(cityops_checkpoint_duration_seconds_bucket'
            '[$__rate_interval]))) or sum(cityops_alerts_active{severity="page"}) > 0')
    assert promql_metrics(expr) == {"cityops_checkpoint_duration_seconds_bucket", "cityops_alerts_active"}
