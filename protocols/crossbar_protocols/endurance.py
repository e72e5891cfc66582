"""``endurance``: set/reset cycles with reads, counting cycles until the on/off window closes.

One cycle per cell: ``pulses_set`` pulses at ``v_set_V`` (in operations of at most ``pulses_per_step``), read
G_on; ``pulses_reset`` pulses at ``v_reset_V`` the same way, read G_off. The window is the ratio G_on/G_off. A
cell has failed at the first cycle where the ratio stays below ``window_threshold`` for ``failure_reads``
consecutive cycles; cycles to failure is that cycle's number (1-based; the first cycle of the failing run). With
``stop_on_failure`` a failed cell is no longer cycled (the run ends when every cell failed or after ``cycles``).

Table: ``cell tile row col cycle G_on_S G_off_S ratio``. Summary: cycles to failure per cell (None = survived),
cycles run, pulses sent.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from pydantic import Field

from crossbar_ctl.config import RunConfig
from crossbar_protocols.base import (CELL_UNITS, AccessParams, Plan, Protocol, ProtocolResult, PulseParams,
                                     cell_columns, devices_per_op)
from crossbar_protocols.cells import CellAccess, check_read_mode, pulse_ops, read_ops


class EnduranceParams(PulseParams, AccessParams):
    pulses_set: int = Field(100, ge=1, description="potentiating pulses per cycle")
    pulses_reset: int = Field(100, ge=1, description="depressing pulses per cycle")
    pulses_per_step: int = Field(10, ge=1, description="most pulses per operation within a train")
    cycles: int = Field(100, ge=1, description="most cycles per cell")
    window_threshold: float = Field(2.0, gt=1, description="G_on/G_off below which the window counts as closed")
    failure_reads: int = Field(3, ge=1, description="consecutive closed-window cycles that make a failure")
    stop_on_failure: bool = Field(True, description="stop cycling a cell once it failed")


class Endurance(Protocol):
    """Potentiate/depress cycles with reads; cycles to failure when the on/off window closes."""

    name = "endurance"
    Params = EnduranceParams
    default_cells = "0:0:0-3"
    params: EnduranceParams

    def pulse_amplitudes(self) -> list[float]:
        return [self.params.v_set_V, self.params.v_reset_V]

    def largest_pulse_op(self, cells: np.ndarray) -> tuple[int, float]:
        p = self.params
        return min(p.pulses_per_step, max(p.pulses_set, p.pulses_reset)) * devices_per_op(cells, p.mode), p.width_s

    def limit_items(self) -> Iterable[tuple[str, float, str]]:
        p = self.params
        yield from self.pulse_limit_items(p.v_set_V, p.v_reset_V, p.v_read_V, p.width_s)
        yield "max_pulses_per_device", min(p.pulses_per_step, max(p.pulses_set, p.pulses_reset)), \
            "pulses_per_step"

    def check_config(self, config: RunConfig) -> None:
        check_read_mode(config.read.v_read_V, self.params.mode, self.params.v_read_V)

    def plan(self, cells: np.ndarray) -> Plan:
        p = self.params
        plan = Plan()
        plan.add_ops(pulse_ops(cells, p.mode), p.cycles * (len(self._train(p.pulses_set))
                                                           + len(self._train(p.pulses_reset))))
        plan.add_ops(read_ops(cells, p.mode), 2 * p.cycles)
        plan.reads = 2 * p.cycles * len(cells)
        plan.pulses = p.cycles * (p.pulses_set + p.pulses_reset) * len(cells)
        units = len(cells) if p.mode == "cell" else len(np.unique(cells[:, 0]))
        plan.pulse_time_s = p.cycles * (p.pulses_set + p.pulses_reset) * p.width_s * units
        return plan

    def _train(self, n: int) -> list[int]:
        """Pulses per operation of a train of n pulses."""
        k = self.params.pulses_per_step
        return [k] * (n // k) + ([n % k] if n % k else [])

    def _run(self, backend: Any, cells: np.ndarray, rng: np.random.Generator, clock: Any) -> ProtocolResult:
        p = self.params
        io = CellAccess(backend, cells, p.mode, p.v_read_V)
        n = len(cells)
        g_on = np.full((p.cycles, n), np.nan)
        g_off = np.full((p.cycles, n), np.nan)
        active = np.ones(n, dtype=bool)
        closed_run = np.zeros(n, dtype=np.int64)
        failed_at = np.zeros(n, dtype=np.int64)  # 0 = not failed
        sent = 0
        cycles_run = 0
        for cy in range(p.cycles):
            idx = np.nonzero(active)[0]
            if idx.size == 0:
                break
            cycles_run = cy + 1
            for k in self._train(p.pulses_set):
                sent += io.pulse(np.where(active, k, 0), p.v_set_V, p.v_reset_V, p.width_s)
            g_on[cy] = io.read(idx)
            for k in self._train(p.pulses_reset):
                sent += io.pulse(np.where(active, -k, 0), p.v_set_V, p.v_reset_V, p.width_s)
            g_off[cy] = io.read(idx)
            ratio = g_on[cy, idx] / np.maximum(g_off[cy, idx], 1e-30)
            closed = ratio < p.window_threshold
            closed_run[idx] = np.where(closed, closed_run[idx] + 1, 0)
            newly = idx[(closed_run[idx] >= p.failure_reads) & (failed_at[idx] == 0)]
            failed_at[newly] = cy + 2 - p.failure_reads
            if p.stop_on_failure:
                active[newly] = False
        ratio_all = g_on / np.maximum(g_off, 1e-30)
        cyc, cell = np.meshgrid(np.arange(cycles_run), np.arange(n), indexing="ij")
        keep = np.isfinite(g_on[:cycles_run]).ravel()
        table = {**cell_columns(cells, cell.ravel()[keep]), "cycle": cyc.ravel()[keep] + 1,
                 "G_on_S": g_on[:cycles_run].ravel()[keep], "G_off_S": g_off[:cycles_run].ravel()[keep],
                 "ratio": ratio_all[:cycles_run].ravel()[keep]}
        units = {**CELL_UNITS, "cycle": "cycle #", "G_on_S": "S", "G_off_S": "S", "ratio": ""}
        ctf = [int(f) if f else None for f in failed_at.tolist()]
        summary = {"cells": n, "cycles_run": cycles_run, "cycles_to_failure": ctf,
                   "failed": int(np.count_nonzero(failed_at)), "pulses_sent": int(sent),
                   "window_threshold": p.window_threshold,
                   "ratio_first_cycle_mean": float(np.nanmean(ratio_all[0])) if cycles_run else None}
        return ProtocolResult(self.name, self.params_dict(), cells, table, units,
                              {"G_on_S": g_on[:cycles_run], "G_off_S": g_off[:cycles_run]}, summary)
