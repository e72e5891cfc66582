"""The emulated instruments of the ``smu-matrix`` rig: a 2600B-like SMU and a 707B-like switch matrix, each a TSP
instrument (:mod:`crossbar_instruments.tsp_interp` runs its lines) acting on a shared
:class:`~crossbar_instruments.smu_rig.Rig`. They answer the TSP subset of ``hil/PROTOCOL.md`` (second part) and
queue the errors a real one would (−285 syntax, −286 run time, 1102 parameter too big, 1115 bad channel, 5042
output off, −221 settings conflict). Served by :class:`crossbar_instruments.smu_rig.EmulatedRig`.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

from crossbar_ctl.config import MATRIX_COLUMNS, MATRIX_ROWS
from crossbar_ctl.errors import ProtocolError
from crossbar_instruments.tsp_interp import TspError, run_line

if TYPE_CHECKING:
    from crossbar_instruments.smu_rig import Rig

SMU_IDN = "Keithley Instruments Inc., Model 2602B, EMULATED, 3.3.5"
MATRIX_IDN = "Keithley Instruments Inc., Model 707B, EMULATED, 1.4.1"
_LOW_V = (0.1, 1.0, 6.0, 40.0)  # 2601B/2602B/2604B (and A): 100 mV, 1 V, 6 V, 40 V
_HIGH_V = (0.2, 2.0, 20.0, 200.0)  # 2611B/2612B/2614B, 2634B/2635B/2636B (and A): 200 mV, 2 V, 20 V, 200 V
SOURCE_RANGES_V = {**{m: _LOW_V for m in ("2601B", "2602B", "2604B", "2601A", "2602A")},
                   **{m: _HIGH_V for m in ("2611B", "2612B", "2614B", "2634B", "2635B", "2636B", "2611A", "2612A",
                                           "2635A", "2636A")}}
TIMERS = 8  # trigger.timer[1] ... trigger.timer[8]
TIMER_EVENT = {n: 40.0 + n for n in range(1, TIMERS + 1)}  # trigger.timer[N].EVENT_ID (emulator's numbering)
_CHANNEL_EVENTS = ("ARMED_EVENT_ID", "SWEEPING_EVENT_ID", "SOURCE_COMPLETE_EVENT_ID", "MEASURE_COMPLETE_EVENT_ID",
                   "PULSE_COMPLETE_EVENT_ID", "SWEEP_COMPLETE_EVENT_ID", "IDLE_EVENT_ID")
CHANNEL_EVENT = {ch: {name: base + k for k, name in enumerate(_CHANNEL_EVENTS)}
                 for ch, base in (("smua", 1.0), ("smub", 11.0))}  # smua.trigger.ARMED_EVENT_ID, ...
_ENUMS = {"OUTPUT_DCVOLTS": 1.0, "OUTPUT_DCAMPS": 0.0, "OUTPUT_ON": 1.0, "OUTPUT_OFF": 0.0, "AUTORANGE_ON": 1.0,
          "AUTORANGE_OFF": 0.0, "ENABLE": 1.0, "DISABLE": 0.0, "SOURCE_IDLE": 0.0, "SOURCE_HOLD": 1.0}
_TIMER_PATH = re.compile(r"trigger\.timer\[(\d+)\]\.(\w+)")


def model_of(idn: str) -> str:
    """The model of an ``*IDN?`` reply (``"Keithley Instruments Inc., Model 2602B, ..."`` -> ``"2602B"``)."""
    fields = [f.strip() for f in idn.split(",")]
    return fields[1].removeprefix("Model ").strip() if len(fields) > 1 else ""


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
    """The SMU: two channels (``smua``, ``smub``), DC volts, measure i, trigger-model pulse trains. ``idn`` picks
    the model, whose voltage source ranges it has (:data:`SOURCE_RANGES_V`): a fixed range is the lowest one
    covering the value set, and levels up to 101 % of it are sourced. ``trains`` records every pulse train run:
    (channel, level V, width s, period s, pulses)."""

    def __init__(self, rig: Rig, idn: str = SMU_IDN) -> None:
        super().__init__(rig)
        self.idn = idn
        model = model_of(idn)
        if model not in SOURCE_RANGES_V:
            raise ValueError(f"no emulated 2600 SMU model {model!r}; known: {', '.join(SOURCE_RANGES_V)}")
        self.ranges_V = SOURCE_RANGES_V[model]
        self.timers: dict[int, dict[str, Any]] = {}
        self.trains: list[tuple[str, float, float, float, int]] = []
        self._reset()

    def _reset(self) -> None:
        self.rig.touch()
        self.timers = {n: {"delay": 1e-5, "count": 1.0, "passthrough": False, "stimulus": 0.0}
                       for n in range(1, TIMERS + 1)}
        for ch in ("smua", "smub"):
            self.rig.smu[ch] = {"func": 1.0, "levelv": 0.0, "limiti": 1e-4, "output": False, "nplc": 1.0,
                                "rangev": self.ranges_V[0],
                                "source.autorangev": 1.0, "measure.autorangei": 1.0,
                                "trigger": {"measure.action": 1.0, "source.action": 0.0, "source.stimulus": 0.0,
                                            "endpulse.action": 1.0, "endpulse.stimulus": 0.0, "arm.count": 1.0,
                                            "count": 1.0, "source.limiti": 1e-4, "list": []}}

    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        ch, _, rest = path.partition(".")
        if ch not in ("smua", "smub"):
            raise TspError(-286, f"TSP Runtime error at line 1: attempt to index unknown '{path}'")
        return ch, rest

    def _timer(self, path: str) -> tuple[int, str]:
        """(N, attribute) of ``trigger.timer[N].attribute``."""
        m = _TIMER_PATH.fullmatch(path)
        if m is None or int(m.group(1)) not in self.timers:
            raise TspError(-286, f"TSP Runtime error at line 1: attempt to index unknown '{path}'")
        return int(m.group(1)), m.group(2)

    def level_limit_V(self, ch: str) -> float:
        """The largest |level| ``ch`` sources: 101 % of its fixed range, or of the top range when autoranging."""
        s = self.rig.smu[ch]
        return 1.01 * (self.ranges_V[-1] if s["source.autorangev"] else s["rangev"])

    def get(self, path: str) -> Any:
        if path.startswith("trigger.timer["):
            n, key = self._timer(path)
            if key == "EVENT_ID":
                return TIMER_EVENT[n]
            if key not in self.timers[n]:
                raise TspError(-286, f"TSP Runtime error at line 1: attempt to index unknown '{path}'")
            return self.timers[n][key]
        if not path.startswith(("smua.", "smub.")):
            return super().get(path)
        ch, rest = self._split(path)
        s = self.rig.smu[ch]
        if rest in _ENUMS:
            return _ENUMS[rest]
        if rest.startswith("trigger.") and rest[8:] in CHANNEL_EVENT[ch]:
            return CHANNEL_EVENT[ch][rest[8:]]
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
        if path.startswith("trigger.timer["):
            n, key = self._timer(path)
            if key not in self.timers[n]:
                raise TspError(-286, f"TSP Runtime error at line 1: cannot set '{path}'")
            self.timers[n][key] = value
            return
        ch, rest = self._split(path)
        s = self.rig.smu[ch]
        if rest == "source.levelv":
            v = float(value)
            if abs(v) > self.level_limit_V(ch):
                raise TspError(1102, f"Parameter too big: {ch}.source.levelv {v:g} exceeds the {s['rangev']:g} V range")
            s["levelv"] = v
            if s["output"]:
                self.rig.check_dc(f"{ch}.source.levelv = {v:g}")
        elif rest == "source.rangev":
            covering = [r for r in self.ranges_V if r >= abs(float(value))]
            if not covering:
                raise TspError(1102, f"Parameter too big: {ch}.source.rangev {float(value):g} exceeds the "
                                     f"{self.ranges_V[-1]:g} V range")
            s["rangev"] = covering[0]
        elif rest == "source.output":
            if value and s["limiti"] <= 0:
                raise TspError(-221, "Settings conflict: no compliance set")
            s["output"] = bool(value)
            if s["output"]:
                self.rig.check_dc(f"{ch} output on")
        elif rest in ("source.func", "source.limiti", "measure.nplc"):
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

    def _timer_of(self, event: Any) -> int | None:
        """The timer whose EVENT_ID ``event`` is, if any."""
        return next((n for n, e in TIMER_EVENT.items() if e == event), None)

    def _pulse_train(self, ch: str) -> None:
        """``trigger.initiate()`` of a pulse train: the source stimulus must be a period timer started by the arm
        event, the end-pulse stimulus a one-shot width timer started by the source action's completion, the period
        longer than the width, and the period timer must produce a source event for each of the
        ``trigger.count`` pulses (a real SMU would otherwise run the pulses together or wait forever)."""
        s = self.rig.smu[ch]
        tr = s["trigger"]
        ev = CHANNEL_EVENT[ch]
        period, width = self._timer_of(tr["source.stimulus"]), self._timer_of(tr["endpulse.stimulus"])
        if period is None:
            raise TspError(-221, f"Settings conflict: {ch}.trigger.source.stimulus is not a timer: the pulses would "
                                 f"run back to back")
        ok = (tr["measure.action"] == 0.0 and tr["source.action"] == 1.0 and tr["endpulse.action"] == 0.0
              and tr["arm.count"] == 1.0 and width is not None and width != period
              and self.timers[period]["stimulus"] == ev["ARMED_EVENT_ID"]
              and self.timers[width]["stimulus"] == ev["SOURCE_COMPLETE_EVENT_ID"]
              and self.timers[width]["count"] == 1.0 and self.timers[width]["passthrough"] is False)
        if not ok:
            raise TspError(-221, f"Settings conflict: {ch} trigger model is not set up for timed pulses")
        tp, tw = self.timers[period], self.timers[width]
        period_s, width_s = float(tp["delay"]), float(tw["delay"])
        if not period_s > width_s > 0:
            raise TspError(-221, f"Settings conflict: pulse period {period_s:g} s (timer {period}) is not longer than "
                                 f"the width {width_s:g} s (timer {width}): the pulses would run together")
        n = int(tr["count"])
        events = int(tp["count"]) + (1 if tp["passthrough"] else 0)
        if n < 1 or events < n:
            raise TspError(-221, f"Settings conflict: timer {period} gives {events} source event(s) for {ch}.trigger."
                                 f"count = {n} pulses: the trigger model would wait forever")
        if not s["output"]:
            raise TspError(5042, f"Cannot perform requested operation while {ch} output is off")
        points = tr["list"]
        if len(points) != n or len(set(points)) != 1:
            raise TspError(-221, f"Settings conflict: {ch} source list has {len(points)} points, count {n}")
        level = float(points[0])
        if abs(level) > self.level_limit_V(ch):
            raise TspError(1102, f"Parameter too big: {ch} sweep level {level:g} exceeds the {s['rangev']:g} V range")
        self.trains.append((ch, level, width_s, period_s, n))
        self.rig.pulse(ch, level, width_s, n)


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
