"""``array-map``: read every chosen device of a tile and, optionally, its response to pulse trains.

Read-only: one read of every cell (G0). With ``pulse_response`` (the default), per repeat: ``pulses_set``
potentiating pulses in steps of ``pulses_per_step`` with a read after every step (G_hi), ``pulses_reset``
depressing pulses the same way (G_lo), then one potentiating pulse and a read (the single-pulse step ΔG_up at
the low state). Estimates per device: Gmax ≈ max G_hi, Gmin ≈ min G_lo (a device at a bound reads the bound,
and with cycle-to-cycle noise it touches it during a long train), window = Gmax − Gmin. A device whose window is
below ``stuck_window_fraction`` × the median window is flagged stuck: 1 = stuck low (its G below the middle of
the median Gmin and Gmax), 2 = stuck high; 0 = works. The run leaves devices near their low state.

Default mode is ``parallel`` (a tile at a time: ``read_conductance`` and ``program``). Table (one row per cell):
``cell tile row col G0_S Gmin_S Gmax_S on_off dG_up_S stuck``; arrays ``t<k>_<name>`` hold per-tile maps
(NaN where a device was not chosen).
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from pydantic import Field

from crossbar_ctl.config import RunConfig
from crossbar_protocols.base import (CELL_UNITS, AccessParams, Mode, Plan, Protocol, ProtocolResult, PulseParams,
                                     cell_columns, devices_per_op)
from crossbar_protocols.cells import CellAccess, check_read_mode, pulse_ops, read_ops

STUCK_OK, STUCK_LOW, STUCK_HIGH = 0, 1, 2


class ArrayMapParams(PulseParams, AccessParams):
    mode: Mode = Field("parallel", description='"parallel": a tile per operation; "cell": a device per operation')
    pulse_response: bool = Field(True, description="also drive set/reset trains (Gmin/Gmax estimates, stuck devices)")
    pulses_set: int = Field(150, ge=1, description="potentiating pulses per train")
    pulses_reset: int = Field(150, ge=1, description="depressing pulses per train")
    pulses_per_step: int = Field(10, ge=1, description="pulses per operation within a train")
    repeats: int = Field(2, ge=1, description="set/reset trains per device")
    stuck_window_fraction: float = Field(0.1, gt=0, lt=1, description="window below this × median window = stuck")


class ArrayMap(Protocol):
    """Maps of G (and Gmin/Gmax estimates, single-pulse step, stuck devices) over a tile."""

    name = "array-map"
    Params = ArrayMapParams
    default_cells = "0:*:*"
    params: ArrayMapParams

    def pulse_amplitudes(self) -> list[float]:
        return [self.params.v_set_V, self.params.v_reset_V] if self.params.pulse_response else []

    def largest_pulse_op(self, cells: np.ndarray) -> tuple[int, float]:
        p = self.params
        return min(p.pulses_per_step, max(p.pulses_set, p.pulses_reset)) * devices_per_op(cells, p.mode), p.width_s

    def limit_items(self) -> Iterable[tuple[str, float, str]]:
        p = self.params
        if p.v_read_V is not None:
            yield "max_voltage_V", abs(p.v_read_V), "v_read_V"
        if p.pulse_response:
            yield from self.pulse_limit_items(p.v_set_V, p.v_reset_V, None, p.width_s)
            yield "max_pulses_per_device", min(p.pulses_per_step, max(p.pulses_set, p.pulses_reset)), \
                "pulses_per_step"

    def check_config(self, config: RunConfig) -> None:
        check_read_mode(config.read.v_read_V, self.params.mode, self.params.v_read_V)

    def _trains(self) -> tuple[list[int], list[int]]:
        p = self.params
        split = lambda n: [p.pulses_per_step] * (n // p.pulses_per_step) + (  # noqa: E731
            [n % p.pulses_per_step] if n % p.pulses_per_step else [])
        return split(p.pulses_set), split(p.pulses_reset)

    def plan(self, cells: np.ndarray) -> Plan:
        p = self.params
        plan = Plan()
        up, dn = self._trains()
        reads = 1 + (p.repeats * (len(up) + len(dn) + 1) if p.pulse_response else 0)
        plan.add_ops(read_ops(cells, p.mode), reads)
        plan.reads = reads * len(cells)
        if p.pulse_response:
            plan.add_ops(pulse_ops(cells, p.mode), p.repeats * (len(up) + len(dn) + 1))
            plan.pulses = p.repeats * (p.pulses_set + p.pulses_reset + 1) * len(cells)
            units = len(cells) if p.mode == "cell" else len(np.unique(cells[:, 0]))
            plan.pulse_time_s = p.repeats * (p.pulses_set + p.pulses_reset + 1) * p.width_s * units
        return plan

    def _run(self, backend: Any, cells: np.ndarray, rng: np.random.Generator, clock: Any) -> ProtocolResult:
        p = self.params
        io = CellAccess(backend, cells, p.mode, p.v_read_V)
        n = len(cells)
        g0 = io.read()
        cols: dict[str, np.ndarray] = {"G0_S": g0}
        nan = np.full(n, np.nan)
        g_max, g_min, dg_up, stuck = nan.copy(), nan.copy(), nan.copy(), np.zeros(n, dtype=np.int8)
        if p.pulse_response:
            up, dn = self._trains()
            hi, lo, step = [], [], []
            for _ in range(p.repeats):
                for k in up:
                    io.pulse(k, p.v_set_V, p.v_reset_V, p.width_s)
                    hi.append(io.read())
                for k in dn:
                    io.pulse(-k, p.v_set_V, p.v_reset_V, p.width_s)
                    lo.append(io.read())
                io.pulse(1, p.v_set_V, p.v_reset_V, p.width_s)
                step.append(io.read() - lo[-1])
            g_max, g_min = np.max(hi, axis=0), np.min(lo, axis=0)
            dg_up = np.mean(step, axis=0)
            window = g_max - g_min
            med = float(np.median(window))
            bad = window < p.stuck_window_fraction * med
            mid = 0.5 * (float(np.median(g_min)) + float(np.median(g_max)))
            level = 0.5 * (g_max + g_min)
            stuck[bad] = np.where(level[bad] < mid, STUCK_LOW, STUCK_HIGH)
        with np.errstate(divide="ignore", invalid="ignore"):
            on_off = g_max / g_min
        cols.update({"Gmin_S": g_min, "Gmax_S": g_max, "on_off": on_off, "dG_up_S": dg_up, "stuck": stuck})
        table = {**cell_columns(cells, np.arange(n)), **cols}
        units = {**CELL_UNITS, "G0_S": "S", "Gmin_S": "S", "Gmax_S": "S", "on_off": "", "dG_up_S": "S",
                 "stuck": "0 ok, 1 low, 2 high"}
        arrays: dict[str, np.ndarray] = {}
        for t in np.unique(cells[:, 0]).tolist():
            sel = cells[:, 0] == t
            shape = backend.shape(t)
            for name, vals in cols.items():
                m = np.full(shape, -1 if name == "stuck" else np.nan,
                            dtype=np.int8 if name == "stuck" else np.float64)
                m[cells[sel, 1], cells[sel, 2]] = vals[sel]
                arrays[f"t{t}_{name}"] = m
        summary: dict[str, Any] = {"cells": n, "tiles": sorted(set(cells[:, 0].tolist())),
                                   "G0_median_S": float(np.median(g0)), "pulse_response": p.pulse_response}
        if p.pulse_response:
            summary.update({
                "Gmin_median_S": float(np.median(g_min)), "Gmax_median_S": float(np.median(g_max)),
                "on_off_median": float(np.nanmedian(on_off)), "stuck_low": int(np.sum(stuck == STUCK_LOW)),
                "stuck_high": int(np.sum(stuck == STUCK_HIGH)), "stuck_fraction": float(np.mean(stuck > 0)),
                "stuck_cells": cells[stuck > 0].tolist()})
        return ProtocolResult(self.name, self.params_dict(), cells, table, units, arrays, summary)
