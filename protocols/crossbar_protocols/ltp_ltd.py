"""``ltp-ltd``: potentiation then depression pulse trains with a read after every step.

Per cycle and cell: read G, then ``pulses_ltp/pulses_per_step`` steps of ``pulses_per_step`` pulses at
``v_set_V`` each followed by a read, then the same with ``pulses_ltd`` pulses at ``v_reset_V``. Optional
``prepare_pulses`` depressing pulses before the first cycle start every cell from its low state.

Table (one row per read): ``cell tile row col cycle pulse polarity G_S``; ``pulse`` counts pulses since the
start of the cycle (pulse #, 0 = the read before the first pulse), ``polarity`` is +1/−1 for the step that
led to this read (0 for the first read of a cycle). A neurosim-exp device follows, per pulse,

    G_LTP(P) = B_p(1 − e^(−P/A_p)) + Gmin,    G_LTD(P) = −B_d(1 − e^((P − Pmax_d)/A_d)) + Gmax

(:mod:`crossbar_protocols.fit` fits exactly this). Pulses at or below the switching threshold leave G as it was.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from pydantic import Field, model_validator

from crossbar_ctl.config import RunConfig
from crossbar_protocols.base import (CELL_UNITS, AccessParams, Plan, Protocol, ProtocolResult, PulseParams,
                                     cell_columns, devices_per_op)
from crossbar_protocols.cells import CellAccess, check_read_mode, pulse_ops, read_ops


class LtpLtdParams(PulseParams, AccessParams):
    pulses_ltp: int = Field(100, ge=1, description="potentiating pulses per cycle")
    pulses_ltd: int = Field(100, ge=1, description="depressing pulses per cycle")
    pulses_per_step: int = Field(1, ge=1, description="pulses between two reads")
    cycles: int = Field(3, ge=1, description="potentiation/depression cycles per cell")
    prepare_pulses: int = Field(0, ge=0, description="depressing pulses before the first cycle (one operation)")

    @model_validator(mode="after")
    def _steps(self) -> "LtpLtdParams":
        for key in ("pulses_ltp", "pulses_ltd"):
            if getattr(self, key) % self.pulses_per_step:
                raise ValueError(f"{key} must be a multiple of pulses_per_step ({self.pulses_per_step})")
        return self


class LtpLtd(Protocol):
    """Potentiation/depression trains with a read after every step, repeated for cycles and cells."""

    name = "ltp-ltd"
    Params = LtpLtdParams
    default_cells = "0:0:0-7"
    params: LtpLtdParams

    def pulse_amplitudes(self) -> list[float]:
        return [self.params.v_set_V, self.params.v_reset_V]

    def largest_pulse_op(self, cells: np.ndarray) -> tuple[int, float]:
        p = self.params
        return max(p.pulses_per_step, p.prepare_pulses) * devices_per_op(cells, p.mode), p.width_s

    def limit_items(self) -> Iterable[tuple[str, float, str]]:
        p = self.params
        yield from self.pulse_limit_items(p.v_set_V, p.v_reset_V, p.v_read_V, p.width_s)
        yield "max_pulses_per_device", p.pulses_per_step, "pulses_per_step"
        yield "max_pulses_per_device", p.prepare_pulses, "prepare_pulses"

    def steps(self) -> tuple[int, int]:
        p = self.params
        return p.pulses_ltp // p.pulses_per_step, p.pulses_ltd // p.pulses_per_step

    def plan(self, cells: np.ndarray) -> Plan:
        p = self.params
        n_up, n_dn = self.steps()
        plan = Plan()
        reads = p.cycles * (1 + n_up + n_dn)
        plan.add_ops(read_ops(cells, p.mode), reads)
        plan.add_ops(pulse_ops(cells, p.mode), p.cycles * (n_up + n_dn) + (1 if p.prepare_pulses else 0))
        plan.reads = reads * len(cells)
        plan.pulses = len(cells) * (p.prepare_pulses + p.cycles * (p.pulses_ltp + p.pulses_ltd))
        units = len(cells) if p.mode == "cell" else len(np.unique(cells[:, 0]))  # trains sent one after another
        plan.pulse_time_s = units * (p.cycles * (n_up + n_dn) * p.pulses_per_step + p.prepare_pulses) * p.width_s
        return plan

    def check_config(self, config: RunConfig) -> None:
        check_read_mode(config.read.v_read_V, self.params.mode, self.params.v_read_V)

    def _run(self, backend: Any, cells: np.ndarray, rng: np.random.Generator, clock: Any) -> ProtocolResult:
        p = self.params
        io = CellAccess(backend, cells, p.mode, p.v_read_V)
        n_up, n_dn = self.steps()
        k = p.pulses_per_step
        pulses_v = {1: p.v_set_V, -1: p.v_reset_V}
        if p.prepare_pulses:
            io.pulse(-p.prepare_pulses, p.v_set_V, p.v_reset_V, p.width_s)
        per_cycle = 1 + n_up + n_dn
        g = np.empty((p.cycles, per_cycle, len(cells)))
        pol = np.array([0] + [1] * n_up + [-1] * n_dn, dtype=np.int8)
        for c in range(p.cycles):
            g[c, 0] = io.read()
            for s in range(1, per_cycle):
                io.pulse(int(pol[s]) * k, pulses_v[1], pulses_v[-1], p.width_s)
                g[c, s] = io.read()
        n = len(cells)
        cyc, step, cell = np.meshgrid(np.arange(p.cycles), np.arange(per_cycle), np.arange(n), indexing="ij")
        table = {**cell_columns(cells, cell.ravel()), "cycle": cyc.ravel(), "pulse": step.ravel() * k,
                 "polarity": pol[step.ravel()], "G_S": g.ravel()}
        units = {**CELL_UNITS, "cycle": "", "pulse": "pulse #", "polarity": "", "G_S": "S"}
        up_end, dn_end = g[:, n_up], g[:, -1]
        summary = {
            "cells": n, "cycles": p.cycles, "pulses_sent": int(self.plan(cells).pulses),
            "g_min_observed_S": float(np.nanmin(g)), "g_max_observed_S": float(np.nanmax(g)),
            "g_after_ltp_mean_S": float(np.mean(up_end)), "g_after_ltd_mean_S": float(np.mean(dn_end)),
            "on_off_ratio_mean": float(np.mean(up_end / np.maximum(dn_end, 1e-30))),
            "max_abs_change_S": float(np.max(np.abs(g - g[:1, :1]))),
        }
        return ProtocolResult(self.name, self.params_dict(), cells, table, units, {"G_S": g}, summary)
