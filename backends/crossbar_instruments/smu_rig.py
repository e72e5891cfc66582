"""The emulated ``smu-matrix`` rig: a 2600B-like SMU and a 707B-like switch matrix, each a TSP instrument served
on its own TCP port, wired (as ``[smu_matrix]`` of the run config says) to an array whose devices are the
simulator (:class:`crossbar_sim.backend.SimBackend`).

Electrical model (nodal, no sneak paths): a matrix row carries the drive SMU's level, the sense SMU's level (when
its output is on) or ground; an array line takes the potential of the matrix rows closed onto its pin, or floats.
A device with both lines at defined potentials sees v = V_row − V_col; devices with a floating line carry no
current. A channel's measured current is the sum, over the devices on the lines it reaches, of the current out
of its HI terminal (each device read through the simulator's ``read_cell``, read noise included). A trigger-model
pulse train on a channel applies ``pulse_cell`` to every device whose |v| during the pulse exceeds the device
threshold (the simulator adds the half-select disturb of its neighbours).

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

from crossbar_ctl.config import MATRIX_COLUMNS, MATRIX_ROWS, RunConfig, SmuMatrixSection, config_from_dict, config_to_dict
from crossbar_ctl.errors import ProtocolError
from crossbar_instruments.tsp_interp import TspError, run_line

SMU_IDN = "Keithley Instruments Inc., Model 2602B, EMULATED, 3.3.5"
MATRIX_IDN = "Keithley Instruments Inc., Model 707B, EMULATED, 1.4.1"
TIMER_EVENT = 27.0
SOURCE_COMPLETE = {"smua": 2.0, "smub": 7.0}
_ENUMS = {"OUTPUT_DCVOLTS": 1.0, "OUTPUT_DCAMPS": 0.0, "OUTPUT_ON": 1.0, "OUTPUT_OFF": 0.0, "AUTORANGE_ON": 1.0,
          "AUTORANGE_OFF": 0.0, "ENABLE": 1.0, "DISABLE": 0.0, "SOURCE_IDLE": 0.0, "SOURCE_HOLD": 1.0}


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


class _TspInstrument:
    """A TSP instrument on a line link: the emulator servers' ``tester`` interface (handle, refuse, ...)."""

    idn = ""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.errors: list[tuple[int, str]] = []
        self.env: dict[str, Any] = {}
        self.safe_events: list[str] = []
        self.applied_seqs: list[int] = []

    @property
    def is_safe(self) -> bool:
        return self.rig.is_safe

    def handle(self, raw: bytes) -> bytes | None:
        try:
            line = raw.decode("ascii").rstrip("\r\n")
        except UnicodeDecodeError:
            self.errors.append((-285, "TSP Syntax error: non-ASCII input"))
            return None
        if line.strip() == "*IDN?":
            return (self.idn + "\n").encode("ascii")
        printed: list[str] = []
        with self.rig.lock:
            try:
                run_line(self, line, self.env, printed)
            except TspError as err:
                self.errors.append((err.code, err.message))
        return "".join(p + "\n" for p in printed).encode("ascii") or None

    def refuse(self, raw: bytes, code: int, detail: str = "injected fault") -> bytes | None:
        self.errors.append((code, detail))
        return None

    def framing_error(self, err: ProtocolError) -> bytes | None:
        self.errors.append((-285, f"TSP Syntax error: {err.message}"))
        return None

    def disconnected(self, reason: str = "disconnect") -> None:
        """A real instrument keeps its state when the client goes away."""

    def shutdown(self) -> None:
        with self.rig.lock:
            if not self.rig.is_safe:
                self.safe_events.append("emulator stopped with outputs on or relays closed: made safe")
            self.rig.make_safe()

    # ----------------------------------------------------------------- names common to both instruments
    def get(self, path: str) -> Any:
        if path == "errorqueue.count":
            return float(len(self.errors))
        raise TspError(-286, f"TSP Runtime error at line 1: attempt to index or read unknown '{path}'")

    def set(self, path: str, value: Any) -> None:
        raise TspError(-286, f"TSP Runtime error at line 1: cannot set '{path}'")

    def call(self, path: str, args: list[Any]) -> list[Any]:
        if path == "errorqueue.clear":
            self.errors.clear()
            return []
        if path == "errorqueue.next":
            if not self.errors:
                return [0.0, "Queue Is Empty", 0.0, 0.0]
            code, text = self.errors.pop(0)
            return [float(code), text, 2.0, 0.0]
        if path in ("waitcomplete", "delay"):
            return []
        raise TspError(-286, f"TSP Runtime error at line 1: attempt to call unknown function '{path}'")


