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


class ProtocolError(CrossbarError, ValueError):
    """Bytes on an instrument link do not follow the command protocol (garbled, truncated, wrong length or
    dtype). ``raw`` holds the offending bytes; ``code`` the SCPI error number a tester reports for it."""

    def __init__(self, message: str, raw: bytes = b"", code: int = -102) -> None:
        self.raw = bytes(raw)
        self.code = code
        shown = self.raw if len(self.raw) <= 200 else self.raw[:200] + b"..."
        super().__init__(f"{message} (raw {len(self.raw)} bytes: {shown!r})")
        self.message = message


class InstrumentError(BackendError):
    """The instrument reported an error: ``code`` and ``text`` as in its error queue (``SYST:ERR?``)."""

    def __init__(self, code: int, text: str) -> None:
        self.code = int(code)
        self.text = text
        super().__init__(f"instrument error {self.code}: {text}")


class ConnectionLostError(BackendError, ConnectionError):
    """The link to the instrument broke (peer closed, reset, port vanished) or could not be opened."""


class InstrumentTimeoutError(BackendError, TimeoutError):
    """The instrument did not answer within ``[backend].timeout_s``."""
