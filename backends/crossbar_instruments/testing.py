"""Test helpers: pin the exact bytes a driver writes and feed it canned replies.

:func:`expected_protocol` opens a :class:`~crossbar_instruments.driver.TesterBackend` (or subclass) on a
:class:`ScriptedTransport` that asserts every write against a script of ``(written, reply)`` pairs::

    with expected_protocol(VisaBackend, config, OPENING + [
        (b"OUTP ON\\nTILE0:VMM? 1,F32,1x2,#18\\x00\\x00\\x80?\\x00\\x00\\x00@\\n", b"F32,1x1,#14\\x00\\x00\\x00?\\n"),
    ]) as backend:
        backend.read_vmm(0, [1.0, 2.0])

A reply may also be an exception instance, raised by the next read (e.g. ConnectionLostError) to script
failures. On exit every scripted write must have happened and every reply byte been read. A write while a reply
is unread is an error, except that with ``overlap=True`` (a driver that pipelines writes) one whole unread reply
may precede it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence, TypeVar

from crossbar_ctl.config import RunConfig
from crossbar_instruments.driver import TesterBackend
from crossbar_instruments.transport import Transport

B = TypeVar("B", bound=TesterBackend)
Reply = bytes | BaseException | None


class ScriptedTransport(Transport):
    """A fake transport following a script of (expected write, reply) pairs; mismatches raise AssertionError."""

    def __init__(self, script: Sequence[tuple[bytes, Reply]], overlap: bool = False) -> None:
        super().__init__("scripted", 1.0)
        self.script = list(script)
        self.overlap = overlap
        self._queued: list[list[int]] = []  # [unread bytes, length] of each reply in _pending, oldest first
        self.pos = 0
        self.written: list[bytes] = []
        self.opens = 0
        self._open = False
        self._pending = bytearray()
        self._raise: BaseException | None = None

    @property
    def is_open(self) -> bool:
        return self._open

    def open(self) -> None:
        self.opens += 1
        self._open = True

    def close(self) -> None:
        self._open = False
        self._pending.clear()
        self._queued.clear()
        self._raise = None

    def write(self, data: bytes) -> None:
        assert self._open, "write on a closed transport"
        data = bytes(data)
        self.written.append(data)
        if self.pos >= len(self.script):
            raise AssertionError(f"unexpected write #{self.pos + 1} (the script has ended): {data!r}")
        want, reply = self.script[self.pos]
        if data != want:
            raise AssertionError(f"write #{self.pos + 1} differs from the script\n  sent:     {data!r}\n"
                                 f"  expected: {want!r}")
        self.pos += 1
        one_whole = len(self._queued) == 1 and self._queued[0][0] == self._queued[0][1]
        if self._pending and not (self.overlap and one_whole):
            raise AssertionError(f"write #{self.pos} while {bytes(self._pending)!r} of the last reply is unread")
        if isinstance(reply, BaseException):
            self._raise = reply
        elif reply:
            self._queued.append([len(reply), len(reply)])
            self._pending += reply

    def _take(self, n: int) -> bytes:
        if self._raise is not None:
            err, self._raise = self._raise, None
            raise err
        if n > len(self._pending):
            raise AssertionError(f"the driver reads {n} bytes but the scripted reply has "
                                 f"{len(self._pending)} left: {bytes(self._pending)!r}")
        out = bytes(self._pending[:n])
        del self._pending[:n]
        while n and self._queued:
            used = min(n, self._queued[0][0])
            self._queued[0][0] -= used
            n -= used
            if not self._queued[0][0]:
                self._queued.pop(0)
        return out

    def read_line(self, max_bytes: int) -> bytes:
        k = self._pending.find(b"\n", 0, max_bytes)
        return self._take(k + 1 if k >= 0 else min(max_bytes, max(len(self._pending), 1)))

    def read_exact(self, n: int) -> bytes:
        return self._take(n)

    def check_done(self) -> None:
        """Every scripted write happened and every reply byte was read."""
        if self.pos != len(self.script):
            raise AssertionError(f"{len(self.script) - self.pos} scripted write(s) never happened; next: "
                                 f"{self.script[self.pos][0]!r}")
        if self._pending or self._raise is not None:
            raise AssertionError(f"unread reply bytes at the end: {bytes(self._pending)!r}")


@contextmanager
def expected_protocol(backend_cls: type[B], config: RunConfig,
                      script: Sequence[tuple[bytes, Reply]]) -> Iterator[B]:
    """Open ``backend_cls(config)`` on a :class:`ScriptedTransport`; check the whole script was used on exit.
    The opening handshake is part of the script. The backend is not closed here: script ``close`` yourself.
    Writes may overlap an unread reply if the config pipelines writes (``[backend].pipeline_writes``)."""
    transport = ScriptedTransport(script, overlap=config.backend.pipeline_writes)
    backend = backend_cls(config, transport_factory=lambda: transport)
    backend.transport = transport  # type: ignore[attr-defined]  # for assertions in tests
    yield backend
    transport.check_done()


@contextmanager
def expected_rig_protocol(config: RunConfig, smu_script: Sequence[tuple[bytes, Reply]],
                          matrix_script: Sequence[tuple[bytes, Reply]]) -> Iterator[Any]:
    """:func:`expected_protocol` for the ``smu-matrix`` backend: one script per instrument (the SMU's and the
    matrix's bytes are pinned separately, each in its own order). Yields the backend; ``backend.smu.t`` and
    ``backend.matrix.t`` are the scripted transports."""
    from crossbar_instruments.smu_matrix import SmuMatrixBackend

    smu, matrix = ScriptedTransport(smu_script), ScriptedTransport(matrix_script)
    backend = SmuMatrixBackend(config, smu_transport=lambda: smu, matrix_transport=lambda: matrix)
    yield backend
    smu.check_done()
    matrix.check_done()


class LoopbackTransport(ScriptedTransport):
    """A transport whose peer is an in-process emulated instrument (anything with ``handle(raw) -> reply``):
    each write is handled at once and its reply queued for the reads. ``log`` keeps (written, reply) pairs."""

    def __init__(self, instrument: Any) -> None:
        super().__init__([])
        self.instrument = instrument
        self.log: list[tuple[bytes, bytes]] = []

    def write(self, data: bytes) -> None:
        assert self._open, "write on a closed transport"
        reply = self.instrument.handle(bytes(data)) or b""
        self.log.append((bytes(data), reply))
        self._pending += reply

    def read_line(self, max_bytes: int) -> bytes:
        if b"\n" not in self._pending:  # a TSP line that failed prints nothing: a real link would time out
            from crossbar_ctl.errors import InstrumentTimeoutError

            raise InstrumentTimeoutError("loopback: the instrument printed nothing")
        return super().read_line(max_bytes)


def loopback_rig(config: RunConfig) -> tuple[Any, Any]:
    """An ``smu-matrix`` backend on the emulated rig in this process: returns (backend, rig)."""
    from crossbar_instruments.smu_matrix import SmuMatrixBackend
    from crossbar_instruments.smu_rig import Rig
    from crossbar_instruments.tsp_instruments import EmulatedMatrix, EmulatedSmu

    rig = Rig(config)
    smu, matrix = LoopbackTransport(EmulatedSmu(rig)), LoopbackTransport(EmulatedMatrix(rig))
    return SmuMatrixBackend(config, smu_transport=lambda: smu, matrix_transport=lambda: matrix), rig
