"""``iv-sweep``: a voltage sweep 0 → V+ → 0 → V− → 0, staircase or pulsed, with a current read at every step.

``mode = "staircase"``: at each step the cell is read with ``read_cell`` at the step voltage, I = G·V. A read
above the switching threshold is also a pulse (on a real device, and in the simulator: one pulse of that
amplitude and width ``[device].width_ref_s``), so G changes only at steps with |V| > V_th: the up and down branches
coincide below the threshold of the first crossing and split above it, which opens the I–V loop. The Backend's
``read_cell`` takes no duration, so ``width_s`` is the nominal dwell per step (limit, energy and time estimate);
the dwell itself is the instrument's read.

``mode = "pulsed"``: each step is one ``pulse_cell`` of ``width_s`` at the step voltage (none at 0 V), then a
``read_cell`` at the read voltage ``v_read_V`` (default ``[read].v_read_V``, at most the switching threshold):
the remanent state after each pulse, as labs measure it. ``i_A`` is then the read current and ``G_S`` the
remanent conductance; the pulse's own current is not measured (``pulse_cell`` returns nothing).

Compliance: ``compliance_A`` (default ``[limits].compliance_current_A``) must not exceed
``[limits].compliance_current_A``; that is checked before anything is sent. The Backend API has no compliance
argument on ``read_cell``/``pulse_cell``: an instrument limits current at the rig's
``[limits].compliance_current_A`` (its driver sets that), so on an instrument a lower ``compliance_A`` is refused
before anything is sent (lower the rig's limit instead); the simulator limits nothing, and there a lower
``compliance_A`` is a threshold of this protocol: every point whose measured
|I| ≥ ``compliance_A`` is flagged in the ``compliance`` column (1) and counted in the summary; ``i_A`` is the
current as measured, never clamped.

Table: ``cell tile row col cycle branch step v_V v_read_V i_A G_S compliance`` with branch 0: 0→V+, 1: V+→0,
2: 0→V−, 3: V−→0; ``i_A`` is measured at ``v_read_V`` (= ``v_V`` in staircase mode) and G = I/``v_read_V``.
Summary: the first voltage of each polarity where G moved by more than ``detect_rel``.
"""
from __future__ import annotations

from typing import Any, Iterable, Literal

import numpy as np
from pydantic import Field, model_validator

from crossbar_ctl.config import RunConfig
from crossbar_ctl.errors import ConfigError
from crossbar_protocols.base import CELL_UNITS, Plan, Protocol, ProtocolParams, ProtocolResult, cell_columns


class IvSweepParams(ProtocolParams):
    v_max_V: float = Field(2.0, gt=0, description="positive turning point V+ (V)")
    v_min_V: float = Field(-2.0, lt=0, description="negative turning point V− (V)")
    step_V: float = Field(0.02, gt=0, description="staircase step (V)")
    cycles: int = Field(1, ge=1, description="full loops per cell")
    mode: Literal["staircase", "pulsed"] = Field(
        "staircase", description='"staircase": read at each step voltage; "pulsed": a pulse at each step '
                                 'voltage, then a read at v_read_V (the remanent state)')
    width_s: float = Field(1e-6, gt=0, description="pulse width (pulsed) or nominal dwell per step (staircase) (s)")
    v_read_V: float | None = Field(None, description="pulsed: read voltage (V); None = [read].v_read_V of the rig")
    compliance_A: float | None = Field(None, gt=0, description="current compliance (A); None = [limits] value")
    detect_rel: float = Field(0.01, gt=0, description="relative change of G that counts as switching")

    @model_validator(mode="after")
    def _read_voltage(self) -> "IvSweepParams":
        if self.v_read_V is not None and self.mode != "pulsed":
            raise ValueError('v_read_V applies to mode "pulsed" only (staircase reads at the step voltage)')
        if self.v_read_V == 0:
            raise ValueError("v_read_V must be nonzero (G = I/V)")
        return self


def _ramp(a: float, b: float, step: float) -> np.ndarray:
    n = max(1, int(np.ceil(abs(b - a) / step - 1e-9)))
    return np.round(np.linspace(a, b, n + 1)[1:], 12)  # 1.2, not 1.2000000000000002: thresholds are exact


