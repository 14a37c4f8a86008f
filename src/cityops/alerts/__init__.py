"""cityops.alerts."""
