"""SmuMatrixBackend (kind ``"smu-matrix"``): a Keithley 2600B SMU whose two channels reach the array through a
707B/708B switch matrix, driven over VISA in TSP. The commands are those of :mod:`crossbar_instruments.tsp`
(listed in ``hil/PROTOCOL.md``); the wiring is the ``[smu_matrix]`` section of the run config.

Device-level operations are native: the matrix connects the selected row to the drive SMU and the selected
column to the sense SMU (and, with ``unselected = "half-select"``, every other line of the tile to ground):

* ``read_cell``: row at V_read, column held at 0 V by the sense SMU, I_device = −I_sense (the current flows
  from the row into the sense channel's HI); with unselected lines grounded only the selected device has a
  voltage across it on that column, so the reading is that device alone.
* ``pulse_cell``: ``half-select`` puts the column at −V/2 (a DC level, ramped) and pulses the row to +V/2, so
  the selected device sees V and every half-selected one V/2 (refused if V/2 exceeds the device threshold);
  ``float`` pulses the row to V with the column at 0 V and the other lines open. A train of n pulses is one
  trigger-model run: a pulse every ``width + pulse_off_s`` (timer 1), each ended after ``width`` (timer 2).

Everything else is composed, device by device, and declared slow in :attr:`capabilities`:
``read_conductance`` reads every device; ``read_vmm``/``read_vmm_t`` read every device and return v·G (an ideal
multiply of the measured conductances); ``program`` pulses each device with a nonzero count in row-major order;
``outer_pulse`` draws each device's coincidence count on the host (Binomial(slots, p_i q_j), or the rounded mean)
from the run seed and programs it.

Safety: every value is checked against ``[limits]`` (by :class:`~crossbar_ctl.backend.Backend`) and the rig's
own bounds (shortest pulse, half-select threshold) before the first byte of an operation is sent. That check is
the voltage guard: the fixed source range is not one (the SMU selects the next range up, e.g. 6 V for a 3 V
``max_voltage_V`` on a 2602B, and would source up to 101 % of it). The SMU must identify as a dual-channel
2600A/B (:data:`SMU_MODELS`) and the matrix as a 707*/708*; an instrument that does not is sent nothing but
``*IDN?``. Compliance
is set in the same line as every output-on; DC level changes larger than ``ramp_step_V`` are ramped; the
matrix switches only with both channels at 0 V (break before make); any failure in an operation, and
``close()``, ramp the levels to 0 V, switch the outputs off and open every relay.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, ClassVar

import numpy as np

from crossbar_ctl.backend import Backend, Capabilities
from crossbar_ctl.config import RunConfig, SmuMatrixSection
from crossbar_ctl.errors import BackendError, ConnectionLostError, InstrumentError, InstrumentTimeoutError, LimitError
from crossbar_instruments import tsp
from crossbar_instruments.transport import Transport, VisaTransport

log = logging.getLogger(__name__)
MAX_LINE = 1 << 16
MAX_ERRORS_DRAINED = 16
# Dual-channel 2600A/B SMUs only: the rig drives with one channel and senses with the other (drive_smu and
# sense_smu must differ), so a single-channel 2601B/2611B/2635B (no smub) or a 2651A/2657A cannot serve it.
SMU_MODELS = ("2602B", "2604B", "2612B", "2614B", "2634B", "2636B", "2602A", "2612A", "2636A")
MATRIX_MODELS = ("707", "708")  # families: 707A/707B, 708A/708B


class TspLink:
    """One TSP instrument on a transport: ``query`` one printed line, ``run`` a checked line (error count)."""

    def __init__(self, name: str, transport: Transport) -> None:
        self.name = name
        self.t = transport
        self.lines: list[str] = []  # every line sent (diagnostics; the tests pin the bytes on the transport)

    def open(self) -> None:
        self.t.open()

    def close(self) -> None:
        self.t.close()

    def query(self, line: str) -> bytes:
        self.lines.append(line)
        self.t.write(line.encode("ascii") + b"\n")
        return self.t.read_line(MAX_LINE)

    def run(self, line: str) -> None:
        """Send a line made by :func:`tsp.checked`; raise the instrument's first queued error if it reports any
        (a line that fails to run prints nothing: the timeout is then explained from the error queue)."""
        try:
            reply = self.query(line)
        except InstrumentTimeoutError as err:
            self.raise_queued(err)
            raise
        n = tsp.count(tsp.fields(reply, 1, f"{self.name} error count")[0], reply, f"{self.name} error count")
        if n:
            self.raise_queued(None, n)

    def run_reopening(self, line: str, retries: int, backoff_s: float) -> None:
        """:meth:`run` for idempotent lines (the safe state): on a lost link, reopen it (``retries`` attempts,
        back-off doubling) and send the line again."""
        delay = backoff_s
        for attempt in range(retries + 1):
            try:
                self.run(line)
                return
            except ConnectionLostError:
                if attempt == retries:
                    raise
                log.warning("%s link lost; reopening to leave the rig safe (attempt %d)", self.name, attempt + 1)
                time.sleep(delay)
                delay *= 2
                self.t.close()
                try:
                    self.t.open()
                except ConnectionLostError:
                    continue

    def raise_queued(self, cause: BaseException | None, n: int | None = None) -> None:
        """Raise the first entry of the error queue (the rest are drained into the message), if there is one."""
        if n is None:
            try:
                reply = self.query(tsp.ERRCOUNT)
                n = tsp.count(tsp.fields(reply, 1, f"{self.name} error count")[0], reply, f"{self.name} error count")
            except BackendError:
                return  # the instrument is not answering at all: the caller re-raises its own error
        if not n:
            return
        errors = [tsp.error_entry(self.query(tsp.ERRNEXT), self.name) for _ in range(min(n, MAX_ERRORS_DRAINED))]
        first = errors[0]
        more = "; ".join(f"{e.code}: {e.text}" for e in errors[1:])
        raise InstrumentError(first.code, first.text + (f" (also queued: {more})" if more else "")) from cause


class SmuMatrixBackend(Backend):
    """The ``smu-matrix`` rig. ``smu_transport``/``matrix_transport`` override the VISA links (tests)."""

    kind: ClassVar[str] = "smu-matrix"

    def __init__(self, config: RunConfig, smu_transport: Callable[[], Transport] | None = None,
                 matrix_transport: Callable[[], Transport] | None = None) -> None:
        super().__init__(config)
        if config.smu_matrix is None:
            raise BackendError('backend kind "smu-matrix" needs an [smu_matrix] section')
        self.rig: SmuMatrixSection = config.smu_matrix
        b = config.backend
        make = lambda address: VisaTransport(address, b.timeout_s, b.visa_library)  # noqa: E731
        self.smu = TspLink("SMU", (smu_transport or (lambda: make(b.address)))())
        self.matrix = TspLink("matrix", (matrix_transport or (lambda: make(self.rig.matrix_address)))())
        self.drive, self.sense = self.rig.drive_smu, self.rig.sense_smu
        self.channels = (self.drive, self.sense)
        self._compliance = config.limits.compliance_current_A
        self._level = {ch: 0.0 for ch in self.channels}
        self._uncertain: set[str] = set()
        self._outputs_on = False
        self._connected: tuple[int, int, int] | None = None
        self._pins = [self.rig.pins(t) for t in range(len(config.array.shapes()))]
        seed = np.random.SeedSequence(config.seed, spawn_key=(7,))
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self.idn: dict[str, str] = {}
        try:  # an instrument that does not identify as expected is sent nothing else, not even the safe state
            self.smu.open()
            self.matrix.open()
            self.idn = {"smu": self._identify(self.smu, SMU_MODELS, exact=True),
                        "matrix": self._identify(self.matrix, MATRIX_MODELS, exact=False)}
        except BaseException:
            self.smu.close()
            self.matrix.close()
            raise
        try:
            self.smu.run(tsp.smu_setup(self.channels, self._compliance, self.rig.nplc,
                                         config.limits.max_voltage_V))
            self.smu.run(tsp.pulse_setup(self.drive))
            self.matrix.run(tsp.MATRIX_SETUP)
        except BaseException:
            self._leave_safe_quietly()
            self.smu.close()
            self.matrix.close()
            raise

    @staticmethod
    def _identify(link: TspLink, models: tuple[str, ...], exact: bool) -> str:
        """``*IDN?``; the reply must name Keithley and a model that is one of ``models`` (``exact``) or starts with
        one of them, so that swapped addresses and unsuitable instruments are refused. Returns the identity."""
        reply = link.query(tsp.IDN)
        text = tsp.fields(reply, 1, f"{link.name} *IDN?")[0]
        fields = [f.strip() for f in text.split(",")]
        model = fields[1].removeprefix("Model ").strip().upper() if len(fields) > 1 else ""
        ok = model in models if exact else model.startswith(models)
        if "keithley" not in text.lower() or not ok:
            accepted = ", ".join(models) if exact else " or ".join(m + "*" for m in models)
            raise BackendError(f"{link.name} at {link.t.address} identifies as {text!r} (model {model or '?'}); "
                               f"expected a Keithley {accepted}")
        return text

    # ----------------------------------------------------------------- Backend hooks
    def _capabilities(self) -> Capabilities:
        shapes = tuple(self.config.array.shapes())
        # pulse trains as the trainer sends them: up to outer_slots pulses of [pulse].width_s, off time included
        return Capabilities(tile_shapes=shapes, native_vmm=False, native_outer_pulse=False,
                            outer_modes=("stochastic", "expected", "nearest"), slow=True,
                            op_time_s=self.rig.op_time_s(list(shapes), self.config.training.outer_slots,
                                                         self.config.pulse.width_s))

    def _read_cell(self, tile: int, row: int, col: int, v_read_V: float) -> float:
        return self._guarded(lambda: self._measure(tile, row, col, v_read_V))

    def _read_conductance(self, tile: int) -> np.ndarray:
        return self._guarded(lambda: self._conductances(tile))

    def _read_vmm(self, tile: int, v: np.ndarray) -> np.ndarray:
        g = self._guarded(lambda: self._conductances(tile))
        return (v.astype(np.float64) @ g).astype(np.float32)

    def _read_vmm_t(self, tile: int, v: np.ndarray) -> np.ndarray:
        g = self._guarded(lambda: self._conductances(tile))
        return (v.astype(np.float64) @ g.T).astype(np.float32)

    def _pulse_cell(self, tile: int, row: int, col: int, v_pulse_V: float, width_s: float, count: int) -> None:
        self._check_pulse(v_pulse_V, width_s)
        if count:
            self._guarded(lambda: self._pulse(tile, row, col, v_pulse_V, width_s, count))

    def _program(self, tile: int, pulses: np.ndarray, v_set_V: float, v_reset_V: float, width_s: float) -> None:
        self._check_pulse(v_set_V, width_s)
        self._check_pulse(v_reset_V, width_s)
        self._guarded(lambda: self._pulse_counts(tile, pulses, v_set_V, v_reset_V, width_s))

    def _outer_pulse(self, tile: int, p: np.ndarray, q: np.ndarray, polarity: int, slots: int, mode: str,
                     v_pulse_V: float, width_s: float) -> None:
        self._check_pulse(v_pulse_V, width_s)
        mean = slots * np.outer(p, q)
        if mode == "stochastic":
            n = self._rng.binomial(slots, np.outer(p, q))
        elif mode == "expected":
            base = np.floor(mean)
            n = base + (self._rng.random(mean.shape) < mean - base)
        else:
            n = np.rint(mean)
        counts = (polarity * n).astype(np.int32)
        self._guarded(lambda: self._pulse_counts(tile, counts, v_pulse_V, v_pulse_V, width_s))

    def _safe_state(self) -> None:
        """Levels ramped to 0 V, outputs off, every relay open; raises if either instrument did not confirm."""
        failures = self._leave_safe_quietly()
        if failures:
            raise BackendError("the rig may not be in its safe state: " + "; ".join(failures))

    def _close(self) -> None:
        self.smu.close()
        self.matrix.close()

    def _describe(self) -> dict[str, Any]:
        return {"idn": self.idn.get("smu", ""), "matrix_idn": self.idn.get("matrix", ""),
                "address": self.config.backend.address, "matrix_address": self.rig.matrix_address,
                "unselected": self.rig.unselected}

    # ----------------------------------------------------------------- safety
    def is_safe(self) -> bool:
        """Ask the instruments: both outputs off and no relay closed."""
        reply = self.smu.query(tsp.output_state(self.channels))
        states = [tsp.number(f, reply, "output state") for f in tsp.fields(reply, 2, "SMU output state")]
        closed = tsp.fields(self.matrix.query(tsp.MATRIX_CLOSED), 1, "matrix closed channels")[0]
        return all(s == 0 for s in states) and closed == "nil"

    def outputs_on(self) -> bool:
        """Ask the SMU whether any output is on."""
        reply = self.smu.query(tsp.output_state(self.channels))
        return any(tsp.number(f, reply, "output state") != 0 for f in tsp.fields(reply, 2, "SMU output state"))

    def _leave_safe_quietly(self) -> list[str]:
        """Best effort, every step tried: ramp down, outputs off, relays open. Returns what failed."""
        failures: list[str] = []
        b = self.config.backend
        for ch in self.channels:  # ramp lines hold absolute levels: sending one again is harmless
            try:
                if ch in self._uncertain:  # a ramp failed part way: start from what the SMU reports
                    reply = self.smu.query(f"print({ch}.source.levelv)")
                    self._level[ch] = tsp.number(tsp.fields(reply, 1, f"{ch} level")[0], reply, f"{ch} level")
                    self._uncertain.discard(ch)
                levels = tsp.ramp_levels(self._level[ch], 0.0, self.rig.ramp_step_V)
                if levels:
                    self.smu.run_reopening(tsp.set_level(ch, levels, self.rig.ramp_dwell_s), b.retries, b.backoff_s)
                self._level[ch] = 0.0
            except Exception as err:  # keep going: the outputs must still go off
                failures.append(f"ramping {ch} to 0 V: {err}")
        try:
            self.smu.run_reopening(tsp.outputs_off(self.channels), b.retries, b.backoff_s)
            self._level = {ch: 0.0 for ch in self.channels}
            self._outputs_on = False
        except Exception as err:
            failures.append(f"switching the SMU outputs off: {err}")
        try:
            self.matrix.run_reopening(tsp.MATRIX_OPEN_ALL, b.retries, b.backoff_s)
            self._connected = None
        except Exception as err:
            failures.append(f"opening the matrix relays: {err}")
        for f in failures:
            log.error("smu-matrix safe state: %s", f)
        return failures

    def _guarded(self, fn: Callable[[], Any]) -> Any:
        """Run an operation's exchanges; on any failure leave the rig safe before the error propagates."""
        try:
            return fn()
        except BaseException:
            self._leave_safe_quietly()
            raise

    def _check_pulse(self, v: float, width_s: float) -> None:
        if width_s < self.rig.min_pulse_width_s:
            raise LimitError("smu_matrix.min_pulse_width_s", width_s, self.rig.min_pulse_width_s,
                             "pulse width below what the SMU can produce")
        if self.rig.unselected == "half-select":
            th = self.config.device.v_threshold_V
            if abs(v) / 2 > th:
                raise LimitError("device.v_threshold_V", abs(v) / 2, th,
                                 "half-select bias |V|/2 (unselected devices on the row and column would switch)")

    # ----------------------------------------------------------------- exchanges
    def _set_level(self, ch: str, v: float) -> None:
        levels = tsp.ramp_levels(self._level[ch], v, self.rig.ramp_step_V)
        if levels:
            try:
                self.smu.run(tsp.set_level(ch, levels, self.rig.ramp_dwell_s))
            except BaseException:
                self._uncertain.add(ch)  # the ramp may have stopped anywhere: ask before ramping back
                raise
            self._level[ch] = v

    def _connect(self, tile: int, row: int, col: int) -> None:
        """Route the cell: both levels to 0 V first (no hot switching), then one exclusive close."""
        if self._connected == (tile, row, col):
            return
        for ch in self.channels:
            self._set_level(ch, 0.0)
        rows, cols = self._pins[tile]
        rig = self.rig
        chans = [tsp.channel_id(*_at(rows[row], rig.drive_row)), tsp.channel_id(*_at(cols[col], rig.sense_row))]
        if rig.unselected == "half-select":
            chans += [tsp.channel_id(*_at(pin, rig.ground_row)) for i, pin in enumerate(rows) if i != row]
            chans += [tsp.channel_id(*_at(pin, rig.ground_row)) for j, pin in enumerate(cols) if j != col]
        self._connected = None
        self.matrix.run(tsp.exclusive_close(chans))
        self._connected = (tile, row, col)
        if not self._outputs_on:
            self.smu.run(tsp.outputs_on(self.channels, self._compliance))
            self._outputs_on = True

    def _measure(self, tile: int, row: int, col: int, v_read_V: float) -> float:
        self._connect(tile, row, col)
        self._set_level(self.sense, 0.0)
        if abs(v_read_V) > self.rig.ramp_step_V:
            self._set_level(self.drive, v_read_V)
            reply = self.smu.query(tsp.measure(self.drive, self.sense, None))
            self._set_level(self.drive, 0.0)
        else:
            reply = self.smu.query(tsp.measure(self.drive, self.sense, v_read_V))
        f = tsp.fields(reply, 3, "SMU read")
        i_sense = tsp.number(f[0], reply, "SMU current")
        in_compliance = tsp.boolean(f[1], reply, "SMU compliance flag")
        queued = tsp.count(f[2], reply, "SMU error count")
        if queued:
            self.smu.raise_queued(None, queued)
        if in_compliance:
            raise InstrumentError(110, f"SMU in compliance ({self._compliance:g} A) reading tile {tile} "
                                       f"cell ({row}, {col}) at {v_read_V:g} V: the reading is not valid")
        return -i_sense

    def _conductances(self, tile: int) -> np.ndarray:
        rows, cols = self.tile_shapes[tile]
        v = self.config.read.v_read_V
        g = np.empty((rows, cols))
        for i in range(rows):
            for j in range(cols):
                g[i, j] = self._measure(tile, i, j, v) / v
        return g

    def _pulse(self, tile: int, row: int, col: int, v: float, width_s: float, count: int) -> None:
        self._connect(tile, row, col)
        if self.rig.unselected == "half-select":
            self._set_level(self.sense, -v / 2)
            self.smu.run(tsp.pulse_train(self.drive, v / 2, width_s, self.rig.pulse_off_s, count, self._compliance))
            self._set_level(self.sense, 0.0)
        else:
            self._set_level(self.sense, 0.0)
            self.smu.run(tsp.pulse_train(self.drive, v, width_s, self.rig.pulse_off_s, count, self._compliance))

    def _pulse_counts(self, tile: int, counts: np.ndarray, v_set: float, v_reset: float, width_s: float) -> None:
        for i, j in zip(*np.nonzero(counts)):
            n = int(counts[i, j])
            self._pulse(tile, int(i), int(j), v_set if n > 0 else v_reset, width_s, abs(n))


def rig_is_safe(config: RunConfig) -> bool:
    """Ask the SMU and the matrix on fresh links, outside any backend session (no reset, no set-up): both outputs
    off and no relay closed."""
    b, rig = config.backend, config.smu_matrix
    if rig is None:
        raise BackendError('rig_is_safe needs an [smu_matrix] section')
    smu = TspLink("SMU", VisaTransport(b.address, b.timeout_s, b.visa_library))
    matrix = TspLink("matrix", VisaTransport(rig.matrix_address, b.timeout_s, b.visa_library))
    try:
        smu.open()
        matrix.open()
        reply = smu.query(tsp.output_state((rig.drive_smu, rig.sense_smu)))
        states = [tsp.number(f, reply, "output state") for f in tsp.fields(reply, 2, "SMU output state")]
        closed = tsp.fields(matrix.query(tsp.MATRIX_CLOSED), 1, "matrix closed channels")[0]
        return all(s == 0 for s in states) and closed == "nil"
    finally:
        smu.close()
        matrix.close()


def _at(pin: tuple[int, int], matrix_row: str) -> tuple[int, str, int]:
    return pin[0], matrix_row, pin[1]
