"""cityops.food."""
