"""Errors the command line reports as one readable line instead of a traceback."""


class NEMError(ValueError):
    """Base class: the message alone tells the user what to fix."""


class DataError(NEMError):
    """A data file or data option is not what the project expects; the message names which."""


class ConfigError(NEMError):
    """An impossible or inconsistent configuration; the message names the option."""


class TrainingError(NEMError):
    """Training or evaluation produced unusable numbers (e.g. a NaN loss); the message says what to try."""
