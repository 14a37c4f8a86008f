"""cityops: live KPIs and alerts over a city's event streams."""

__version__ = "0.1.0"
