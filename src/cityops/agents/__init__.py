"""cityops.agents."""
