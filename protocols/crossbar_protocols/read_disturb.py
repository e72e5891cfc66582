"""``read-disturb``: many reads at one read voltage, looking for drift caused by the reads themselves.

Each cell is optionally programmed (``program_pulses`` pulses at ``v_program_V``) and then read ``reads`` times
with ``read_cell`` at ``v_read_V``. A read at |V| ≤ V_th leaves G unchanged; above threshold every read is a
small pulse and G creeps towards the bound of its polarity. The drift per read is the least-squares slope of
G against the read number n:  G_n ≈ G_0 + n·dG/dn  (S/read); relative drift = (dG/dn)/G_0.

Table: ``cell tile row col read G_S``.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from pydantic import Field

from crossbar_ctl.config import RunConfig
from crossbar_protocols.base import CELL_UNITS, Plan, Protocol, ProtocolParams, ProtocolResult, cell_columns
from crossbar_protocols.retention import _slopes


class ReadDisturbParams(ProtocolParams):
    v_read_V: float = Field(0.2, description="read voltage under test (V; sign = polarity)")
    reads: int = Field(1000, ge=2, description="reads per cell")
    program_pulses: int = Field(30, ge=0, description="pulses that program each cell first (mid-window)")
    v_program_V: float = Field(2.0, description="programming pulse amplitude (V; sign = polarity)")
    width_s: float = Field(1e-6, gt=0, description="programming pulse width (s)")


class ReadDisturb(Protocol):
    """Repeated reads at a read voltage; drift of G per read."""

    name = "read-disturb"
    Params = ReadDisturbParams
    default_cells = "0:0:0-3"
    params: ReadDisturbParams

    def pulse_amplitudes(self) -> list[float]:
        """The programming pulses and the read itself (above the threshold every read is a pulse, and the
        half-select check decides whether the cells sharing its lines would switch too)."""
        p = self.params
        return ([p.v_program_V] if p.program_pulses else []) + [p.v_read_V]

    def largest_pulse_op(self, cells: np.ndarray) -> tuple[int, float]:
        p = self.params
        return p.program_pulses, p.width_s

    def limit_items(self) -> Iterable[tuple[str, float, str]]:
        p = self.params
        yield "max_voltage_V", abs(p.v_read_V), "v_read_V"
        if p.program_pulses:
            yield "max_voltage_V", abs(p.v_program_V), "v_program_V"
            yield "max_pulse_width_s", p.width_s, "width_s"
            yield "max_pulses_per_device", p.program_pulses, "program_pulses"

    def check_config(self, config: RunConfig) -> None:
        if self.params.v_read_V == 0:
            raise ValueError("v_read_V must be nonzero (G = I/V)")
        if self.params.program_pulses and self.params.v_program_V == 0:
            raise ValueError("v_program_V must be nonzero when program_pulses > 0")

    def plan(self, cells: np.ndarray) -> Plan:
        p = self.params
        n = len(cells)
        ops = {"read_cell": n * p.reads}
        if p.program_pulses:
            ops["pulse_cell"] = n
        return Plan(ops=ops, reads=n * p.reads, pulses=n * p.program_pulses,
                    pulse_time_s=n * p.program_pulses * p.width_s)

    def plan_on(self, cells: np.ndarray, device: Any) -> Plan:
        """Reads at |v_read_V| ≥ ``device.v_threshold_V`` are pulses too (of ``device.width_ref_s`` each)."""
        plan = self.plan(cells)
        if abs(self.params.v_read_V) >= float(device.v_threshold_V):
            n = len(cells) * self.params.reads
            plan.pulses += n
            plan.pulse_time_s += n * float(device.width_ref_s)
        return plan

    def _run(self, backend: Any, cells: np.ndarray, rng: np.random.Generator, clock: Any) -> ProtocolResult:
        p = self.params
        n = len(cells)
        g = np.empty((n, p.reads))
        for k, (t, r, c) in enumerate(cells.tolist()):
            if p.program_pulses:
                backend.pulse_cell(t, r, c, p.v_program_V, p.width_s, p.program_pulses)
            for j in range(p.reads):
                g[k, j] = backend.read_cell(t, r, c, p.v_read_V) / p.v_read_V
        idx = np.arange(p.reads, dtype=float)
        slope = _slopes(idx, g.T)
        rel = slope / np.where(g[:, 0] != 0, g[:, 0], np.nan)
        cell, j = np.meshgrid(np.arange(n), np.arange(p.reads), indexing="ij")
        table = {**cell_columns(cells, cell.ravel()), "read": j.ravel(), "G_S": g.ravel()}
        units = {**CELL_UNITS, "read": "read #", "G_S": "S"}
        summary = {"cells": n, "reads": p.reads, "v_read_V": p.v_read_V,
                   "drift_per_read_S": slope.tolist(), "relative_drift_per_read": rel.tolist(),
                   "relative_drift_per_read_max_abs": float(np.nanmax(np.abs(rel))),
                   "total_change_S": (g[:, -1] - g[:, 0]).tolist()}
        return ProtocolResult(self.name, self.params_dict(), cells, table, units, {"G_S": g}, summary)
