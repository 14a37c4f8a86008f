"""The data files the running service reads, shipped inside the package and found with importlib.resources.

In git each file exists once, in the top-level folders that people read and edit: ``agents/`` (the
reference city's rule manifests and runbooks), ``streams/`` (stream contracts, the EPCIS schema, the
simulator's source registry) and ``dashboards/``. ``src/cityops/data/<folder>`` are symlinks to those
folders, and ``pyproject.toml`` lists the files as package data, so a source checkout (editable install
or ``PYTHONPATH=src``) and an installed wheel see the same files under ``cityops/data/``. Nothing here
looks at the source tree: a wheel installed anywhere finds its files.

The JSON-LD contexts of EPCIS event hashing ship in ``epcis-event-hash-generator`` and are loaded from
that package the same way (``cityops.food.epcis``).
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from cityops.errors import ConfigError

__all__ = [
    "PACKAGED_FILES",
    "contracts_dir",
    "dashboards_dir",
    "data_path",
    "epcis_schema",
    "missing_packaged_files",
    "rules_dir",
    "simulator_registry",
]

# Every file (relative to cityops/data/) the service needs at run time; check-config and a test check
# that an install has each of them. Globs are expanded per folder below.
PACKAGED_FILES: tuple[str, ...] = (
    "streams/food.trace-events/EPCIS-JSON-Schema.json",
    "streams/sources.json",
    "streams/traffic.card-taps/schema.json",
    "streams/traffic.road-detectors/schema.json",
    "streams/health.card-events/schema.json",
)


def _root() -> Traversable:
    return files("cityops").joinpath("data")


def data_path(relative: str) -> Path:
    """Filesystem path of ``cityops/data/<relative>`` (a file or a folder), e.g. ``"agents"``.

    Raises ConfigError when the package is not installed as files on disk (e.g. imported from a zip),
    which the service does not support: the readers take paths.
    """
    node = _root().joinpath(*relative.split("/"))
    if not isinstance(node, Path):
        raise ConfigError(f"cityops package data {relative!r} is not a file on disk ({node!r}); "
                          "install cityops as a regular (unzipped) package")
    return node


def rules_dir() -> Path:
    """The reference city's rule manifests and runbooks (the repository's ``agents/``)."""
    return data_path("agents")


def simulator_registry() -> Path:
    """The simulator's source registry (the repository's ``streams/sources.json``): the simulated city's devices."""
    return data_path("streams/sources.json")


def epcis_schema() -> Path:
    """The official GS1 EPCIS 2.0 JSON Schema (``streams/food.trace-events/EPCIS-JSON-Schema.json``)."""
    return data_path("streams/food.trace-events/EPCIS-JSON-Schema.json")


def contracts_dir() -> Path:
    """The stream contracts, ``<topic>/schema.json`` each (the repository's ``streams/``)."""
    return data_path("streams")


def dashboards_dir() -> Path:
    """The Grafana dashboards, one JSON file each (the repository's ``dashboards/``)."""
    return data_path("dashboards")


def missing_packaged_files() -> list[str]:
    """Files of PACKAGED_FILES, and the manifest/runbook/dashboard folders, that this install lacks."""
    missing = [rel for rel in PACKAGED_FILES if not _root().joinpath(*rel.split("/")).is_file()]
    agents = _root().joinpath("agents")
    if not agents.is_dir() or not any(p.name.endswith(".yml") for p in agents.iterdir()):
        missing.append("agents/*.yml")
    else:
        for manifest in agents.iterdir():
            if manifest.name.endswith(".yml") and not agents.joinpath(manifest.name[:-4] + ".md").is_file():
                missing.append(f"agents/{manifest.name[:-4]}.md")
    boards = _root().joinpath("dashboards")
    if not boards.is_dir() or not any(p.name.endswith(".json") for p in boards.iterdir()):
        missing.append("dashboards/*.json")
    return missing
