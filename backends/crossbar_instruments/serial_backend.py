"""SerialBackend (kind ``"serial"``): the tester driver over a serial line (pyserial)."""
from __future__ import annotations

from typing import ClassVar

from crossbar_ctl.config import RunConfig
from crossbar_ctl.errors import ConfigError
from crossbar_instruments.driver import TesterBackend
from crossbar_instruments.transport import SerialTransport, Transport


class SerialBackend(TesterBackend):
    """An array tester on a serial port: ``[backend].address`` is a device (``/dev/ttyUSB0``), a pty path or a
    pyserial URL; ``baud`` and ``parity`` set the line."""

    kind: ClassVar[str] = "serial"

    def make_transport(self, config: RunConfig) -> Transport:
        b = config.backend
        if not b.address:
            raise ConfigError('[backend].address: kind "serial" needs a port, e.g. "/dev/ttyUSB0"')
        return SerialTransport(b.address, b.timeout_s, b.baud, b.parity)
