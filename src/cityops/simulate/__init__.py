"""cityops.simulate."""
