"""cityops.engine."""
