"""The emulated ``smu-matrix`` rig: a 2600B-like SMU and a 707B-like switch matrix (the instruments are in
:mod:`crossbar_instruments.tsp_instruments`), each served on its own TCP port, wired (as ``[smu_matrix]`` of the run config says) to an array whose devices are the
simulator (:class:`crossbar_sim.backend.SimBackend`).

Electrical model (nodal, no sneak paths): a matrix row carries the drive SMU's level, the sense SMU's level (when
its output is on) or ground; an array line takes the potential of the matrix rows closed onto its pin, or floats.
A device with both lines at defined potentials sees v = V_row − V_col; devices with a floating line carry no
current. A channel's measured current is the sum, over the devices on the lines it reaches, of the current out
of its HI terminal (each device read through the simulator's ``read_cell``, read noise included). A trigger-model
pulse train on a channel (n pulses of the width timer's delay, one per period-timer event; see
:meth:`~crossbar_instruments.tsp_instruments.EmulatedSmu._pulse_train`) applies ``pulse_cell`` to every device
whose |v| during the pulse exceeds the device threshold (the simulator adds the half-select disturb of its
neighbours; the off time between pulses does not enter its physics).

The rig records hazards a real one would suffer and tests assert there are none: two matrix rows closed onto
one pin (a short between instruments), relays switched while a channel drives a nonzero level (hot switching),
and a DC level above the device threshold across a device. Like the real instruments, it does not make itself
safe when a client disconnects: only the driver (or stopping the emulator) does.
"""
from __future__ import annotations

import sys
import threading
from typing import Any

import numpy as np

from crossbar_ctl.config import RunConfig, SmuMatrixSection, config_from_dict, config_to_dict


class Rig:
    """The array and its wiring; both emulated instruments act on it under one lock."""

    def __init__(self, config: RunConfig) -> None:
        from crossbar_sim.backend import SimBackend

        if config.smu_matrix is None:
            raise ValueError("the emulated smu-matrix rig needs an [smu_matrix] section")
        self.wiring: SmuMatrixSection = config.smu_matrix
        data = config_to_dict(config)
        data["backend"] = {"kind": "sim"}
        self.dut = SimBackend(config_from_dict(data))
        self.lock = threading.RLock()
        self.closed: set[str] = set()  # matrix crosspoints "1A01"
        self.smu: dict[str, dict[str, Any]] = {}
        self.hazards: list[str] = []
        self.pulses_applied = 0
        self._version = 0  # bumped by every change of relays or SMU state (the cached voltages depend on it)
        self._cached: tuple[int, list[tuple[int, int, int, float]]] | None = None
        self._lines: dict[tuple[int, int], tuple[int, str, int]] = {}  # pin -> (tile, "row"|"col", index)
        for t in range(len(config.array.shapes())):
            rows, cols = self.wiring.pins(t)
            self._lines.update({pin: (t, "row", i) for i, pin in enumerate(rows)})
            self._lines.update({pin: (t, "col", j) for j, pin in enumerate(cols)})

    # ----------------------------------------------------------------- potentials
    def row_level(self, matrix_row: str, override: tuple[str, float] | None = None) -> float | None:
        w = self.wiring
        if matrix_row == w.ground_row:
            return 0.0
        ch = w.drive_smu if matrix_row == w.drive_row else w.sense_smu if matrix_row == w.sense_row else None
        if ch is None or not self.smu[ch]["output"]:
            return None
        if override is not None and override[0] == ch:
            return override[1]
        return self.smu[ch]["levelv"]

    def line_potentials(self, override: tuple[str, float] | None = None) -> dict[tuple[int, str, int], float]:
        """Potential of every array line that a closed crosspoint connects to a defined level."""
        out: dict[tuple[int, str, int], float] = {}
        for cid in self.closed:
            line = self._lines.get((int(cid[0]), int(cid[2:])))
            level = self.row_level(cid[1], override)
            if line is not None and level is not None:
                out[line] = level
        return out

    def touch(self) -> None:
        """Relays or SMU state changed: forget the cached device voltages."""
        self._version += 1

    def device_voltages(self, override: tuple[str, float] | None = None) -> list[tuple[int, int, int, float]]:
        """(tile, row, col, V_row − V_col) of every device with both lines at a defined, different potential."""
        if override is None and self._cached is not None and self._cached[0] == self._version:
            return self._cached[1]
        pot = self.line_potentials(override)
        out = []
        for (t, kind, i), vr in pot.items():
            if kind != "row":
                continue
            for (t2, kind2, j), vc in pot.items():
                if t2 == t and kind2 == "col" and vr != vc:
                    out.append((t, i, j, vr - vc))
        if override is None:
            self._cached = (self._version, out)
        return out

    # ----------------------------------------------------------------- physics
    def current_out(self, ch: str, noisy: bool = True) -> float:
        """Current out of ``ch``'s HI terminal (A): each device on a line ``ch`` reaches read through the
        simulator's ``read_cell`` (read noise included), or, with ``noisy=False``, the noise-free G·v (what the
        SMU's compliance circuit sees)."""
        w = self.wiring
        mrow = w.drive_row if ch == w.drive_smu else w.sense_row
        pins = {(int(c[0]), int(c[2:])) for c in self.closed if c[1] == mrow}
        reached = {self._lines[p] for p in pins if p in self._lines}
        total = 0.0
        g_true: dict[int, np.ndarray] = {}
        for t, i, j, v in self.device_voltages():
            sign = ((t, "row", i) in reached) - ((t, "col", j) in reached)
            if not sign:
                continue
            if abs(v) > self.dut.limits.max_voltage_V:
                return float("inf")
            if noisy:
                i_dev = self.dut.read_cell(t, i, j, v)
            else:
                if t not in g_true:
                    g_true[t] = self.dut.true_conductance(t)
                i_dev = float(g_true[t][i, j]) * v
            total += sign * i_dev
        return total

    def pulse(self, ch: str, level: float, width_s: float, count: int) -> None:
        th = self.dut.device.v_threshold_V
        for t, i, j, v in self.device_voltages(override=(ch, level)):
            if abs(v) > th:
                self.dut.pulse_cell(t, i, j, v, width_s, count)
                self.pulses_applied += count

    def check_dc(self, what: str) -> None:
        th = self.dut.device.v_threshold_V
        for t, i, j, v in self.device_voltages():
            if abs(v) > th:
                self.hazards.append(f"{what}: DC {v:g} V across tile {t} device ({i}, {j}) exceeds the "
                                    f"threshold {th:g} V")

    def switching(self, new: set[str]) -> None:
        """Relays change from ``self.closed`` to ``new``: record hot switching and shorts."""
        w = self.wiring
        if new != self.closed:
            for ch in (w.drive_smu, w.sense_smu):
                s = self.smu[ch]
                if s["output"] and s["levelv"] != 0.0:
                    self.hazards.append(f"relays switched while {ch} drives {s['levelv']:g} V")
        per_pin: dict[str, set[str]] = {}
        for cid in new:
            per_pin.setdefault(cid[0] + cid[2:], set()).add(cid[1])
        for pin, rows in per_pin.items():
            if len(rows) > 1:
                self.hazards.append(f"matrix rows {''.join(sorted(rows))} shorted together on pin {pin}")
        self.closed = new
        self.touch()

    @property
    def is_safe(self) -> bool:
        return not self.closed and not any(s["output"] for s in self.smu.values())

    def make_safe(self) -> None:
        for s in self.smu.values():
            s["levelv"] = 0.0
            s["output"] = False
        self.closed = set()
        self.touch()


