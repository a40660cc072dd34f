"""The one exception type users see for bad input; entry points print its message without a traceback."""


class TwoTowerError(Exception):
    """A problem with the user's input (data, config, ids, artifacts), described in plain words."""
