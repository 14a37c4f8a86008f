"""The project's exceptions: one root, and configuration errors that stop start-up."""


class CityopsError(Exception):
    """Root of every cityops error."""


class ConfigError(CityopsError):
    """A setting is missing or wrong; the message names it and what to do."""