class EmulatedRig:
    """The SMU and the matrix of one :class:`Rig`, each on its own TCP port, served in background threads::

        with EmulatedRig(config).start() as emu:   # emu.address is "<SMU resource> <matrix resource>"
            ...                                   # emu.rig is the shared state (hazards, is_safe, dut)
    """

    def __init__(self, config: RunConfig, host: str = "127.0.0.1", smu_port: int = 0, matrix_port: int = 0) -> None:
        from crossbar_instruments.emulator import TcpEmulator
        from crossbar_instruments.tsp_instruments import EmulatedMatrix, EmulatedSmu

        self.rig = Rig(config)
        self.smu, self.matrix = EmulatedSmu(self.rig), EmulatedMatrix(self.rig)
        self.servers = [TcpEmulator(config, host, smu_port, tester=self.smu),
                        TcpEmulator(config, host, matrix_port, tester=self.matrix)]

    @property
    def address(self) -> str:
        return f"{self.servers[0].address} {self.servers[1].address}"

    def start(self) -> "EmulatedRig":
        for s in self.servers:
            s.start()
        return self

    def stop(self) -> None:
        """Stop serving; the instruments are then switched off (as an operator would)."""
        for s in self.servers:
            s.stop()

    def __enter__(self) -> "EmulatedRig":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_rig(config: RunConfig, host: str = "127.0.0.1", smu_port: int = 0, matrix_port: int = 0) -> int:
    """``crossbar-ctl emulate --rig smu-matrix``: serve the SMU and the matrix on two TCP ports until
    SIGINT/SIGTERM; prints ``<SMU resource> <matrix resource>`` on stdout. Returns 0 if no hazard occurred."""
    from crossbar_instruments.emulator import stop_on_signals

    emu = EmulatedRig(config, host, smu_port, matrix_port)
    stop = threading.Event()
    with stop_on_signals(stop.set):
        try:
            emu.start()
            print(emu.address, flush=True)
            while not stop.wait(0.05):
                pass
        finally:
            emu.stop()
    rig = emu.rig
    events = "; ".join(emu.smu.safe_events + emu.matrix.safe_events) or "left safe by the client"
    print(f"crossbar-ctl emulate: smu-matrix rig stopped ({events}); outputs off, relays open, array left in its "
          f"safe state; {rig.pulses_applied} device pulses; hazards: {len(rig.hazards)}"
          + "".join(f"\n  hazard: {h}" for h in rig.hazards), file=sys.stderr, flush=True)
    return 1 if rig.hazards else 0


__all__ = ["Rig", "EmulatedRig", "serve_rig"]
