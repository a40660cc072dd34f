"""The exception types users see for bad input; entry points print their message without a traceback.

Each says what kind of thing went wrong, so that a caller (the HTTP service, a script) can answer each in
its own way; all are ``TwoTowerError``, which is what a caller that only reports the message catches.
"""

from __future__ import annotations

import sys


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


def user_error(error: BaseException) -> TwoTowerError | None:
    """The ``TwoTowerError`` behind ``error``, if any (Hydra wraps errors raised while instantiating);
    Lightning's refusal of a trainer setting (``trainer.limit_val_batches`` below one batch, say) is one."""
    # Looked up, not imported: the commands that never load Lightning (eval, retrieve) stay light.
    lightning_refusal = getattr(sys.modules.get("lightning.fabric.utilities.exceptions"),
                                "MisconfigurationException", ())
    while error is not None:
        if isinstance(error, TwoTowerError):
            return error
        if isinstance(error, lightning_refusal):
            return TwoTowerError(f"trainer settings: {error}")
        error = error.__cause__
    return None
