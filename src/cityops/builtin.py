"""The built-in agents, declared with the plugin API exactly as an installed package declares its own.

``BUILTIN``: the traffic (card taps, road detectors), health-card and food-trace (EPCIS 2.0) streams with
their KPIs, every rule kind of ``cityops.alerts.kinds``, the food stream's own rule kinds, and the packaged
manifests, contracts and dashboards (``cityops.resources``). ``cityops.plugins`` loads it first.
"""

from __future__ import annotations

import functools
from typing import Any

from cityops.types import AgentPlugin, StreamFactory, StreamSetup

__all__ = ["BUILTIN", "builtin_plugin"]


def _food(setup: StreamSetup) -> Any:
    from cityops.food.stream import FoodStream

    settings = setup.settings
    # The lineage outlives the food lateness: an upload still on time finds the history of its lots.
    retention = max(settings.food_retention_s, settings.stream_lateness_s.get(FoodStream.topic, 0.0) + 86400.0)
    return FoodStream.from_rules(setup.rules.values(), retention_s=retention)


@functools.cache
def builtin_plugin() -> AgentPlugin:
    """The built-in agents as an ``AgentPlugin`` (name ``builtin``); topic partitions as ``topic_specs`` had them."""
    from cityops import resources
    from cityops.alerts.kinds import KINDS
    from cityops.food.stream import FOOD_KPIS, RULE_KINDS, FoodStream
    from cityops.streams.city_streams import CardTaps, HealthEvents, RoadDetectors

    def half(n: int) -> int:
        return max(1, n // 2)

    return AgentPlugin(
        name="builtin",
        streams=(
            # Three tasks (stream groups that share no state), so three workers can run them in parallel.
            StreamFactory.json("traffic.card-taps", CardTaps, task="traffic"),
            StreamFactory.json("traffic.road-detectors", RoadDetectors, partitions=half, task="traffic"),
            StreamFactory.json("health.card-events", HealthEvents, partitions=half, task="health"),
            # One partition: a lot's history must be read in the order it was written (a sale judged before
            # its receiving would be a false FoodUntracedSale), and a replay must read it in the same order.
            # EPCIS volume for a city (~20k events/day) is far below one partition's capacity.
            StreamFactory(FoodStream.topic, _food, tuple(FOOD_KPIS.values()), partitions=1, task="food"),
        ),
        rule_kinds=dict(KINDS),
        stream_rule_kinds=dict(RULE_KINDS),
        manifests=resources.rules_dir(),
        contracts=resources.contracts_dir(),
        dashboards=resources.dashboards_dir(),
    )


def __getattr__(name: str) -> Any:
    if name == "BUILTIN":  # built on first use: it imports the engine, the rule kinds and the food pipeline
        return builtin_plugin()
    raise AttributeError(f"module 'cityops.builtin' has no attribute {name!r}")
