"""The exception types of crossbar_ctl: each says what was wrong and where."""
from __future__ import annotations


class CrossbarError(Exception):
    """Base class of every error raised by crossbar_ctl."""


class ConfigError(CrossbarError, ValueError):
    """A run configuration is malformed: the message names the file, the key path and what was expected."""


class LimitError(CrossbarError, ValueError):
    """An operation would exceed a safety limit; nothing was sent to the array.

    ``limit`` is the ``[limits]`` key that refused it, ``value`` the requested value, ``allowed`` the limit.
    """

    def __init__(self, limit: str, value: float, allowed: float, what: str = "") -> None:
        self.limit = limit
        self.value = value
        self.allowed = allowed
        where = f" in {what}" if what else ""
        super().__init__(f"limit {limit} = {allowed:g} exceeded{where}: requested {value:g}; nothing was sent")


class BackendError(CrossbarError, RuntimeError):
    """A backend could not be found, opened or used."""
