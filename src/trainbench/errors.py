"""Exceptions trainbench raises for the user's mistakes (printed as one line, no traceback)."""


class ConfigError(ValueError):
    """A configuration or input value is wrong; the message names the value and what is allowed."""