class EmulatedSmu(_TspInstrument):
    """The SMU: two channels (``smua``, ``smub``), DC volts, measure i, trigger-model pulse trains."""

    idn = SMU_IDN

    def __init__(self, rig: Rig) -> None:
        super().__init__(rig)
        self.timer = {"delay": 1e-5, "count": 1.0, "passthrough": False, "stimulus": 0.0}
        self._reset()

    def _reset(self) -> None:
        self.rig.touch()
        for ch in ("smua", "smub"):
            self.rig.smu[ch] = {"func": 1.0, "levelv": 0.0, "limiti": 1e-4, "output": False, "nplc": 1.0,
                                "rangev": 200.0,
                                "source.autorangev": 1.0, "measure.autorangei": 1.0,
                                "trigger": {"measure.action": 1.0, "source.action": 0.0, "endpulse.action": 1.0,
                                            "endpulse.stimulus": 0.0, "arm.count": 1.0, "count": 1.0,
                                            "source.limiti": 1e-4, "list": []}}

    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        ch, _, rest = path.partition(".")
        if ch not in ("smua", "smub"):
            raise TspError(-286, f"TSP Runtime error at line 1: attempt to index unknown '{path}'")
        return ch, rest

    def get(self, path: str) -> Any:
        if path.startswith("trigger.timer[1]."):
            key = path.split(".", 2)[2]
            if key == "EVENT_ID":
                return TIMER_EVENT
            return self.timer[key]
        if not path.startswith(("smua.", "smub.")):
            return super().get(path)
        ch, rest = self._split(path)
        s = self.rig.smu[ch]
        if rest in _ENUMS:
            return _ENUMS[rest]
        if rest == "trigger.SOURCE_COMPLETE_EVENT_ID":
            return SOURCE_COMPLETE[ch]
        if rest == "source.output":
            return 1.0 if s["output"] else 0.0
        if rest == "source.compliance":
            return bool(s["output"]) and abs(self.rig.current_out(ch, noisy=False)) > s["limiti"]
        if rest.startswith("source.") and rest[7:] in s:
            return s[rest[7:]]
        raise TspError(-286, f"TSP Runtime error at line 1: attempt to index unknown '{path}'")

    def set(self, path: str, value: Any) -> None:
        self.rig.touch()
        self._set(path, value)
        self.rig.touch()

    def _set(self, path: str, value: Any) -> None:
        if path.startswith("trigger.timer[1]."):
            key = path.split(".", 2)[2]
            if key not in self.timer:
                raise TspError(-286, f"TSP Runtime error at line 1: cannot set '{path}'")
            self.timer[key] = value
            return
        ch, rest = self._split(path)
        s = self.rig.smu[ch]
        if rest == "source.levelv":
            v = float(value)
            if abs(v) > s["rangev"] * 1.01:  # the 2600B sources up to 101 % of the range
                raise TspError(1102, f"Parameter too big: {ch}.source.levelv {v:g} exceeds the {s['rangev']:g} V range")
            s["levelv"] = v
            if s["output"]:
                self.rig.check_dc(f"{ch}.source.levelv = {v:g}")
        elif rest == "source.output":
            if value and s["limiti"] <= 0:
                raise TspError(-221, "Settings conflict: no compliance set")
            s["output"] = bool(value)
            if s["output"]:
                self.rig.check_dc(f"{ch} output on")
        elif rest in ("source.func", "source.limiti", "measure.nplc", "source.rangev"):
            s[rest.split(".")[1]] = float(value)
        elif rest in ("source.autorangev", "measure.autorangei"):
            s[rest] = float(value)
        elif rest.startswith("trigger.") and rest[8:] in s["trigger"]:
            s["trigger"][rest[8:]] = value
        else:
            raise TspError(-286, f"TSP Runtime error at line 1: cannot set '{path}'")

    def call(self, path: str, args: list[Any]) -> list[Any]:
        if path == "reset":
            self.rig.make_safe()
            self._reset()
            return []
        if path.startswith(("smua.", "smub.")):
            ch, rest = self._split(path)
            s = self.rig.smu[ch]
            if rest == "measure.i":
                if not s["output"]:
                    raise TspError(5042, f"Cannot perform requested operation while {ch} output is off")
                i = self.rig.current_out(ch)
                return [float(np.clip(i, -s["limiti"], s["limiti"]))]
            if rest == "trigger.source.linearv":
                start, stop, points = args
                s["trigger"]["list"] = list(np.linspace(float(start), float(stop), int(points)))
                return []
            if rest == "trigger.initiate":
                self._pulse_train(ch)
                return []
        return super().call(path, args)

    def _pulse_train(self, ch: str) -> None:
        s = self.rig.smu[ch]
        tr = s["trigger"]
        ok = (tr["measure.action"] == 0.0 and tr["source.action"] == 1.0 and tr["endpulse.action"] == 0.0
              and tr["endpulse.stimulus"] == TIMER_EVENT and self.timer["stimulus"] == SOURCE_COMPLETE[ch])
        if not ok:
            raise TspError(-221, f"Settings conflict: {ch} trigger model is not set up for timed pulses")
        if not s["output"]:
            raise TspError(5042, f"Cannot perform requested operation while {ch} output is off")
        n = int(tr["count"])
        points = tr["list"]
        if len(points) != n or len(set(points)) != 1:
            raise TspError(-221, f"Settings conflict: {ch} source list has {len(points)} points, count {n}")
        if abs(float(points[0])) > s["rangev"] * 1.01:
            raise TspError(1102, f"Parameter too big: {ch} sweep level {points[0]:g} exceeds the {s['rangev']:g} V range")
        self.rig.pulse(ch, float(points[0]), float(self.timer["delay"]), n)


