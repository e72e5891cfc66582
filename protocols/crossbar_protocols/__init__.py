"""crossbar_protocols: device characterisation protocols, their results and plots, and device-model fitting.

Protocols (entry-point group ``crossbar_ctl.protocols``): ``ltp-ltd``, ``iv-sweep``, ``retention``,
``endurance``, ``read-disturb``, ``array-map``, ``write-verify``. Each is a :class:`Protocol` with typed
``Params``; :func:`run_protocol` runs one on a rig and writes its result directory; :mod:`crossbar_protocols.fit`
fits the neurosim-exp device model to ltp-ltd data; :mod:`crossbar_protocols.cli` adds ``crossbar-ctl protocol``.
"""
from __future__ import annotations

from crossbar_protocols.base import (Plan, Protocol, ProtocolParams, ProtocolResult, available_protocols,
                                     make_protocol, protocol_class, register_protocol)
from crossbar_protocols.clock import SimulatedClock, WallClock
from crossbar_protocols.results import read_result, write_result
from crossbar_protocols.runner import dry_run, run_protocol

__all__ = [
    "Plan", "Protocol", "ProtocolParams", "ProtocolResult", "SimulatedClock", "WallClock", "available_protocols",
    "dry_run", "make_protocol", "protocol_class", "read_result", "register_protocol", "run_protocol",
    "write_result",
]
