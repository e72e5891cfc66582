"""``write-verify``: program cells to target conductances with read-back, a tolerance and a pulse budget.

Targets are ``targets_S`` (one per cell, or one for all) or drawn uniformly in [``target_low_S``,
``target_high_S``] from the protocol's random generator. Every iteration reads the unfinished cells; a cell with
|G − T| ≤ max(tolerance_S, tolerance_rel·T) has succeeded. Otherwise it gets n pulses of sign(T − G),

    n = clip(⌊gain·|T − G| / ΔG_est⌋, 1, min(max_pulses_per_step, budget left)),

where ΔG_est is the cell's measured step per pulse in that polarity (updated after every step that moved G the
right way: ΔG_est ← ½ΔG_est + ½|ΔG|/n). Until a polarity has an estimate (or with ``initial_step_S``), n
starts at 1 and doubles. A cell whose budget ``max_pulses`` is spent before it is within tolerance has failed.

Table (one row per cell): ``cell tile row col target_S G_S error_S success pulses iterations``; ``pulses`` is
exactly what was sent to the cell. Arrays: ``trace_G_S`` (iterations × cells) of the reads.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from pydantic import Field, model_validator

from crossbar_ctl.config import RunConfig
from crossbar_protocols.base import (CELL_UNITS, AccessParams, Plan, Protocol, ProtocolResult, PulseParams,
                                     cell_columns, devices_per_op)
from crossbar_protocols.cells import CellAccess, check_read_mode, pulse_ops, read_ops


class WriteVerifyParams(PulseParams, AccessParams):
    targets_S: list[float] | None = Field(None, description="target G per cell (S), or one value for all")
    target_low_S: float = Field(5e-9, gt=0, description="lowest random target (S) when targets_S is not given")
    target_high_S: float = Field(35e-9, gt=0, description="highest random target (S)")
    tolerance_S: float = Field(0.5e-9, ge=0, description="absolute tolerance |G − T| (S)")
    tolerance_rel: float = Field(0.0, ge=0, lt=1, description="relative tolerance (fraction of T)")
    max_pulses: int = Field(1000, ge=1, description="pulse budget per cell")
    max_pulses_per_step: int = Field(50, ge=1, description="most pulses per cell between two reads")
    gain: float = Field(0.7, gt=0, le=2, description="fraction of the estimated pulses sent per step")
    initial_step_S: float | None = Field(None, gt=0, description="ΔG per pulse to start from (S); None: learn it")

    @model_validator(mode="after")
    def _check(self) -> "WriteVerifyParams":
        if self.targets_S is None and self.target_high_S < self.target_low_S:
            raise ValueError("target_high_S must not be below target_low_S")
        if self.tolerance_S == 0 and self.tolerance_rel == 0:
            raise ValueError("give a tolerance: tolerance_S or tolerance_rel must be positive")
        return self


class WriteVerify(Protocol):
    """Program to targets with read-back; success rate and pulses used."""

    name = "write-verify"
    Params = WriteVerifyParams
    default_cells = "0:0:0-7"
    params: WriteVerifyParams

    def pulse_amplitudes(self) -> list[float]:
        return [self.params.v_set_V, self.params.v_reset_V]

    def largest_pulse_op(self, cells: np.ndarray) -> tuple[int, float]:
        p = self.params
        return min(p.max_pulses_per_step, p.max_pulses) * devices_per_op(cells, p.mode), p.width_s

    def limit_items(self) -> Iterable[tuple[str, float, str]]:
        p = self.params
        yield from self.pulse_limit_items(p.v_set_V, p.v_reset_V, p.v_read_V, p.width_s)
        yield "max_pulses_per_device", min(p.max_pulses_per_step, p.max_pulses), "max_pulses_per_step"

    def check_config(self, config: RunConfig) -> None:
        check_read_mode(config.read.v_read_V, self.params.mode, self.params.v_read_V)

    def plan(self, cells: np.ndarray) -> Plan:
        """Upper bound: every cell spends its whole budget one pulse per step."""
        p = self.params
        plan = Plan()
        plan.add_ops(read_ops(cells, p.mode), p.max_pulses + 1)
        plan.add_ops(pulse_ops(cells, p.mode), p.max_pulses)
        plan.reads = (p.max_pulses + 1) * len(cells)
        plan.pulses = p.max_pulses * len(cells)
        plan.pulse_time_s = plan.pulses * p.width_s
        return plan

    def targets(self, n: int, rng: np.random.Generator) -> np.ndarray:
        p = self.params
        if p.targets_S is None:
            return rng.uniform(p.target_low_S, p.target_high_S, n)
        t = np.asarray(p.targets_S, dtype=float)
        if t.size not in (1, n):
            raise ValueError(f"targets_S has {t.size} values for {n} cells (give one or one per cell)")
        return np.broadcast_to(t, (n,)).copy()

    def _run(self, backend: Any, cells: np.ndarray, rng: np.random.Generator, clock: Any) -> ProtocolResult:
        p = self.params
        n = len(cells)
        target = self.targets(n, rng)
        io = CellAccess(backend, cells, p.mode, p.v_read_V)
        tol = np.maximum(p.tolerance_S, p.tolerance_rel * target)
        step = np.full((2, n), np.nan if p.initial_step_S is None else p.initial_step_S)  # [up, down]
        trial = np.ones((2, n), dtype=np.int64)
        used = np.zeros(n, dtype=np.int64)
        iters = np.zeros(n, dtype=np.int64)
        success = np.zeros(n, dtype=bool)
        active = np.ones(n, dtype=bool)
        g = io.read()
        trace = [g.copy()]
        last_n = np.zeros(n, dtype=np.int64)
        g_prev = g.copy()
        while active.any():
            idx = np.nonzero(active)[0]
            # learn the step from the previous pulses
            moved = last_n[idx] != 0
            if moved.any():
                k = idx[moved]
                pol = (last_n[k] < 0).astype(int)
                dg = (g[k] - g_prev[k]) * np.sign(last_n[k])
                good = dg > 0
                est = dg / np.abs(last_n[k])
                old = step[pol, k]
                step[pol[good], k[good]] = np.where(np.isnan(old[good]), est[good], 0.5 * old[good] + 0.5 * est[good])
                trial[pol[~good], k[~good]] *= 2
            err = target[idx] - g[idx]
            ok = np.abs(err) <= tol[idx]
            success[idx[ok]] = True
            left = p.max_pulses - used[idx]
            out = ok | (left <= 0)
            active[idx[out]] = False
            idx, err, left = idx[~out], err[~out], left[~out]
            if idx.size == 0:
                break
            pol = (err < 0).astype(int)
            est = step[pol, idx]
            with np.errstate(invalid="ignore", divide="ignore"):
                want = np.floor(p.gain * np.abs(err) / est)
            want = np.where(np.isnan(want), trial[pol, idx], want)
            cnt = np.clip(want, 1, np.minimum(p.max_pulses_per_step, left)).astype(np.int64)
            counts = np.zeros(n, dtype=np.int64)
            counts[idx] = np.where(err > 0, cnt, -cnt)
            io.pulse(counts, p.v_set_V, p.v_reset_V, p.width_s)
            used[idx] += cnt
            iters[idx] += 1
            last_n = counts
            g_prev = g.copy()
            g_new = io.read(idx)
            g = np.where(np.isnan(g_new), g, g_new)
            trace.append(np.where(np.isnan(g_new), np.nan, g_new))
        err = g - target
        table = {**cell_columns(cells, np.arange(n)), "target_S": target, "G_S": g, "error_S": err,
                 "success": success.astype(np.int8), "pulses": used, "iterations": iters}
        units = {**CELL_UNITS, "target_S": "S", "G_S": "S", "error_S": "S", "success": "", "pulses": "pulses",
                 "iterations": ""}
        summary = {"cells": n, "success_rate": float(success.mean()), "succeeded": int(success.sum()),
                   "pulses_total": int(used.sum()), "pulses_mean": float(used.mean()),
                   "iterations_mean": float(iters.mean()), "tolerance_S": p.tolerance_S,
                   "error_rms_S": float(np.sqrt(np.mean(err ** 2)))}
        return ProtocolResult(self.name, self.params_dict(), cells, table, units,
                              {"trace_G_S": np.array(trace), "target_S": target}, summary)
