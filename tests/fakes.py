"""A recording backend for controller tests: exact linear devices, every call kept for inspection."""
from __future__ import annotations

import numpy as np

from crossbar_ctl.backend import Backend, Capabilities
from crossbar_ctl.config import RunConfig


class RecordingBackend(Backend):
    """Ideal linear devices (ΔG = n·step, clipped); ``outer_pulse`` applies its exact expectation."""

    kind = "recording"

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        dev = config.device
        self.step = dev.mean_step_S()
        self.g_min, self.g_max = dev.g_min_S, dev.g_max_S
        self.G = [np.full(s, dev.g_min_S) for s in config.array.shapes()]
        self.calls: list[tuple] = []

    def _capabilities(self) -> Capabilities:
        return Capabilities(tile_shapes=tuple(self.config.array.shapes()),
                            outer_modes=("stochastic", "expected", "nearest"))

    def _read_vmm(self, tile, v):
        self.calls.append(("read_vmm", tile, v.copy()))
        return v.astype(np.float64) @ self.G[tile]

    def _read_vmm_t(self, tile, v):
        self.calls.append(("read_vmm_t", tile, v.copy()))
        return v.astype(np.float64) @ self.G[tile].T

    def _read_conductance(self, tile):
        self.calls.append(("read_conductance", tile))
        return self.G[tile].copy()

    def _read_cell(self, tile, row, col, v):
        return self.G[tile][row, col] * v

    def _outer_pulse(self, tile, p, q, polarity, slots, mode, v, w):
        self.calls.append(("outer_pulse", tile, p.copy(), q.copy(), polarity, slots, mode))
        g = self.G[tile] + polarity * slots * np.outer(p, q) * self.step
        self.G[tile] = np.clip(g, self.g_min, self.g_max)

    def _program(self, tile, pulses, vs, vr, w):
        self.calls.append(("program", tile, pulses.copy()))
        self.G[tile] = np.clip(self.G[tile] + pulses * self.step, self.g_min, self.g_max)

    def _pulse_cell(self, tile, row, col, v, w, count):
        self.calls.append(("pulse_cell", tile, row, col, v, w, count))

    def kinds(self) -> list[str]:
        return [c[0] for c in self.calls]
