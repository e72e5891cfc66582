"""Byte links to an instrument: a small :class:`Transport` interface and its VISA and serial implementations.

A transport writes bytes, reads a line (up to ``\\n``) and reads exactly n bytes; every call is bounded by
``timeout_s``. A peer that does not answer raises :class:`~crossbar_ctl.errors.InstrumentTimeoutError`; a peer
that closed, reset or vanished raises :class:`~crossbar_ctl.errors.ConnectionLostError`. Neither hangs.
Framing (blocks that contain ``\\n``) is :func:`crossbar_instruments.blocks.read_message`'s job, on top of
these two reads.
"""
from __future__ import annotations

import abc
import os
import select
import socket
import time
from typing import Any, Callable

from crossbar_ctl.errors import ConnectionLostError, InstrumentTimeoutError, ProtocolError
from crossbar_instruments.blocks import MAX_MESSAGE_BYTES, frame, read_message


#: How long a read polls for a reply before it sleeps in ``select``. A round trip to a tester is ~0.1-0.5 ms; a
#: thread that sleeps through it gives up its core, and its next ~0.1 ms of work then runs 2-4x slower (caches and
#: idle states, measured on a 2-core VM: an epoch over TCP took 1.5x as long). Polling yields the core to any other
#: runnable thread at every try, and a reply that takes longer is waited for in ``select`` as before.
POLL_S = 0.002


def poll(read: Callable[[], bytes | None], until: float) -> bytes | None:
    """``read()`` until it returns something other than None or the monotonic clock passes ``until`` (None);
    between tries the core is offered to other threads (``sched_yield``)."""
    while time.monotonic() < until:
        os.sched_yield()
        chunk = read()
        if chunk is not None:
            return chunk
    return None


def _framed(buf: bytearray, max_bytes: int) -> int:
    """:func:`~crossbar_instruments.blocks.frame` of a receive buffer; a framing fault drops the bytes it
    covers."""
    try:
        return frame(buf, max_bytes)
    except ProtocolError as err:
        del buf[:len(err.raw)]
        raise


def _take(buf: bytearray, n: int) -> bytes:
    """The first ``n`` bytes of ``buf``, removed from it (one copy)."""
    with memoryview(buf) as view:
        out = view[:n].tobytes()
    del buf[:n]
    return out


