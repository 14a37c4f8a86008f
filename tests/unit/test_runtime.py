"""The runtime's pure helpers: the `alerts` point of a transition."""

from __future__ import annotations

from typing import Any

from cityops.runtime import alert_point
from cityops.types import AlertState, Transition


def _transition(**labels: str) -> Transition:
    return Transition(labels={"alertname": "A", "severity": "warning", "domain": "traffic", **labels},
                      status=AlertState.FIRING, annotations={"summary": "s"}, value=1.0, id="x", ts=1795564800.0,
                      alertname="A", previous=None, am_action=AlertState.FIRING, severity="warning",
                      domain="traffic", entity=labels, starts_at=1795564800.0, ends_at=None)


def test_alert_entities_stay_distinct_when_values_hold_separators() -> None:
    """Issue 9 kind 4: ``line="a,b=c"`` and ``line="a", b="c"`` were one entity tag."""
    one = alert_point(_transition(line="a,b=c"))
    two = alert_point(_transition(line="a", b="c"))
    three = alert_point(_transition(line="a%2Cb%3Dc"))
    assert len({one.tags["entity"], two.tags["entity"], three.tags["entity"]}) == 3
    assert two.tags["entity"] == "b=c,line=a"  # ordinary values read as before
    assert alert_point(_transition(card="p-0123")).tags["entity"] == "card=p-0123"
