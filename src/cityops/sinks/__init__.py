"""cityops.sinks."""
