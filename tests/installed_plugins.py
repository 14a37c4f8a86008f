"""What the installed agent plugins add (e.g. examples/cityops-parking, which `make test` installs), from the loader.

Tests whose expectation covers everything the worker loads add these to the built-in agents' counts, so they
hold with and without plugins installed.
"""

from __future__ import annotations

from cityops.alerts.manifest import load_manifests
from cityops.dashboards import load_dashboards
from cityops.plugins import load_plugins


def plugin_rules() -> int:
    """Rules in the installed plugins' manifests."""
    return sum(len(load_manifests(folder)) for _, folder, _ in load_plugins().manifest_folders())


def plugin_dashboards() -> int:
    """Dashboards the installed plugins ship."""
    return sum(len(load_dashboards(folder)) for ld, folder in load_plugins().dashboard_folders() if not ld.builtin)
