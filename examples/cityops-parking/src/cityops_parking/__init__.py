"""cityops agent plugin: car-park occupancy from the one-card system's parking lots.

Changzhou's one-card (常州通) pays for metro, buses, public bikes, coaches and parking; each car park's
gate controller reports, about once a minute, how many of the lot's spaces are taken and the cars that
entered and left since its last report (topic ``parking.lot-occupancy``, contract in
``data/streams/parking.lot-occupancy/``). This plugin adds that stream, its KPI ``parking_occupancy`` (per
lot per 60 s window), the rule kind ``lot_full`` and the agent ``parking`` (``data/agents/parking.yml``
with its runbook), and a Grafana dashboard. The worker loads it through the entry point ``parking`` in
group ``cityops.agents``; nothing in cityops names it.
"""

from __future__ import annotations

from importlib.resources import files

from cityops.types import AgentPlugin, StreamFactory
from cityops_parking.rules import LotFull
from cityops_parking.stream import OCCUPANCY, TOPIC, LotOccupancyStream

__all__ = ["OCCUPANCY", "PLUGIN", "TOPIC", "LotFull", "LotOccupancyStream"]

_DATA = files(__name__).joinpath("data")

PLUGIN = AgentPlugin(
    name="parking",
    # Two partitions: a city's car parks report about 1,000 events a minute; keyed by lot, in order per lot.
    streams=(StreamFactory.json(TOPIC, LotOccupancyStream, partitions=lambda n: max(1, min(n, 2))),),
    rule_kinds={"lot_full": LotFull},
    manifests=_DATA.joinpath("agents"),
    runbook_url="https://git.cityops.example/cityops/-/blob/main/examples/cityops-parking/src/cityops_parking/data/agents",
    contracts=_DATA.joinpath("streams"),
    dashboards=_DATA.joinpath("dashboards"),
)