class IvSweep(Protocol):
    """I–V loops 0 → V+ → 0 → V− → 0, staircase or pulsed, read at each step, with a compliance flag."""

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

    def pulse_amplitudes(self) -> list[float]:
        """The sweep's extremes V+ and V−: every step is a pulse on the device once above its threshold."""
        return [self.params.v_max_V, self.params.v_min_V]

    def largest_pulse_op(self, cells: np.ndarray) -> tuple[int, float]:
        """One device per operation, for ``width_s``."""
        return 1, self.params.width_s

    def limit_items(self) -> Iterable[tuple[str, float, str]]:
        p = self.params
        v, _ = self.staircase()
        yield "max_voltage_V", float(np.abs(v).max()), "staircase |V|"
        yield "max_pulse_width_s", p.width_s, "width_s"
        if p.v_read_V is not None:
            yield "max_voltage_V", abs(p.v_read_V), "v_read_V"
        if p.compliance_A is not None:
            yield "compliance_current_A", p.compliance_A, "compliance_A"

    def check_config(self, config: RunConfig) -> None:
        """An instrument applies the rig's compliance, not a lower one of the sweep: refused there (a device
        would see more current than asked for). Pulsed mode: the read voltage must not switch the device itself
        (|v_read| ≤ [device].v_threshold_V)."""
        p = self.params
        rig_A = float(config.limits.compliance_current_A)
        if p.compliance_A is not None and p.compliance_A < rig_A and config.backend.kind != "sim":
            raise ConfigError(f"iv-sweep: compliance_A = {p.compliance_A:g} A is below the rig's "
                              f"[limits].compliance_current_A = {rig_A:g} A, which is what the {config.backend.kind!r} "
                              "backend sets on the instrument (read_cell/pulse_cell take no compliance of their own); "
                              "set [limits].compliance_current_A to the sweep's compliance instead")
        if p.mode != "pulsed":
            return
        v_read = config.read.v_read_V if p.v_read_V is None else p.v_read_V
        v_th = float(config.device.v_threshold_V)
        if abs(v_read) > v_th:
            raise ConfigError(f"iv-sweep pulsed: read voltage {v_read:g} V is above the switching threshold "
                              f"{v_th:g} V ([device].v_threshold_V): the read would move the remanent state")

    def plan(self, cells: np.ndarray) -> Plan:
        """Without a device: every nonzero step counts as a device pulse (an upper bound)."""
        return self._plan(cells, None)

    def plan_on(self, cells: np.ndarray, device: Any) -> Plan:
        """Staircase: every read at |V| ≥ ``device.v_threshold_V`` counts as a device pulse."""
        return self._plan(cells, float(device.v_threshold_V))

    def _plan(self, cells: np.ndarray, v_threshold_V: float | None) -> Plan:
        p = self.params
        v, _ = self.staircase()
        steps = len(v) * p.cycles * len(cells)
        if p.mode == "pulsed":
            pulses = int(np.count_nonzero(v)) * p.cycles * len(cells)
            ops = {"pulse_cell": pulses, "read_cell": steps}
        else:
            above = np.abs(v) >= v_threshold_V if v_threshold_V is not None else v != 0
            pulses = int(np.count_nonzero(above)) * p.cycles * len(cells)
            ops = {"read_cell": steps}
        return Plan(ops=ops, reads=steps, pulses=pulses, pulse_time_s=pulses * p.width_s)

    def _run(self, backend: Any, cells: np.ndarray, rng: np.random.Generator, clock: Any) -> ProtocolResult:
        p = self.params
        comp = backend.limits.compliance_current_A if p.compliance_A is None else p.compliance_A
        pulsed = p.mode == "pulsed"
        v_read = float(backend.config.read.v_read_V if p.v_read_V is None else p.v_read_V)
        v, branch = self.staircase()
        v_meas = np.full(len(v), v_read) if pulsed else v
        n, m = len(cells), len(v)
        cur = np.empty((n, p.cycles, m))
        sent = 0
        for k, (t, r, c) in enumerate(cells.tolist()):
            for cy in range(p.cycles):
                for s in range(m):
                    if pulsed and v[s] != 0:
                        backend.pulse_cell(t, r, c, float(v[s]), p.width_s, 1)
                        sent += 1
                    cur[k, cy, s] = backend.read_cell(t, r, c, float(v_meas[s]))
        hit = np.abs(cur) >= comp
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(v_meas != 0, cur / v_meas, np.nan)
        cell, cyc, step = np.meshgrid(np.arange(n), np.arange(p.cycles), np.arange(m), indexing="ij")
        s_idx = step.ravel()
        table = {**cell_columns(cells, cell.ravel()), "cycle": cyc.ravel(), "branch": branch[s_idx],
                 "step": s_idx, "v_V": v[s_idx], "v_read_V": v_meas[s_idx], "i_A": cur.ravel(), "G_S": g.ravel(),
                 "compliance": hit.ravel().astype(np.int8)}
        units = {**CELL_UNITS, "cycle": "", "branch": "", "step": "", "v_V": "V", "v_read_V": "V", "i_A": "A",
                 "G_S": "S", "compliance": "1 = |I| at or above compliance_A"}
        v_set, v_reset = self._switching(v, g, p.detect_rel)
        summary = {"cells": n, "mode": p.mode, "points_per_loop": m, "compliance_A": comp,
                   "compliance_hits": int(hit.sum()), "pulse_cell_pulses": sent,
                   "v_read_V": v_read if pulsed else None,
                   "v_set_detected_V": v_set, "v_reset_detected_V": v_reset}
        return ProtocolResult(self.name, self.params_dict(), cells, table, units,
                              {"v_V": v, "i_A": cur, "G_S": g}, summary)

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
