"""``iv-sweep``: a voltage staircase 0 → V+ → 0 → V− → 0 with a current read at every step.

At each step the cell is read with ``read_cell`` at the step voltage, I = G·V. A read above the switching
threshold is also a pulse (on a real device, and in the simulator: one pulse of that amplitude and width
``width_ref_s``), so G changes only at steps with |V| > V_th: the up and down branches coincide below the
threshold of the first crossing and split above it, which opens the I–V loop. Currents beyond
``compliance_A`` are clamped to ±compliance (as a source-measure unit limits them) and flagged.

Table: ``cell tile row col cycle branch step v_V i_A G_S compliance`` with branch 0: 0→V+, 1: V+→0,
2: 0→V−, 3: V−→0. Summary: the first voltage of each polarity where G moved by more than ``detect_rel``.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from pydantic import Field

from crossbar_protocols.base import CELL_UNITS, Plan, Protocol, ProtocolParams, ProtocolResult, cell_columns


class IvSweepParams(ProtocolParams):
    v_max_V: float = Field(2.0, gt=0, description="positive turning point V+ (V)")
    v_min_V: float = Field(-2.0, lt=0, description="negative turning point V− (V)")
    step_V: float = Field(0.02, gt=0, description="staircase step (V)")
    cycles: int = Field(1, ge=1, description="full loops per cell")
    compliance_A: float | None = Field(None, gt=0, description="current compliance (A); None = [limits] value")
    detect_rel: float = Field(0.01, gt=0, description="relative change of G that counts as switching")


def _ramp(a: float, b: float, step: float) -> np.ndarray:
    n = max(1, int(np.ceil(abs(b - a) / step - 1e-9)))
    return np.linspace(a, b, n + 1)[1:]


class IvSweep(Protocol):
    """Staircase I–V loops (0 → V+ → 0 → V− → 0) read at each step, with compliance."""

    name = "iv-sweep"
    Params = IvSweepParams
    default_cells = "0:0:0"
    params: IvSweepParams

    def staircase(self) -> tuple[np.ndarray, np.ndarray]:
        """(voltages, branch index) of one loop; the loop starts after 0 V and ends on 0 V."""
        p = self.params
        parts = [_ramp(0.0, p.v_max_V, p.step_V), _ramp(p.v_max_V, 0.0, p.step_V),
                 _ramp(0.0, p.v_min_V, p.step_V), _ramp(p.v_min_V, 0.0, p.step_V)]
        v = np.concatenate(parts)
        branch = np.concatenate([np.full(len(x), i) for i, x in enumerate(parts)])
        return v, branch

    def limit_items(self) -> Iterable[tuple[str, float, str]]:
        p = self.params
        v, _ = self.staircase()
        yield "max_voltage_V", float(np.abs(v).max()), "staircase |V|"
        if p.compliance_A is not None:
            yield "compliance_current_A", p.compliance_A, "compliance_A"

    def plan(self, cells: np.ndarray) -> Plan:
        v, _ = self.staircase()
        reads = len(v) * self.params.cycles * len(cells)
        return Plan(ops={"read_cell": reads}, reads=reads)

    def _run(self, backend: Any, cells: np.ndarray, rng: np.random.Generator, clock: Any) -> ProtocolResult:
        p = self.params
        comp = backend.limits.compliance_current_A if p.compliance_A is None else p.compliance_A
        v, branch = self.staircase()
        n, m = len(cells), len(v)
        cur = np.empty((n, p.cycles, m))
        for k, (t, r, c) in enumerate(cells.tolist()):
            for cy in range(p.cycles):
                for s in range(m):
                    cur[k, cy, s] = backend.read_cell(t, r, c, float(v[s]))
        hit = np.abs(cur) > comp
        i_meas = np.clip(cur, -comp, comp)
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(v != 0, cur / v, np.nan)
        cell, cyc, step = np.meshgrid(np.arange(n), np.arange(p.cycles), np.arange(m), indexing="ij")
        table = {**cell_columns(cells, cell.ravel()), "cycle": cyc.ravel(), "branch": branch[step.ravel()],
                 "step": step.ravel(), "v_V": v[step.ravel()], "i_A": i_meas.ravel(), "G_S": g.ravel(),
                 "compliance": hit.ravel().astype(np.int8)}
        units = {**CELL_UNITS, "cycle": "", "branch": "", "step": "", "v_V": "V", "i_A": "A", "G_S": "S",
                 "compliance": ""}
        v_set, v_reset = self._switching(v, g, p.detect_rel)
        summary = {"cells": n, "points_per_loop": m, "compliance_A": comp, "compliance_hits": int(hit.sum()),
                   "v_set_detected_V": v_set, "v_reset_detected_V": v_reset}
        return ProtocolResult(self.name, self.params_dict(), cells, table, units,
                              {"v_V": v, "i_A": i_meas, "G_S": g}, summary)

    @staticmethod
    def _switching(v: np.ndarray, g: np.ndarray, rel: float) -> tuple[list[float | None], list[float | None]]:
        """Per cell, the first V (first loop) where G changed by > rel from the previous step, per polarity."""
        out_set: list[float | None] = []
        out_reset: list[float | None] = []
        for gc in g[:, 0, :]:
            filled = gc.copy()  # G at 0 V is undefined: carry the last defined value over it
            for s in range(1, len(filled)):
                if not np.isfinite(filled[s]):
                    filled[s] = filled[s - 1]
            prev = np.concatenate([[np.nan], filled[:-1]])
            with np.errstate(divide="ignore", invalid="ignore"):
                moved = np.abs(gc - prev) > rel * np.abs(prev)
            pos = np.nonzero(moved & (v > 0))[0]
            neg = np.nonzero(moved & (v < 0))[0]
            out_set.append(float(v[pos[0]]) if pos.size else None)
            out_reset.append(float(v[neg[0]]) if neg.size else None)
        return out_set, out_reset
