"""The KPI catalogue: every InfluxDB measurement the worker writes, derived from the code that writes it.

One source: a KPI's measurement, tags and fields are its ``Kpi`` declaration (``Kpi.tags``, and
``Kpi.doc``, which names every field ``Kpi.fields`` can produce — a unit test holds each ``fields`` to
it); the ``alerts`` measurement is ``ALERTS`` here, which ``cityops.runtime.alert_point`` writes. The
README's catalogue table, the dashboards' query checks (``cityops.dashboards``) and the InfluxDB writes
all come from, or are tested against, ``measurements()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cityops.engine.windows import Kpi

__all__ = ["ALERTS", "Measurement", "builtin_kpis", "markdown_table", "measurements"]


@dataclass(frozen=True)
class Measurement:
    """One InfluxDB measurement: its tag keys and field keys (``string_fields``: the string-valued ones);
    ``doc``: field -> what it holds; ``clock``: "event" or "processing" (how its windows are cut; "" = not
    windowed)."""

    tags: frozenset[str]
    fields: frozenset[str]
    string_fields: frozenset[str] = field(default_factory=frozenset)
    doc: Mapping[str, str] = field(default_factory=dict)
    clock: str = "event"
    tag_order: tuple[str, ...] = ()


# One point per alert lifecycle transition (point time = the transition's event time, s precision).
ALERTS_TAGS = ("alertname", "severity", "domain", "status", "entity")
ALERTS = Measurement(
    frozenset(ALERTS_TAGS), frozenset({"summary", "value", "id"}), frozenset({"summary", "id"}),
    doc={"summary": "the alert's summary annotation", "value": "the rule's last measured value",
         "id": "the transition id (rule|entity|n)"},
    clock="", tag_order=ALERTS_TAGS,
)


def builtin_kpis() -> list[Kpi]:
    """The KPIs of the built-in agents (``cityops.builtin``, declared like a plugin's), in catalogue order:
    the event-time KPIs of the city streams, stream quality, then the food KPIs (the stream declared last)."""
    from cityops.builtin import builtin_plugin
    from cityops.streams.city_streams import QUALITY

    factories = builtin_plugin().streams
    out: list[Kpi] = [k for f in factories[:-1] for k in f.kpis]
    out.append(QUALITY)
    out.extend(factories[-1].kpis)
    return out


def of_kpi(kpi: Kpi) -> Measurement:
    """The measurement a ``Kpi`` declaration writes."""
    return Measurement(frozenset(kpi.tags), frozenset(kpi.doc), doc=dict(kpi.doc), clock=kpi.clock,
                       tag_order=tuple(kpi.tags))


def measurements(kpis: Iterable[Kpi] | None = None) -> dict[str, Measurement]:
    """Measurement name -> ``Measurement`` for ``kpis`` (None = the built-in ones) and ``alerts``.

    Raises ValueError if two KPIs declare the same measurement differently.
    """
    out: dict[str, Measurement] = {}
    for kpi in builtin_kpis() if kpis is None else kpis:
        m = of_kpi(kpi)
        if kpi.measurement in out and out[kpi.measurement] != m:
            raise ValueError(f"KPI measurement {kpi.measurement!r} declared twice with different tags or fields")
        out[kpi.measurement] = m
    out["alerts"] = ALERTS
    return out


def markdown_table(catalogue: Mapping[str, Measurement] | None = None) -> str:
    """The catalogue as README's Markdown table: measurement, tags, fields (in declaration order)."""
    catalogue = measurements() if catalogue is None else catalogue
    rows = ["| measurement | tags | fields |", "|---|---|---|"]
    for name, m in catalogue.items():
        tags = ", ".join(f"`{t}`" for t in (m.tag_order or sorted(m.tags))) or "–"
        fields = ", ".join(f"`{f}`" for f in (list(m.doc) or sorted(m.fields)))
        rows.append(f"| `{name}` | {tags} | {fields} |")
    return "\n".join(rows)
