"""Project exceptions: one clear sentence a user can act on, naming the file or config key."""

from __future__ import annotations


class PcnaSegError(Exception):
    """Base class for every error a user can cause (bad file, bad config, bad data).

    Tools catch it, print the message without a traceback and exit with code 1.
    """


class ConfigError(PcnaSegError):
    """A config file, key, value or override is wrong."""


class DataError(PcnaSegError):
    """An input data file is missing, unreadable or inconsistent."""


class DatasetNotFoundError(PcnaSegError, KeyError):
    """A dataset name is not registered."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class WeightsError(PcnaSegError):
    """A weights/checkpoint file is missing, corrupt or incompatible."""


class OutputExistsError(PcnaSegError):
    """An output exists and the tool was not told to resume it or replace it."""
