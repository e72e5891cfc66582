"""crossbar_instruments: array-tester backends of crossbar_ctl and an emulated tester.

Modules: :mod:`~crossbar_instruments.blocks` (IEEE 488.2 blocks, typed arrays, framing),
:mod:`~crossbar_instruments.codec` (the command set, both directions), :mod:`~crossbar_instruments.transport`
(VISA and serial links), :mod:`~crossbar_instruments.driver` (:class:`TesterBackend`) with its transport
choices :mod:`~crossbar_instruments.visa_backend` (kind ``visa``) and :mod:`~crossbar_instruments.serial_backend`
(kind ``serial``), :mod:`~crossbar_instruments.tester` (the emulated instrument's logic),
:mod:`~crossbar_instruments.emulator` (TCP and pty servers), :mod:`~crossbar_instruments.testing`
(``expected_protocol``). The protocol is documented in ``hil/PROTOCOL.md``.
"""
from __future__ import annotations
