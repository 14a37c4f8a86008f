"""cityops.streams."""
