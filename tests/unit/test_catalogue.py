"""Issue 10: one KPI catalogue. The README table, the dashboards' checks and the writers agree with it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from cityops import catalogue, dashboards
from cityops.engine.windows import Kpi
from cityops.runtime import alert_point
from cityops.types import AlertState, Transition

README = Path(__file__).resolve().parents[2] / "README.md"


def _full(kpi: Kpi) -> list[Any]:
    """An accumulator with every slot non-empty, so ``fields`` takes its fullest branch."""
    out: list[Any] = []
    for v in kpi.new():
        if isinstance(v, dict):
            out.append({"lot-1": 1, "lot-2": 0})
        elif isinstance(v, float):
            out.append(2.5)
        else:
            out.append(2)
    return out


@pytest.mark.parametrize("kpi", catalogue.builtin_kpis(), ids=lambda k: k.measurement)
def test_every_field_a_kpi_writes_is_declared_in_its_doc(kpi: Kpi) -> None:
    written = kpi.fields(_full(kpi)) or {}
    assert set(written) == set(kpi.doc), (kpi.measurement, sorted(written), sorted(kpi.doc))
    empty = kpi.fields(kpi.new()) or {}
    assert set(empty) <= set(kpi.doc)


def test_dashboards_check_queries_against_the_derived_catalogue() -> None:
    assert dashboards.MEASUREMENTS == catalogue.measurements()
    # The drift issue 10 found in the former hand-kept copy: the fields it lacked, the tag it listed as a field.
    assert {"errors"} <= dashboards.MEASUREMENTS["traffic_ridership"].fields
    assert {"readings"} <= dashboards.MEASUREMENTS["traffic_road"].fields
    assert {"events"} <= dashboards.MEASUREMENTS["health_service"].fields
    assert {"untrusted"} <= dashboards.MEASUREMENTS["stream_quality"].fields
    assert "entity" in dashboards.MEASUREMENTS["alerts"].tags
    assert "entity" not in dashboards.MEASUREMENTS["alerts"].fields
    assert dashboards.check_influxql('SELECT sum("errors") FROM "traffic_ridership" WHERE $timeFilter') == []
    assert dashboards.check_influxql('SELECT sum("nope") FROM "traffic_ridership" WHERE $timeFilter') != []


def test_alert_point_writes_exactly_the_catalogued_alerts_measurement() -> None:
    tr = Transition(labels={"alertname": "A", "severity": "warning", "domain": "traffic", "line": "1"},
                    status=AlertState.FIRING, annotations={"summary": "s"}, value=1.0, id="x", ts=1795564800.0,
                    alertname="A", previous=None, am_action=AlertState.FIRING, severity="warning",
                    domain="traffic", entity={"line": "1"}, starts_at=1795564800.0, ends_at=None)
    p = alert_point(tr)
    assert p.measurement == "alerts"
    assert set(p.tags) == catalogue.ALERTS.tags
    assert set(p.fields) == catalogue.ALERTS.fields
    assert {k for k, v in p.fields.items() if isinstance(v, str)} == catalogue.ALERTS.string_fields


def _readme_table() -> dict[str, tuple[list[str], list[str]]]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## KPI catalogue"):]
    section = section[:section.index("\n\n", section.index("| measurement"))]
    rows: dict[str, tuple[list[str], list[str]]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        rows[cells[0].strip("`")] = (re.findall(r"`([^`]+)`", cells[1]), re.findall(r"`([^`]+)`", cells[2]))
    return rows


def test_readme_catalogue_lists_exactly_what_the_worker_writes() -> None:
    rows = _readme_table()
    cat = catalogue.measurements()
    assert list(rows) == list(cat)
    for name, (tags, fields) in rows.items():
        assert set(tags) == cat[name].tags, name
        assert set(fields) == cat[name].fields, name


def test_markdown_table_names_every_measurement_tag_and_field() -> None:
    table = catalogue.markdown_table()
    for name, m in catalogue.measurements().items():
        row = next(line for line in table.splitlines() if line.startswith(f"| `{name}` |"))
        assert all(f"`{t}`" in row for t in m.tags | m.fields), row


def test_a_measurement_declared_twice_differently_is_refused() -> None:
    a = Kpi("m", ("x",), lambda: [0], lambda acc: {"n": acc[0]}, doc={"n": "count"}, slots=("n",))
    b = Kpi("m", ("y",), lambda: [0], lambda acc: {"n": acc[0]}, doc={"n": "count"}, slots=("n",))
    with pytest.raises(ValueError, match="'m' declared twice"):
        catalogue.measurements([a, b])
