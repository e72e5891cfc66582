"""VisaBackend (kind ``"visa"``): the tester driver over pyvisa, e.g. ``TCPIP::host::5025::SOCKET``."""
from __future__ import annotations

from typing import ClassVar

from crossbar_ctl.config import RunConfig
from crossbar_ctl.errors import ConfigError
from crossbar_instruments.driver import TesterBackend
from crossbar_instruments.transport import Transport, VisaTransport


class VisaBackend(TesterBackend):
    """An array tester reached through VISA: ``[backend].address`` is the resource name and
    ``[backend].visa_library`` the pyvisa library (``"@py"`` by default)."""

    kind: ClassVar[str] = "visa"

    def make_transport(self, config: RunConfig) -> Transport:
        b = config.backend
        if not b.address:
            raise ConfigError('[backend].address: kind "visa" needs a VISA resource, e.g. '
                              '"TCPIP::192.168.0.10::5025::SOCKET"')
        return VisaTransport(b.address, b.timeout_s, b.visa_library)
