"""The project's exceptions: one root, configuration errors that stop start-up, unreachable servers."""


class CityopsError(Exception):
    """Root of every cityops error."""


class ConfigError(CityopsError):
    """A setting is missing or wrong; the message names it and what to do.

    ``problems``: one message per bad setting when several are wrong at once (default: the message).
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems) if problems else [message]


class RulesDirError(ConfigError):
    """A manifest or runbook in the rules folder is wrong. ``folder``: the folder; ``detail``: the file, key and
    problem. The message names CITYOPS_RULES_DIR, the worker's setting; a command whose own option stands for
    it (``cityops backtest --agents DIR``) names that option instead with ``named``."""

    def __init__(self, folder: object, detail: str) -> None:
        self.folder = str(folder)
        self.detail = detail
        super().__init__(self.named("CITYOPS_RULES_DIR"))

    def named(self, setting: str) -> str:
        """The message naming ``setting`` as what set the folder: ``SETTING FOLDER: DETAIL`` for an option,
        ``SETTING (FOLDER): DETAIL`` for the variable."""
        if setting.startswith("--"):
            return f"{setting} {self.folder}: {self.detail}"
        return f"{setting} ({self.folder}): {self.detail}"


class Unreachable(CityopsError):
    """A server cityops needs did not answer: one line naming the server, the address tried and the setting.

    ``setting`` is the variable or option the address came from (e.g. ``CITYOPS_KAFKA_BOOTSTRAP``), so the
    reader knows what to fix, or a phrase starting with "the default" when none was given; ``cause`` is the
    last error seen (e.g. ``connection refused``).
    """

    def __init__(self, server: str, address: str, setting: str, cause: str) -> None:
        self.server = server
        self.address = address
        self.setting = setting
        self.cause = " ".join(str(cause).split())  # one line, whatever the library put in its message
        source = setting if setting.startswith("the default") else f"set by {setting}"
        super().__init__(f"cannot reach {server} at {address} ({source}): {self.cause}")
