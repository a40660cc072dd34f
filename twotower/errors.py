"""The exception types users see for bad input; entry points print their message without a traceback.

Each says what kind of thing went wrong, so that a caller (the HTTP service, a script) can answer each in
its own way; all are ``TwoTowerError``, which is what a caller that only reports the message catches.
"""


class TwoTowerError(Exception):
    """A problem with the user's input (data, config, ids, artifacts), described in plain words."""


class ConfigError(TwoTowerError):
    """An option has a value the package cannot use; the message names the option as the user writes it."""


class DataError(TwoTowerError):
    """The input data cannot be used: a missing file or column, an empty log, values of the wrong kind."""


class RunError(TwoTowerError):
    """A run directory or index that is missing, unfinished, damaged or not the run it claims to be."""


class UnknownIdError(TwoTowerError):
    """Ids or titles that the run does not know."""
