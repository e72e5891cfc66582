"""TesterBackend: the crossbar operations sent to an array tester through a transport, with the codec.

Every hook builds one command with :mod:`crossbar_instruments.codec`, re-checks it against ``[limits]``
(nothing is sent if a value is out of bounds) and makes one round trip:

* array operations carry the sequence number ``self.seq + 1``; the driver prefixes ``OUTP ON`` when outputs
  are off and ``SEQ:LAST <n>`` when the instrument's counter must be re-synchronised (e.g. after a resume set
  ``self.seq``);
* commands without a reply are followed, in the same write, by ``SEQ:STAT?`` (one reply: the last applied
  sequence number and the oldest queued error, so the driver knows whether the operation was applied and whether
  it failed); queries return their reply or an error reply. Either way an instrument error raises
  :class:`~crossbar_ctl.errors.InstrumentError`;
* with ``[backend].pipeline_writes`` (the default) a write returns once it is sent: its status is read after
  the next command has gone out (or by :meth:`settle`, a query, the safe state), so the tester executes while the
  host computes and the round trip is not waited for. The write is recorded when its status arrives; a failed one
  is reported by the call that read its status (the command sent behind it is then resolved on reconnection,
  like one whose reply was garbled). After a lost connection a pending write the tester had not applied is sent
  again before anything else: every write a call returned from is applied exactly once;
* replies are checked too: a current above ``compliance_current_A`` leaves the tester safe and raises
  InstrumentError(110).

Lost connection: reconnect (``[backend].retries`` attempts, back-off ``backoff_s`` doubling), resynchronise the
stream (``SYST:SYNC?``), clear the error queue, ask ``SEQ:LAST?`` and re-send the in-flight operation only if
the instrument did not apply it. A query that was applied is re-sent with the same sequence number, and the
tester answers from its reply cache without executing it again, so read noise is drawn once. A timeout or
garbled reply is not retried (the error is raised) but the operation is remembered; the next call resolves it
the same way and, if it was applied after all, logs it late (status ``"late"``, so the op log and the array
agree). A KeyboardInterrupt or SystemExit (a signal) in the middle of a round trip is treated like a garbled
reply: the link is dropped and the operation remembered, so that ``close()`` reconnects, resolves it and leaves
the tester safe on a clean stream.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
from threadpoolctl import threadpool_limits

from crossbar_ctl.backend import DEFERRED, Backend, Capabilities
from crossbar_ctl.config import RunConfig
from crossbar_ctl.errors import (BackendError, ConnectionLostError, InstrumentError, InstrumentTimeoutError,
                                 LimitError, ProtocolError)
from crossbar_ctl.pulse_counts import abs_peak_total
from crossbar_instruments.codec import COMMANDS, check_limits, decode_reply, encode_command
from crossbar_instruments.transport import Transport

log = logging.getLogger(__name__)

#: Instrument errors for which the operation was nevertheless executed (and so has used its sequence number).
APPLIED_ERRORS = frozenset({110})
SYNC_TRIES = 64
_STATUS = encode_command("seq_status")  # follows every write: applied? error status?


@dataclass
class _Op:
    """An array operation on its way to the instrument."""

    seq: int
    kind: str
    tile: int
    params: dict[str, Any]
    command: bytes
    name: str


class TesterBackend(Backend):
    """A crossbar array tester that speaks the protocol of ``hil/PROTOCOL.md``. Subclasses choose the transport
    (:meth:`make_transport`); ``transport_factory`` overrides it (tests)."""

    kind: ClassVar[str] = "tester"

    def __init__(self, config: RunConfig, transport_factory: Callable[[], Transport] | None = None) -> None:
        super().__init__(config)
        self._factory = transport_factory or (lambda: self.make_transport(config))
        self._t: Transport | None = None
        self._output_on = False
        self._wire_seq = 0
        self._unresolved: _Op | None = None
        self._pending: _Op | None = None  # a pipelined write: sent, returned to its caller, status not yet read
        self._pipeline = bool(config.backend.pipeline_writes)
        self._slow_link = False  # the transport's suppress_zeros, kept across reconnections
        self._syncs = 0
        self.reconnects = 0
        # Each operation waits for a round trip; a multi-threaded BLAS pool that spins between the host's small
        # products takes the CPU from this process's I/O and from a tester emulated on the same machine (an
        # epoch over TCP took 1.6x as long). BLAS is held to one thread while the backend is open, as the
        # simulator does in process; crossbar_ctl.blas.wide() still widens large products.
        self._blas_limit = threadpool_limits(limits=1, user_api="blas")
        try:
            self._retrying(self._open_link)
            self._identify()
        except BaseException:
            self._drop()
            self._blas_limit.restore_original_limits()
            raise

    # ----------------------------------------------------------------- transport choice
    def make_transport(self, config: RunConfig) -> Transport:
        raise NotImplementedError(f"{type(self).__name__} does not choose a transport")

    # ----------------------------------------------------------------- connection
    def _open_link(self) -> None:
        """Open the transport and resynchronise the stream: discard anything until our token comes back."""
        t = self._factory()
        t.open()
        self._t = t
        self._slow_link = t.suppress_zeros
        self._syncs += 1
        t.write(encode_command("sync", token=self._syncs))
        for _ in range(SYNC_TRIES):
            try:
                if decode_reply("sync", t.read_message())["token"] == self._syncs:
                    return
            except (ProtocolError, InstrumentError):
                continue
        raise ProtocolError("no answer to SYST:SYNC? among the first messages", b"")

    def _drop(self) -> None:
        t, self._t = self._t, None
        self._output_on = False
        if t is not None:
            t.close()

    def _retrying(self, fn: Callable[[], Any]) -> Any:
        """``fn()``, retried on ConnectionLostError with exponential back-off."""
        b = self.config.backend
        for attempt in range(b.retries + 1):
            try:
                return fn()
            except ConnectionLostError:
                self._drop()
                if attempt == b.retries:
                    raise
                time.sleep(b.backoff_s * 2 ** attempt)
            except (InstrumentTimeoutError, ProtocolError):
                self._drop()
                raise
            except (KeyboardInterrupt, SystemExit):  # a signal: the stream may be in the middle of a reply,
                self._drop()  # so the next round trip (close -> safe state) reconnects and resynchronises
                raise

    def _identify(self) -> None:
        """First contact: the sequence number the last session left (before ``*RST`` resets it), reset, clear
        errors, identity and geometry (must agree with ``[array]``)."""
        self.instrument_seq_at_open = self._query(encode_command("seq_last_q"), "seq_last_q")["seq"]
        idn = self._query(encode_command("rst") + encode_command("cls") + encode_command("idn"), "idn")
        self.idn = ",".join(idn[k] for k in ("maker", "model", "serial", "firmware"))
        n = self._query(encode_command("tile_count"), "tile_count")["count"]
        shapes = []
        for t in range(n):
            r = self._query(encode_command("tile_size", tile=t), "tile_size")
            shapes.append((r["rows"], r["cols"]))
        modes = self._query(encode_command("outer_modes"), "outer_modes")["modes"]
        want = [tuple(s) for s in self.config.array.shapes()]
        if shapes != want:
            raise BackendError(f"{self.idn}: the instrument has tiles {shapes} (rows, cols) but [array] "
                               f"describes {want}; fix the run config")
        self._caps = Capabilities(tile_shapes=tuple(shapes), outer_modes=tuple(modes), slow=True)
        self._wire_seq = 0

    def _reconnect(self) -> None:
        self.reconnects += 1
        self._open_link()
        last = self._query_now(encode_command("cls") + encode_command("seq_last_q"), "seq_last_q")["seq"]
        self._wire_seq = last
        p = self._pending
        if p is not None:  # its caller was told it is done: it must end up applied exactly once
            if last >= p.seq:
                self._pending = None
                log.warning("%s (seq %d) was applied although its status was lost; logging it now", p.kind, p.seq)
                self._emit(p.kind, p.tile, "late", **p.params)
            elif last == p.seq - 1:
                self._resend(p)
                last = self._wire_seq
            else:
                raise BackendError(f"the instrument's last applied sequence number is {last} but this session "
                                   f"sent {p.seq - 1} before its pending write: another client or a reset "
                                   f"intervened; array state unknown")
        u, self._unresolved = self._unresolved, None
        if u is not None and last == u.seq == self.seq + 1:
            log.warning("%s (seq %d) was applied although its reply was lost; logging it now", u.kind, u.seq)
            self._emit(u.kind, u.tile, "late", **u.params)
        elif last not in (self.seq, self.seq + 1):
            raise BackendError(f"the instrument's last applied sequence number is {last} but this session is "
                               f"at {self.seq}: another client or a reset intervened; array state unknown")

    # ----------------------------------------------------------------- round trips
    def _query_now(self, data: bytes, reply: str) -> dict[str, Any]:
        assert self._t is not None
        self._t.write(data)
        return decode_reply(reply, self._t.read_message())

    def _query(self, data: bytes, reply: str) -> dict[str, Any]:
        """A non-array round trip (re-sent after a reconnect)."""

        self._settle()

        def once() -> dict[str, Any]:
            if self._t is None:
                self._reconnect()
            return self._query_now(data, reply)

        return self._retrying(once)

    def _array_op(self, name: str, kind: str, tile: int, args: dict[str, Any],
                  emit: dict[str, Any]) -> dict[str, Any] | None:
        """Send one sequence-numbered array operation; its reply values (queries), None (a confirmed write) or
        DEFERRED (a pipelined write, recorded once its status arrives)."""
        spec = COMMANDS[name]
        check_limits(spec.params, args, self.limits, spec.short_header(tile))  # before any byte is sent
        if self._t is None:  # first resolve what an earlier failure left open: it may advance self.seq
            self._retrying(self._reconnect)
        if self._pending is not None and not (self._output_on and self._wire_seq == self.seq):
            self._settle()  # this command needs a prefix (outputs, sequence): no overlap with the pending write
        seq = (self.seq if self._pending is None else self._pending.seq) + 1
        args = {"seq": seq, **args}
        assert self._t is not None
        op = _Op(seq, kind, tile, emit, encode_command(name, tile, suppress_zeros=self._t.suppress_zeros, **args),
                 name)
        deferred = self._pipeline and not spec.is_query
        state = {"sent": False}

        def once() -> Any:
            if self._t is None:
                self._reconnect()  # (also settles a pending write, re-sending it if it was not applied)
                if state["sent"] and self._wire_seq == seq and not spec.is_query:
                    return None  # applied before the link broke: do not send it again
            prefix = b""
            if self._wire_seq not in (self.seq, seq):  # (== seq: an applied query, re-sent for its cached reply)
                prefix += encode_command("seq_last", seq=self.seq)
            if not self._output_on:
                prefix += encode_command("output", on=True)
            suffix = b"" if spec.is_query else _STATUS
            state["sent"] = True
            assert self._t is not None
            self._t.write(prefix + op.command + suffix)
            self._output_on = True
            if self._pending is not None:  # its status was sent before this command's reply
                self._collect(op)
            if deferred:
                self._wire_seq = self.seq
                self._pending = op
                return DEFERRED
            first = self._t.read_message()
            self._wire_seq = self.seq
            if spec.is_query:
                return self._finish_query(op, first)
            return self._finish_write(op, first)

        try:
            return self._retrying(once)
        except (InstrumentTimeoutError, ProtocolError, ConnectionLostError, KeyboardInterrupt, SystemExit):
            if state["sent"] and self._pending is not op:
                self._unresolved = op
            raise

    # ----------------------------------------------------------------- pipelined writes
    def _collect(self, following: _Op) -> None:
        """Read the pending write's status (the command ``following`` it is already sent). Applied without error:
        record it. Otherwise report it now; ``following`` is left to the next reconnection to resolve, like an
        operation whose reply was garbled, since its reply is still on the way."""
        p = self._pending
        assert p is not None and self._t is not None
        status = decode_reply("seq_status", self._t.read_message())  # a failure here leaves p pending
        last, code, text = status["seq"], status["code"], status["text"]
        self._pending = None
        if last == p.seq and code == 0:
            self._wire_seq = last
            self._emit(p.kind, p.tile, **p.params)
            return
        if last == p.seq:  # applied, yet an error was queued
            self._emit(p.kind, p.tile, "error", **p.params)
        self._unresolved = following
        self._drop()
        where = f"{p.kind} (seq {p.seq}), the write sent before this call"
        if code != 0:
            raise InstrumentError(code, f"{text} [reported for {where}]")
        raise BackendError(f"{where} was not applied and the tester reported no error (its last applied sequence "
                           f"number is {last})")

    def _settle(self) -> None:
        """Wait for the pending write's status (if any) and record it; raise its error."""
        if self._pending is None:
            return

        def once() -> None:
            if self._t is None:
                self._reconnect()  # resolves the pending write
                return
            if self._pending is not None:
                self._confirm_pending()

        self._retrying(once)

    def _confirm_pending(self) -> None:
        """Read the pending write's status now (nothing was sent behind it) and record it; raise its error."""
        p = self._pending
        assert p is not None and self._t is not None
        raw = self._t.read_message()  # a failure here leaves p pending (the next reconnection resolves it)
        self._pending = None
        self._finish_write(p, raw)
        self._emit(p.kind, p.tile, **p.params)

    def _resend(self, p: _Op) -> None:
        """After a reconnection: send the pending write ``p`` again (the tester had not applied it) and wait for
        its status; it is recorded once applied."""
        assert self._t is not None
        prefix = b"" if self._output_on else encode_command("output", on=True)
        self._t.write(prefix + p.command + _STATUS)
        self._output_on = True
        self._confirm_pending()

    def _finish_write(self, op: _Op, raw: bytes) -> None:
        """A command's status (``SEQ:STAT?``): was it applied (last applied sequence number), and the oldest
        queued error."""
        status = decode_reply("seq_status", raw)
        last, code, text = status["seq"], status["code"], status["text"]
        self._wire_seq = last
        if last == op.seq:
            if code != 0:  # applied, yet an error was queued (before it, or by it): log the op, report
                self._emit(op.kind, op.tile, "error", **op.params)
                raise InstrumentError(code, text + self._drain_errors())
            return None
        if code != 0:
            raise InstrumentError(code, text + self._drain_errors())
        raise BackendError(f"{op.kind} (seq {op.seq}) was not applied and the tester reported no error "
                           f"(its last applied sequence number is {last})")

    def _finish_query(self, op: _Op, raw: bytes) -> dict[str, Any]:
        """A query's reply; raise on instrument errors and on currents above compliance."""
        spec = COMMANDS[op.name]
        try:
            values = decode_reply(op.name, raw)
        except InstrumentError as err:
            if err.code == -221:  # outputs were off after all: re-enable them next time
                self._output_on = False
            if err.code in APPLIED_ERRORS:
                self._wire_seq = op.seq
                self._output_on = False
                self._emit(op.kind, op.tile, "error", **op.params)
            raise
        self._wire_seq = op.seq
        try:
            check_limits(spec.reply, values, self.limits, f"reply of {spec.short_header(op.tile)}")
        except LimitError as err:
            self._emit(op.kind, op.tile, "error", **op.params)
            self._safe_state()
            raise InstrumentError(110, f"Compliance exceeded; {err} (the tester did not limit it)") from None
        return values

    def _drain_errors(self) -> str:
        more = []
        for _ in range(16):
            e = self._query(encode_command("err"), "err")
            if e["code"] == 0:
                break
            more.append(f"{e['code']},{e['text']}")
        return f" (also queued: {'; '.join(more)})" if more else ""

    # ----------------------------------------------------------------- Backend hooks
    def _capabilities(self) -> Capabilities:
        return self._caps

    def _read_vmm(self, tile: int, v: np.ndarray) -> np.ndarray:
        return self._array_op("vmm", "read_vmm", tile, {"v": v}, {"batch": v.shape[0]})["i"]

    def _read_vmm_t(self, tile: int, v: np.ndarray) -> np.ndarray:
        return self._array_op("vmm_t", "read_vmm_t", tile, {"v": v}, {"batch": v.shape[0]})["i"]

    def _read_conductance(self, tile: int) -> np.ndarray:
        return self._array_op("cond", "read_conductance", tile, {}, {})["g"]

    def _read_cell(self, tile: int, row: int, col: int, v_read_V: float) -> float:
        args = {"row": int(row), "col": int(col), "v": v_read_V}
        return self._array_op("cell_read", "read_cell", tile, args,
                              {"row": row, "col": col, "v_read_V": v_read_V})["i"]

    def _outer_pulse(self, tile: int, p: np.ndarray, q: np.ndarray, polarity: int, slots: int, mode: str,
                     v_pulse_V: float, width_s: float) -> Any:
        args = {"p": p, "q": q, "polarity": int(polarity), "slots": int(slots), "mode": mode, "v": v_pulse_V,
                "width": width_s}
        return self._array_op("outer", "outer_pulse", tile, args,
                       {"row_drive": p, "col_drive": q, "polarity": polarity, "slots": slots, "mode": mode,
                        "v_pulse_V": v_pulse_V, "width_s": width_s})

    def _program(self, tile: int, pulses: np.ndarray, v_set_V: float, v_reset_V: float, width_s: float) -> Any:
        peak = abs_peak_total(pulses)[0]  # (int32, C-contiguous: the Backend boundary made it so)
        if peak <= 127 and self._slow_link:  # (a slow link, where every byte counts: counts travel as int8)
            wire = pulses.astype(np.int8)
        else:
            wire = pulses.astype(np.int16) if peak <= np.iinfo(np.int16).max else pulses
        return self._array_op("program", "program", tile,
                       {"pulses": wire, "v_set": v_set_V, "v_reset": v_reset_V, "width": width_s},
                       {"pulses": pulses, "v_set_V": v_set_V, "v_reset_V": v_reset_V, "width_s": width_s})

    def _pulse_cell(self, tile: int, row: int, col: int, v_pulse_V: float, width_s: float, count: int) -> Any:
        args = {"row": int(row), "col": int(col), "v": v_pulse_V, "width": width_s, "count": int(count)}
        return self._array_op("cell_pulse", "pulse_cell", tile, args,
                       {"row": row, "col": col, "v_pulse_V": v_pulse_V, "width_s": width_s, "count": count})

    def _safe_state(self) -> None:
        """``OUTP OFF`` and confirm with ``SYST:SAFE?`` (raises if the tester does not report safe). A pending
        write is settled first; if it failed, the tester is still made safe and then its error raised."""
        failure: Exception | None = None
        try:
            self._settle()
        except Exception as err:  # (a signal still propagates at once)
            failure = err
        safe = self._query(encode_command("output", on=False) + encode_command("safe"), "safe")["safe"]
        self._output_on = False
        if not safe:
            raise InstrumentError(-200, "outputs switched off but the tester does not report its safe state")
        if failure is not None:
            raise failure

    def _close(self) -> None:
        self._drop()
        self._blas_limit.restore_original_limits()

    def _describe(self) -> dict[str, Any]:
        t = self._t
        return {"idn": self.idn, "address": self.config.backend.address,
                "transport": t.describe() if t is not None else None, "reconnects": self.reconnects}

    # ----------------------------------------------------------------- extras
    def true_conductance(self, tile: int) -> np.ndarray:
        """Noise-free conductances (S) from an emulated tester's diagnostic query (not an array operation;
        a real tester answers InstrumentError 102)."""
        self._check_tile(tile)
        return self._query(encode_command("cond_true", tile=tile), "cond_true")["g"]

    def outputs_on(self) -> bool:
        """Ask the tester whether its outputs are on (``OUTP?``)."""
        return self.scpi("OUTP?") == "1"

    def is_safe(self) -> bool:
        """Ask the tester whether it is in its safe state (``SYST:SAFE?`` and outputs off)."""
        return self.scpi("SYST:SAFE?") == "1" and not self.outputs_on()

    def scpi(self, line: str) -> str | None:
        """Send one raw command line; return the reply line (without ``\\n``) if it is a query (diagnostics)."""
        self._check_open()
        self._settle()
        data = line.encode("ascii").rstrip(b"\n") + b"\n"

        def once() -> str | None:
            if self._t is None:
                self._reconnect()
            assert self._t is not None
            self._t.write(data)
            if not line.rstrip().split(" ", 1)[0].endswith("?"):
                return None
            return self._t.read_message()[:-1].decode("latin-1")

        return self._retrying(once)