class EmulatedMatrix(_TspInstrument):
    """The switch matrix: crosspoints ``<slot><row><column>``, exclusive close, open, get closed."""

    idn = MATRIX_IDN

    def get(self, path: str) -> Any:
        if path in ("channel.BREAK_BEFORE_MAKE", "channel.MAKE_BEFORE_BREAK", "channel.OFF"):
            return {"channel.BREAK_BEFORE_MAKE": 1.0, "channel.MAKE_BEFORE_BREAK": 2.0, "channel.OFF": 0.0}[path]
        if path == "channel.connectrule":
            return self.env.get("_connectrule", 0.0)
        return super().get(path)

    def set(self, path: str, value: Any) -> None:
        if path == "channel.connectrule":
            self.env["_connectrule"] = value
            return
        super().set(path, value)

    @staticmethod
    def _parse(spec: Any) -> set[str]:
        if not isinstance(spec, str):
            raise TspError(-286, "TSP Runtime error at line 1: bad argument #1 (string expected)")
        out: set[str] = set()
        for item in (x.strip() for x in spec.split(",")):
            if not item:
                continue
            if len(item) != 4 or item[0] not in "123456" or item[1] not in MATRIX_ROWS or not item[2:].isdigit() \
                    or not 1 <= int(item[2:]) <= MATRIX_COLUMNS:
                raise TspError(1115, f"Parameter error: invalid channel {item!r}")
            out.add(item)
        return out

    def call(self, path: str, args: list[Any]) -> list[Any]:
        rig = self.rig
        if path == "reset":
            rig.switching(set())
            self.env.pop("_connectrule", None)
            return []
        if path == "channel.exclusiveclose":
            rig.switching(self._parse(args[0] if args else None))
            return []
        if path == "channel.close":
            rig.switching(rig.closed | self._parse(args[0] if args else None))
            return []
        if path == "channel.open":
            spec = args[0] if args else None
            rig.switching(set() if spec == "allslots" else rig.closed - self._parse(spec))
            return []
        if path == "channel.getclose":
            if args != ["allslots"]:
                raise TspError(1115, "Parameter error: only \"allslots\" is emulated")
            return [";".join(sorted(rig.closed)) if rig.closed else None]
        return super().call(path, args)


class EmulatedRig:
    """The SMU and the matrix of one :class:`Rig`, each on its own TCP port, served in background threads::

        with EmulatedRig(config).start() as emu:   # emu.address is "<SMU resource> <matrix resource>"
            ...                                   # emu.rig is the shared state (hazards, is_safe, dut)
    """

    def __init__(self, config: RunConfig, host: str = "127.0.0.1", smu_port: int = 0, matrix_port: int = 0) -> None:
        from crossbar_instruments.emulator import TcpEmulator

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
    import signal

    emu = EmulatedRig(config, host, smu_port, matrix_port)
    stop = threading.Event()
    main = threading.current_thread() is threading.main_thread()
    old = {}
    if main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        emu.start()
        print(emu.address, flush=True)
        while not stop.wait(0.05):
            pass
    finally:
        emu.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    rig = emu.rig
    events = "; ".join(emu.smu.safe_events + emu.matrix.safe_events) or "left safe by the client"
    print(f"crossbar-ctl emulate: smu-matrix rig stopped ({events}); outputs off, relays open, array left in its "
          f"safe state; {rig.pulses_applied} device pulses; hazards: {len(rig.hazards)}"
          + "".join(f"\n  hazard: {h}" for h in rig.hazards), file=sys.stderr, flush=True)
    return 1 if rig.hazards else 0


__all__ = ["Rig", "EmulatedSmu", "EmulatedMatrix", "EmulatedRig", "serve_rig"]