class Transport(abc.ABC):
    """A byte link to one instrument. ``open`` may be called again after ``close`` (reconnect)."""

    #: Whether the driver sends mostly-zero arrays zero-suppressed on this link (worth it where bytes are slow).
    suppress_zeros: bool = False
    #: How long a read polls before it sleeps (:data:`POLL_S`; 0: never poll).
    poll_s: float = POLL_S

    def __init__(self, address: str, timeout_s: float) -> None:
        self.address = address
        self.timeout_s = float(timeout_s)

    @abc.abstractmethod
    def open(self) -> None:
        """Connect; raises ConnectionLostError if the instrument cannot be reached."""

    @abc.abstractmethod
    def close(self) -> None:
        """Disconnect (idempotent, never raises)."""

    @property
    @abc.abstractmethod
    def is_open(self) -> bool: ...

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Send all of ``data``."""

    @abc.abstractmethod
    def read_line(self, max_bytes: int) -> bytes:
        """Bytes up to and including the next ``\\n`` (or ``max_bytes`` bytes if none comes first)."""

    @abc.abstractmethod
    def read_exact(self, n: int) -> bytes:
        """Exactly ``n`` bytes."""

    def read_message(self, max_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
        """One complete reply message (binary blocks read by their declared length)."""
        return read_message(self, max_bytes)

    def describe(self) -> str:
        return f"{type(self).__name__}({self.address!r})"

    def _timeout(self, what: str) -> InstrumentTimeoutError:
        return InstrumentTimeoutError(f"{self.address}: no answer within {self.timeout_s:g} s ({what})")

    def _await(self, read: Callable[[], bytes | None], read_ready: Callable[[], bytes], fileno: Any,
               deadline: float, what: str) -> bytes:
        """What ``read()`` (None: nothing there yet) returns, trying at once, then polling for ``poll_s``, then
        waiting in ``select`` on ``fileno`` until ``deadline`` and calling ``read_ready()``; InstrumentTimeoutError
        if nothing arrives. OS errors propagate to the caller, which knows what they mean for its link."""
        chunk = read()
        if chunk is None:  # nothing there yet: poll a moment, then wait for it
            chunk = poll(read, min(time.monotonic() + self.poll_s, deadline))
        if chunk is None:
            if not select.select([fileno], [], [], max(deadline - time.monotonic(), 0.0))[0]:
                raise self._timeout(what)
            chunk = read_ready()
        return chunk


# --------------------------------------------------------------------------- VISA
class VisaTransport(Transport):
    """A pyvisa message-based resource, e.g. ``TCPIP::127.0.0.1::5025::SOCKET`` (raw socket, like port 5025 of
    bench instruments) through ``library`` (default ``"@py"``, pyvisa-py; ``"file.yaml@sim"`` for pyvisa-sim).

    Lines are read with the termination character ``\\n``; blocks with ``read_bytes`` (exact count, the
    termination character ignored). With pyvisa-py raw sockets (``::SOCKET`` through ``@py``) pyvisa opens and
    closes the resource but the bytes move on its socket directly (TCP_NODELAY on, non-blocking, every wait a
    ``select`` bounded by ``timeout_s``, reads through the session's own buffer): pyvisa-py's chunked I/O made a
    training epoch over TCP several times slower. A closed peer is then reported at once (end of file) instead
    of after the timeout."""

    def __init__(self, address: str, timeout_s: float, library: str = "@py") -> None:
        super().__init__(address, timeout_s)
        self.library = library
        self._rm: Any = None
        self._inst: Any = None
        self._sess: Any = None
        self._sock: socket.socket | None = None

    @property
    def is_open(self) -> bool:
        return self._inst is not None

    def open(self) -> None:
        import pyvisa

        self.close()
        try:
            if self._rm is None:
                self._rm = pyvisa.ResourceManager(self.library)
            inst = self._rm.open_resource(self.address, open_timeout=int(self.timeout_s * 1000))
        except (pyvisa.Error, OSError, ValueError, Exception) as err:  # pyvisa-py raises bare Exception
            raise ConnectionLostError(f"{self.address}: cannot open ({err})") from err
        inst.read_termination = "\n"
        inst.write_termination = ""
        inst.timeout = int(self.timeout_s * 1000)
        inst.chunk_size = 1 << 20
        if self.address.upper().endswith("::SOCKET"):
            try:
                inst.set_visa_attribute(pyvisa.constants.ResourceAttribute.tcpip_nodelay, True)
            except Exception:  # optional: not every VISA library exposes it
                pass
        self._inst = inst
        # pyvisa-py (0.8) accepts the attribute above but never applies it to its socket, and it writes in
        # 4 KiB chunks: with Nagle's algorithm on, every multi-chunk command then waits for the peer's delayed
        # ACK (~40 ms per round trip on Linux). Set the option on the socket itself where there is one.
        # It also receives in 4 KiB pieces, each with a select() and several attribute look-ups, and sends in
        # 4 KiB pieces, each with a select(): ~10 µs per 4 KiB, i.e. most of the time of a bulk transfer. For its
        # raw sockets, let it receive up to 1 MiB at a time and send with one sendall().
        sess, sock = self._socket()
        self._sess, self._sock = sess, sock
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            sock.setblocking(False)  # our own select() bounds every wait (a socket timeout would poll twice)
            if getattr(sess, "max_recv_size", 0) < 1 << 20:
                sess.max_recv_size = 1 << 20

    def close(self) -> None:
        inst, self._inst = self._inst, None
        self._sess = self._sock = None
        if inst is not None:
            try:
                inst.close()
            except Exception:
                pass

    def _require(self) -> Any:
        if self._inst is None:
            raise ConnectionLostError(f"{self.address}: not connected")
        return self._inst

    def _socket(self) -> tuple[Any, socket.socket | None]:
        """The pyvisa-py session and its socket, if this is one (else (None, None))."""
        try:
            sess = self._rm.visalib.sessions[self._inst.session]
        except Exception:
            return None, None
        sock = getattr(sess, "interface", None)
        return (sess, sock) if isinstance(sock, socket.socket) else (None, None)

    def _peer_closed(self) -> bool:
        _, sock = self._socket()
        if sock is None:
            return False
        try:
            r, _, _ = select.select([sock], [], [], 0)
            return bool(r) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _wait_readable(self) -> None:
        sess, sock = self._socket()
        if sock is None or getattr(sess, "_pending_buffer", b""):
            return
        try:
            r, _, _ = select.select([sock], [], [], self.timeout_s)
            if not r:
                raise self._timeout("read")
            if sock.recv(1, socket.MSG_PEEK) == b"":
                raise ConnectionLostError(f"{self.address}: connection closed by the instrument")
        except (OSError, ValueError) as err:
            if isinstance(err, (InstrumentTimeoutError, ConnectionLostError)):
                raise
            raise ConnectionLostError(f"{self.address}: {err}") from err

    def _io_error(self, err: Exception, what: str) -> Exception:
        import pyvisa

        if isinstance(err, pyvisa.VisaIOError) and err.error_code == pyvisa.constants.StatusCode.error_timeout:
            if not self._peer_closed():
                return self._timeout(what)
        return ConnectionLostError(f"{self.address}: {what} failed ({err})")

    def write(self, data: bytes) -> None:
        inst = self._require()
        if self._sock is not None:
            self._send_all(self._sock, data)
            return
        try:
            inst.write_raw(bytes(data))
        except Exception as err:
            raise self._io_error(err, "write") from err

    def read_message(self, max_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
        if self._sock is None:
            return super().read_message(max_bytes)
        deadline = time.monotonic() + self.timeout_s
        buf = self._sess._pending_buffer
        while True:
            n = _framed(buf, max_bytes)
            if n:
                return _take(buf, n)
            self._fill(deadline, 1 << 16, f"message ({len(buf)} bytes so far)")
            buf = self._sess._pending_buffer

    def read_line(self, max_bytes: int) -> bytes:
        inst = self._require()
        if self._sock is not None:
            return self._recv_line(max_bytes)
        self._wait_readable()
        try:
            return inst.read_bytes(max_bytes, break_on_termchar=True)
        except Exception as err:
            raise self._io_error(err, "read") from err

    def read_exact(self, n: int) -> bytes:
        inst = self._require()
        if n <= 0:
            return b""
        if self._sock is not None:
            return self._recv_exact(n)
        self._wait_readable()
        try:
            out = inst.read_bytes(n, break_on_termchar=False)
        except Exception as err:
            raise self._io_error(err, "read") from err
        if len(out) != n:
            raise self._timeout(f"{len(out)} of {n} bytes")
        return out

    # pyvisa-py raw sockets: bytes are read from the session's socket itself, through the session's own
    # buffer (``_pending_buffer``), so that pyvisa calls and these stay in step. Through pyvisa, a binary block
    # comes back in pieces cut at every 0x0A byte (the termination character stays enabled for the lines
    # around it: a 1 MB block took ~4000 calls), and every call costs ~50 µs of attribute look-ups.
    def _send_all(self, sock: socket.socket, data: bytes) -> None:
        """Send every byte (one ``send`` unless the socket buffer fills), waiting at most ``timeout_s``."""
        view = memoryview(data)
        deadline = time.monotonic() + self.timeout_s
        try:
            while view:
                try:
                    view = view[sock.send(view):]
                except BlockingIOError:
                    pass
                if view and not select.select([], [sock], [], max(deadline - time.monotonic(), 0.0))[1]:
                    raise self._timeout("write")
        except (OSError, ValueError) as err:
            if isinstance(err, InstrumentTimeoutError):
                raise
            raise ConnectionLostError(f"{self.address}: write failed ({err})") from err

    def _fill(self, deadline: float, want: int, what: str) -> None:
        """Receive at least one byte (at most ``want``) into the session buffer, or raise."""
        sock = self._sock
        if sock is None:
            raise ConnectionLostError(f"{self.address}: not connected")

        def recv() -> bytes | None:
            try:
                return sock.recv(want)
            except BlockingIOError:
                return None

        try:
            chunk = self._await(recv, lambda: sock.recv(want), sock, deadline, what)
        except (OSError, ValueError) as err:
            if isinstance(err, InstrumentTimeoutError):
                raise
            raise ConnectionLostError(f"{self.address}: read failed ({err})") from err
        if not chunk:
            raise ConnectionLostError(f"{self.address}: connection closed by the instrument")
        self._sess._pending_buffer += chunk

    def _recv_line(self, max_bytes: int) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        scanned = 0
        while True:
            buf = self._sess._pending_buffer
            k = buf.find(b"\n", scanned, max_bytes)
            if k >= 0 or len(buf) >= max_bytes:
                return _take(buf, k + 1 if k >= 0 else max_bytes)
            scanned = len(buf)
            self._fill(deadline, 1 << 16, "read")

    def _recv_exact(self, n: int) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        while len(self._sess._pending_buffer) < n:
            have = len(self._sess._pending_buffer)
            self._fill(deadline, min(n - have, 1 << 20), f"{have} of {n} bytes")
        return _take(self._sess._pending_buffer, n)

    @property
    def resource(self) -> Any:
        """The open pyvisa resource (for tests and diagnostics)."""
        return self._require()


# --------------------------------------------------------------------------- serial
class SerialTransport(Transport):
    """A pyserial port: a device (``/dev/ttyUSB0``), a pseudo-terminal path, or any pyserial URL (``loop://``,
    ``socket://host:port``). 8 data bits, 1 stop bit, no flow control; ``baud`` and ``parity`` from config.

    pyserial opens and configures the port (raw mode); on a POSIX port the bytes then move through its file
    descriptor directly (``os.read``/``os.write``, every wait a ``select`` bounded by ``timeout_s``): pyserial's
    ``read`` and ``write`` add a ``select`` and a copy per call, and a pty delivers at most 4 KiB per read.
    URL ports without a descriptor (``loop://``) go through pyserial. Mostly-zero arrays travel zero-suppressed."""

    suppress_zeros = True

    def __init__(self, address: str, timeout_s: float, baud: int = 115200, parity: str = "N") -> None:
        super().__init__(address, timeout_s)
        self.baud = int(baud)
        self.parity = parity
        self._ser: Any = None
        self._fd: int | None = None
        self._buf = bytearray()

    @property
    def is_open(self) -> bool:
        return self._ser is not None

    def open(self) -> None:
        import serial

        self.close()
        try:
            self._ser = serial.serial_for_url(self.address, baudrate=self.baud, parity=self.parity, bytesize=8,
                                              stopbits=1, timeout=self.timeout_s, write_timeout=self.timeout_s)
        except (serial.SerialException, OSError, ValueError) as err:
            raise ConnectionLostError(f"{self.address}: cannot open ({err})") from err
        fd = getattr(self._ser, "fd", None)
        self._fd = fd if isinstance(fd, int) and fd >= 0 else None
        if self._fd is not None:
            os.set_blocking(self._fd, False)
        self._buf.clear()

    def close(self) -> None:
        ser, self._ser = self._ser, None
        self._fd = None
        self._buf.clear()
        if ser is not None:
            try:
                ser.close()
            except Exception:
                pass

    def _require(self) -> Any:
        if self._ser is None:
            raise ConnectionLostError(f"{self.address}: not connected")
        return self._ser

    def _lost(self, err: Exception) -> ConnectionLostError:
        return ConnectionLostError(f"{self.address}: {err}")

    def write(self, data: bytes) -> None:
        import serial

        ser = self._require()
        if self._fd is not None:
            self._write_fd(self._fd, data)
            return
        try:
            ser.write(bytes(data))
        except serial.SerialTimeoutException as err:
            raise self._timeout("write") from err
        except (serial.SerialException, OSError) as err:
            raise self._lost(err) from err

    def _write_fd(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + self.timeout_s
        try:
            while view:
                try:
                    view = view[os.write(fd, view):]
                except BlockingIOError:
                    pass
                if view and not select.select([], [fd], [], max(deadline - time.monotonic(), 0.0))[1]:
                    raise self._timeout("write")
        except OSError as err:
            raise self._lost(err) from err

    def _fill(self, deadline: float, want: int, what: str) -> None:
        """Append what is waiting (at least one byte, at most ``want``) to the buffer, or raise on timeout or
        loss."""
        import serial

        ser = self._require()
        if self._fd is None:
            if time.monotonic() > deadline:
                raise self._timeout(what)
            try:
                chunk = ser.read(max(1, min(ser.in_waiting, want)))
            except (serial.SerialException, OSError, TypeError) as err:
                raise self._lost(err) from err
            if not chunk:
                raise self._timeout(what)
            self._buf += chunk
            return
        fd = self._fd

        def read() -> bytes | None:
            try:
                return os.read(fd, want) or None  # a tty in raw mode (VMIN = 0) returns b"" when it has nothing
            except BlockingIOError:
                return None

        try:
            chunk = self._await(read, lambda: os.read(fd, want), fd, deadline, what)
        except OSError as err:
            if isinstance(err, InstrumentTimeoutError):
                raise
            raise self._lost(err) from err
        if not chunk:  # readable but empty: the other end of the line is gone
            raise self._lost(OSError("device reports readiness to read but returned no data"))
        self._buf += chunk

    def read_message(self, max_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        while True:
            n = _framed(self._buf, max_bytes)
            if n:
                return _take(self._buf, n)
            self._fill(deadline, 1 << 16, f"message ({len(self._buf)} bytes so far)")

    def read_line(self, max_bytes: int) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        scanned = 0
        while True:
            k = self._buf.find(b"\n", scanned, max_bytes)
            if k >= 0 or len(self._buf) >= max_bytes:
                return _take(self._buf, k + 1 if k >= 0 else max_bytes)
            scanned = len(self._buf)
            self._fill(deadline, 1 << 16, "read")

    def read_exact(self, n: int) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        while len(self._buf) < n:
            have = len(self._buf)
            self._fill(deadline, n - have, f"{have} of {n} bytes")
        return _take(self._buf, n)
