"""Clocks for protocols that wait (retention): the wall clock on a real array, a simulated clock otherwise.

The simulator has no time-dependent physics (no drift, no relaxation), so waiting for real would only slow a
run down. :class:`SimulatedClock` advances its time by exactly what is asked and returns at once; the times a
protocol records are then the nominal schedule (t = 0, Δt, 2Δt, …).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol as _TypingProtocol

if TYPE_CHECKING:  # pragma: no cover
    from crossbar_ctl.backend import Backend


class Clock(_TypingProtocol):
    """What a protocol needs of time: ``now()`` (s, monotonic) and ``sleep(dt)`` (s)."""

    def now(self) -> float: ...

    def sleep(self, dt_s: float) -> None: ...


class WallClock:
    """Real time: ``time.monotonic`` and ``time.sleep``; ``now()`` counts from construction."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._t0

    def sleep(self, dt_s: float) -> None:
        if dt_s > 0:
            time.sleep(dt_s)


class SimulatedClock:
    """Simulated time: ``sleep(dt)`` adds dt to ``now()`` and returns immediately."""

    def __init__(self, t0_s: float = 0.0) -> None:
        self.t_s = float(t0_s)

    def now(self) -> float:
        return self.t_s

    def sleep(self, dt_s: float) -> None:
        if dt_s > 0:
            self.t_s += float(dt_s)


def default_clock(backend: "Backend", simulated: bool | None = None) -> Clock:
    """``SimulatedClock`` for the simulator (kind ``"sim"``) or when ``simulated`` is True, else ``WallClock``."""
    if simulated is None:
        simulated = backend.kind == "sim"
    return SimulatedClock() if simulated else WallClock()
