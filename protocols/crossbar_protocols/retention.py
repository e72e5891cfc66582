"""``retention``: program cells, then read them at a fixed interval for a duration.

Each cell first takes ``program_pulses`` pulses of ``v_program_V`` (sign = polarity; 0 pulses: measure the
state as found), then every cell is read at t = 0, Δt, 2Δt, … ≤ ``duration_s``. Time comes from a clock: the
wall clock on a real array, a simulated one on the simulator (which has no drift), so a simulated retention run
of hours finishes at once and records the nominal times (``simulated_time`` overrides the choice).

Table: ``cell tile row col t_s G_S``. Summary: relative drift (G(t_end) − G(0))/G(0) per cell, its mean and
the largest |drift|; a linear drift rate dG/dt (S/s) per cell from a least-squares line.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from pydantic import Field

from crossbar_ctl.config import RunConfig
from crossbar_protocols.base import (CELL_UNITS, AccessParams, Plan, Protocol, ProtocolResult, cell_columns,
                                     devices_per_op)
from crossbar_protocols.cells import CellAccess, check_read_mode, pulse_ops, read_ops
from crossbar_protocols.clock import default_clock


class RetentionParams(AccessParams):
    program_pulses: int = Field(50, ge=0, description="pulses that program each cell before the reads")
    v_program_V: float = Field(2.0, description="programming pulse amplitude (V; sign = polarity)")
    width_s: float = Field(1e-6, gt=0, description="programming pulse width (s)")
    interval_s: float = Field(1.0, gt=0, description="time between reads (s)")
    duration_s: float = Field(60.0, ge=0, description="time of the last read after programming (s)")
    simulated_time: bool | None = Field(None, description="True: don't wait for real; None: only on the simulator")


class Retention(Protocol):
    """Reads at a fixed interval after programming (drift of the programmed state)."""

    name = "retention"
    Params = RetentionParams
    default_cells = "0:0:0-3"
    params: RetentionParams

    def times(self) -> np.ndarray:
        p = self.params
        n = int(np.floor(p.duration_s / p.interval_s + 1e-9))
        return np.arange(n + 1) * p.interval_s

    def pulse_amplitudes(self) -> list[float]:
        return [self.params.v_program_V] if self.params.program_pulses else []

    def largest_pulse_op(self, cells: np.ndarray) -> tuple[int, float]:
        p = self.params
        return p.program_pulses * devices_per_op(cells, p.mode), p.width_s

    def limit_items(self) -> Iterable[tuple[str, float, str]]:
        p = self.params
        if p.program_pulses:
            yield "max_voltage_V", abs(p.v_program_V), "v_program_V"
            yield "max_pulse_width_s", p.width_s, "width_s"
            yield "max_pulses_per_device", p.program_pulses, "program_pulses"
        if p.v_read_V is not None:
            yield "max_voltage_V", abs(p.v_read_V), "v_read_V"

    def plan(self, cells: np.ndarray) -> Plan:
        p = self.params
        plan = Plan()
        n_t = len(self.times())
        plan.add_ops(read_ops(cells, p.mode), n_t)
        if p.program_pulses:
            plan.add_ops(pulse_ops(cells, p.mode))
        plan.reads = n_t * len(cells)
        plan.pulses = p.program_pulses * len(cells)
        # one train per cell (cell mode) or one program per tile (parallel mode)
        trains = len(cells) if p.mode == "cell" else len(np.unique(cells[:, 0]))
        plan.pulse_time_s = p.program_pulses * p.width_s * trains
        plan.wait_s = float(self.times()[-1])
        return plan

    def check_config(self, config: RunConfig) -> None:
        p = self.params
        if p.program_pulses and p.v_program_V == 0:
            raise ValueError("v_program_V must be nonzero when program_pulses > 0")
        check_read_mode(config.read.v_read_V, p.mode, p.v_read_V)

    def run(self, backend: Any, cells: Any, rng: np.random.Generator | None = None, *,
            clock: Any = None) -> ProtocolResult:
        if clock is None:
            clock = default_clock(backend, self.params.simulated_time)
        return super().run(backend, cells, rng, clock=clock)

    def _run(self, backend: Any, cells: np.ndarray, rng: np.random.Generator, clock: Any) -> ProtocolResult:
        p = self.params
        io = CellAccess(backend, cells, p.mode, p.v_read_V)
        if p.program_pulses:
            sign = 1 if p.v_program_V > 0 else -1
            io.pulse(sign * p.program_pulses, p.v_program_V if sign > 0 else None,
                     p.v_program_V if sign < 0 else None, p.width_s)
        sched = self.times()
        t0 = clock.now()
        t = np.empty(len(sched))
        g = np.empty((len(sched), len(cells)))
        for k, ts in enumerate(sched):
            clock.sleep(ts - (clock.now() - t0))
            t[k] = clock.now() - t0
            g[k] = io.read()
        n = len(cells)
        kk, cell = np.meshgrid(np.arange(len(sched)), np.arange(n), indexing="ij")
        table = {**cell_columns(cells, cell.ravel()), "t_s": t[kk.ravel()], "G_S": g.ravel()}
        units = {**CELL_UNITS, "t_s": "s", "G_S": "S"}
        drift = (g[-1] - g[0]) / np.where(g[0] != 0, g[0], np.nan)
        rate = _slopes(t, g)
        summary = {"cells": n, "reads_per_cell": len(sched), "duration_s": float(t[-1]),
                   "relative_drift": drift.tolist(), "relative_drift_mean": float(np.nanmean(drift)),
                   "relative_drift_max_abs": float(np.nanmax(np.abs(drift))),
                   "drift_rate_S_per_s": rate.tolist(), "clock": type(clock).__name__}
        return ProtocolResult(self.name, self.params_dict(), cells, table, units, {"t_s": t, "G_S": g}, summary)


def _slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of every column of y against x (0 for a single point)."""
    if len(x) < 2:
        return np.zeros(y.shape[1])
    xc = x - x.mean()
    return (xc @ (y - y.mean(axis=0))) / max(float(xc @ xc), 1e-300)
