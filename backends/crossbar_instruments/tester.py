"""The emulated array tester's logic: command in, reply out, with a real device under test behind it.

:class:`Tester` keeps what an instrument keeps: the output state, the SCPI error queue, the sequence counter
with the cached reply of the last sequence-numbered operation, and logs for tests (every applied and replayed
operation, every entry into the safe state). The device under test is any :class:`~crossbar_ctl.Backend`,
by default the simulator built from the same run config with ``[backend].kind = "sim"``.
:class:`Faults` holds one-shot fault injections that the servers of :mod:`crossbar_instruments.emulator`
apply around :meth:`Tester.handle`.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np

from crossbar_ctl.backend import Backend, connect
from crossbar_ctl.config import RunConfig
from crossbar_ctl.errors import InstrumentError, LimitError, ProtocolError
from crossbar_instruments import codec
from crossbar_instruments.codec import Command

log = logging.getLogger(__name__)
#: The status query that follows every write, in the driver's exact spelling: answered without the decoder.
_STATUS_QUERY = codec.encode_command("seq_status")

IDENTITY = ("CROSSBAR-CTL", "XBAR-TESTER-EMU", "0", "0.1.0")
ERROR_QUEUE_SIZE = 16


def sim_config(config: RunConfig) -> RunConfig:
    """``config`` with ``[backend].kind`` forced to ``"sim"`` (the emulator's device under test)."""
    return config.model_copy(update={"backend": config.backend.model_copy(update={"kind": "sim"})})


def warm_up(config: RunConfig) -> None:
    """Run every array operation, small and tile-sized (the simulator has a serial and a parallel kernel of each),
    on a scratch simulator built from ``config``: its Numba kernels are then loaded (or compiled) before the first
    client arrives, as a real tester is ready when it answers, instead of in the middle of the client's first
    epoch (~0.2 s). The device under test is a different backend: its state and random draws are untouched.
    Best effort: an operation the config's limits refuse is skipped."""
    with connect(sim_config(config)) as b:
        for t in range(b.n_tiles):
            rows, cols = b.shape(t)
            one_p, one_q = np.zeros(rows), np.zeros(cols)
            one_p[0] = one_q[0] = 1.0
            one = np.zeros((rows, cols), dtype=np.int32)
            one[0, 0] = 1
            ops: list[Callable[[], Any]] = [
                lambda: b.read_vmm(t, np.zeros((1, rows))), lambda: b.read_vmm(t, np.zeros((64, rows))),
                lambda: b.read_vmm_t(t, np.zeros((1, cols))), lambda: b.read_vmm_t(t, np.zeros((64, cols))),
                lambda: b.read_conductance(t), lambda: b.read_cell(t, 0, 0), lambda: b.pulse_cell(t, 0, 0, 2.0, 1e-6),
                lambda: b.program(t, one), lambda: b.program(t, -one), lambda: b.program(t, np.ones((rows, cols), int)),
            ]
            for mode in b.capabilities.outer_modes:
                for pol in (1, -1):
                    ops.append(lambda mode=mode, pol=pol: b.outer_pulse(t, one_p, one_q, pol, 1, mode=mode))
                    ops.append(lambda mode=mode, pol=pol: b.outer_pulse(t, np.ones(rows), np.ones(cols), pol, 1,
                                                                        mode=mode))
            for op in ops:
                try:
                    op()
                except (LimitError, ValueError):
                    pass


@dataclass
class Fault:
    """One injected fault, fired at the ``nth`` command whose header starts with ``match`` (case-insensitive;
    ``""`` matches every command). Actions: ``drop`` closes the connection before executing the command (it is
    not applied); ``drop_after`` executes it, then closes before replying; ``stall`` waits ``seconds`` (or until
    :meth:`Faults.release`) before executing; ``garbage`` executes it and sends ``data`` instead of the reply;
    ``error`` refuses it with error ``code`` (not applied: a query gets the error reply, a command queues it)."""

    action: Literal["drop", "drop_after", "stall", "garbage", "error"]
    match: str = ""
    nth: int = 1
    seconds: float = 0.0
    data: bytes = b"F64,1x1,#3xyz\n"
    code: int = -240
    seen: int = 0
    fired: bool = False


class Faults:
    """The fault injections of one emulator (thread-safe; tests add faults while it serves)."""

    def __init__(self) -> None:
        self._items: list[Fault] = []
        self._lock = threading.Lock()
        self._release = threading.Event()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._release.clear()
            self._items.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
        self._release.set()

    def release(self) -> None:
        """End a stall now."""
        self._release.set()

    def stall(self, seconds: float) -> None:
        self._release.wait(seconds)

    def take(self, raw: bytes) -> Fault | None:
        """The fault that fires at this command, if any."""
        if not self._items:
            return None
        head = raw.split(b" ", 1)[0].split(b"\n", 1)[0].upper()
        with self._lock:
            for f in self._items:
                if f.fired or not head.startswith(f.match.upper().encode()):
                    continue
                f.seen += 1
                if f.seen >= f.nth:
                    f.fired = True
                    return f
        return None


@dataclass
class Applied:
    """An operation the tester executed (or replayed from its cache) under a sequence number."""

    seq: int
    name: str
    tile: int | None
    replayed: bool = False


class Tester:
    """The instrument state machine. :meth:`handle` takes one complete command message and returns the reply
    bytes (queries) or None (commands; their errors go to the queue)."""

    def __init__(self, config: RunConfig, dut: Backend | None = None) -> None:
        self.config = config
        self.dut = dut if dut is not None else connect(sim_config(config))
        self.output_on = False
        self.errors: deque[tuple[int, str]] = deque()
        self.last_seq = 0
        self._cache: tuple[int, bytes, bytes | None] | None = None
        self.log: list[Applied] = []
        self.safe_events: list[str] = []
        self.commands = 0
        self.lock = threading.RLock()
        self._handlers: dict[str, Callable[[Command], Any]] = {
            name: getattr(self, f"_h_{name}") for name in codec.COMMANDS
        }

    # ----------------------------------------------------------------- state
    @property
    def is_safe(self) -> bool:
        """Outputs off and every line grounded."""
        return not self.output_on

    @property
    def applied_seqs(self) -> list[int]:
        """Sequence numbers of the operations executed (not replayed), in order."""
        return [a.seq for a in self.log if not a.replayed]

    def make_safe(self, reason: str) -> None:
        """Outputs off, lines grounded; ``reason`` is logged in :attr:`safe_events`."""
        with self.lock:
            self.output_on = False
            try:
                self.dut.safe_state()
            finally:
                self.safe_events.append(reason)

    def push_error(self, code: int, text: str) -> None:
        """Append to the error queue (SCPI overflow rule: the newest entry becomes -350)."""
        with self.lock:
            if len(self.errors) >= ERROR_QUEUE_SIZE:
                self.errors[-1] = (-350, codec.format_error(-350))
                return
            self.errors.append((int(code), text))

    def disconnected(self, reason: str = "disconnect") -> None:
        """The client went away: leave the array safe."""
        self.make_safe(reason)

    def shutdown(self) -> None:
        """Leave safe and release the device under test."""
        self.make_safe("shutdown")
        self.dut.close()

    # ----------------------------------------------------------------- dispatch
    def handle(self, raw: bytes) -> bytes | None:
        with self.lock:
            self.commands += 1
            if raw == _STATUS_QUERY and not self.errors:
                return b'%d,0,"No error"\n' % self.last_seq
            try:
                cmd = codec.decode_command(raw)
            except ProtocolError as err:
                return self._error(err.code, err.message, codec.looks_like_query(raw))
            try:
                return self._execute(cmd)
            except InstrumentError as err:
                return self._error(err.code, err.text, cmd.spec.is_query)
            except LimitError as err:
                return self._error(-222, str(err), cmd.spec.is_query)
            except IndexError as err:
                return self._error(-222, str(err), cmd.spec.is_query)
            except (ValueError, TypeError) as err:
                return self._error(-224, str(err), cmd.spec.is_query)
            except Exception as err:  # the device under test failed: report, keep serving
                log.exception("execution of %r failed", cmd.spec.short_header(cmd.tile))
                return self._error(-200, f"{type(err).__name__}: {err}", cmd.spec.is_query)

    def refuse(self, raw: bytes, code: int, detail: str = "injected fault") -> bytes | None:
        """Answer a command with error ``code`` without executing it (fault injection)."""
        with self.lock:
            self.commands += 1
            return self._error(code, detail, codec.looks_like_query(raw))

    def framing_error(self, err: ProtocolError) -> bytes | None:
        """A message that could not even be framed (the server reports it like any other bad command)."""
        with self.lock:
            return self._error(err.code, err.message, codec.looks_like_query(err.raw))

    def _error(self, code: int, detail: str, query: bool) -> bytes | None:
        text = codec.format_error(code, detail.replace("\n", " ")[:200])
        if query:
            return codec.encode_error_reply(code, text)
        self.push_error(code, text)
        return None

    def _execute(self, cmd: Command) -> bytes | None:
        spec = cmd.spec
        if spec.has_suffix and not 0 <= cmd.tile < self.dut.n_tiles:
            raise InstrumentError(-114, f"tile {cmd.tile} (this tester has {self.dut.n_tiles})")
        if not spec.sequenced:
            return self._reply(spec, self._handlers[spec.name](cmd))
        seq = cmd.seq
        if self._cache is not None and seq == self._cache[0] == self.last_seq:
            if self._cache[1] != cmd.raw:
                raise InstrumentError(101, f"sequence number {seq} was applied to a different command")
            self.log.append(Applied(seq, spec.name, cmd.tile, replayed=True))
            return self._cache[2]
        if seq != self.last_seq + 1:
            raise InstrumentError(101, f"expected sequence number {self.last_seq + 1}, got {seq}")
        if not self.output_on:
            raise InstrumentError(-221, "outputs are off (send OUTP ON first)")
        codec.check_limits(spec.all_params, cmd.args, self.config.limits, spec.short_header(cmd.tile))
        values = self._handlers[spec.name](cmd)
        try:
            reply = self._reply(spec, values)
            if values is not None:
                codec.check_limits(spec.reply, values, self.config.limits, "measured")
        except LimitError as err:  # executed, but the measured current tripped compliance
            self.make_safe("compliance")
            reply = codec.encode_error_reply(110, codec.format_error(110, str(err)))
        self.last_seq = seq
        self._cache = (seq, cmd.raw, reply)
        self.log.append(Applied(seq, spec.name, cmd.tile))
        return reply

    @staticmethod
    def _reply(spec: codec.CommandSpec, values: dict[str, Any] | None) -> bytes | None:
        return None if values is None else codec.encode_reply(spec.name, **values)

    # ----------------------------------------------------------------- handlers: common and system
    def _h_idn(self, cmd: Command) -> dict[str, Any]:
        maker, model, serial, fw = IDENTITY
        return dict(maker=maker, model=model, serial=serial, firmware=fw)

    def _h_rst(self, cmd: Command) -> None:
        self.make_safe("*RST")
        self.last_seq = 0
        self._cache = None

    def _h_cls(self, cmd: Command) -> None:
        self.errors.clear()

    def _h_opc(self, cmd: Command) -> dict[str, Any]:
        return dict(done=1)

    def _h_err(self, cmd: Command) -> dict[str, Any]:
        code, text = self.errors.popleft() if self.errors else (0, codec.format_error(0))
        return dict(code=code, text=text)

    def _h_err_count(self, cmd: Command) -> dict[str, Any]:
        return dict(count=len(self.errors))

    def _h_safe(self, cmd: Command) -> dict[str, Any]:
        return dict(safe=self.is_safe)

    def _h_sync(self, cmd: Command) -> dict[str, Any]:
        return dict(token=cmd.args["token"])

    def _h_output(self, cmd: Command) -> None:
        if cmd.args["on"]:
            self.output_on = True
        else:
            self.make_safe("OUTP OFF")

    def _h_output_q(self, cmd: Command) -> dict[str, Any]:
        return dict(on=self.output_on)

    def _h_tile_count(self, cmd: Command) -> dict[str, Any]:
        return dict(count=self.dut.n_tiles)

    def _h_tile_size(self, cmd: Command) -> dict[str, Any]:
        rows, cols = self.dut.shape(cmd.tile)
        return dict(rows=rows, cols=cols)

    def _h_outer_modes(self, cmd: Command) -> dict[str, Any]:
        return dict(modes=self.dut.capabilities.outer_modes)

    def _h_seq_last_q(self, cmd: Command) -> dict[str, Any]:
        return dict(seq=self.last_seq)

    def _h_seq_status(self, cmd: Command) -> dict[str, Any]:
        return dict(seq=self.last_seq, **self._h_err(cmd))

    def _h_seq_last(self, cmd: Command) -> None:
        self.last_seq = cmd.args["seq"]
        self._cache = None

    # ----------------------------------------------------------------- handlers: array operations
    def _h_vmm(self, cmd: Command) -> dict[str, Any]:
        return dict(i=self.dut.read_vmm(cmd.tile, cmd.args["v"]))

    def _h_vmm_t(self, cmd: Command) -> dict[str, Any]:
        return dict(i=self.dut.read_vmm_t(cmd.tile, cmd.args["v"]))

    def _h_cond(self, cmd: Command) -> dict[str, Any]:
        return dict(g=np.asarray(self.dut.read_conductance(cmd.tile), dtype=np.float64))

    def _h_cond_true(self, cmd: Command) -> dict[str, Any]:
        fn = getattr(self.dut, "true_conductance", None)
        if fn is None:
            raise InstrumentError(102, f"{self.dut.kind} has no noise-free conductance readout")
        return dict(g=np.asarray(fn(cmd.tile), dtype=np.float64))

    def _h_outer(self, cmd: Command) -> None:
        a = cmd.args
        self.dut.outer_pulse(cmd.tile, a["p"], a["q"], a["polarity"], a["slots"], mode=a["mode"],
                             v_pulse_V=a["v"], width_s=a["width"])

    def _h_program(self, cmd: Command) -> None:
        a = cmd.args
        self.dut.program(cmd.tile, a["pulses"], v_set_V=a["v_set"], v_reset_V=a["v_reset"], width_s=a["width"])

    def _h_cell_pulse(self, cmd: Command) -> None:
        a = cmd.args
        self.dut.pulse_cell(cmd.tile, a["row"], a["col"], a["v"], a["width"], a["count"])

    def _h_cell_read(self, cmd: Command) -> dict[str, Any]:
        a = cmd.args
        return dict(i=self.dut.read_cell(cmd.tile, a["row"], a["col"], a["v"]))
