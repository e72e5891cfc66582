"""The emulated tester served over real transports: a raw TCP socket (SCPI port, like 5025 on bench
instruments) or a pseudo-terminal that a serial client opens.

One client at a time. A client that disconnects (or is dropped by a fault) leaves the array in its safe state.
:func:`serve_tcp` and :func:`serve_pty` block until stopped (SIGINT/SIGTERM in the CLI) and then leave the array
safe; :class:`TcpEmulator` and :class:`PtyEmulator` run the same loop in a background thread for tests::

    with TcpEmulator(config).start() as emu:     # config: a RunConfig; emu.address is the VISA resource
        backend = VisaBackend(config_from_dict({**run, "backend": {"kind": "visa", "address": emu.address}}))
"""
from __future__ import annotations

import errno
import os
import select
import signal
import socket
import sys
import threading
import time
import tty
from contextlib import contextmanager
from typing import Callable, Iterator

from crossbar_ctl.config import RunConfig
from crossbar_ctl.errors import ProtocolError
from crossbar_instruments.blocks import MAX_MESSAGE_BYTES, frame
from crossbar_instruments.tester import Faults, Tester, warm_up
from crossbar_instruments.transport import POLL_S, poll

STOP_POLL_S = 0.05  # how often a waiting server looks at its stop flag
POLL_BEFORE_SLEEP_S = POLL_S  # how long it polls for the next command before it sleeps (see transport.POLL_S)
RECV_BYTES = 1 << 16  # larger reads cost a fresh allocation each (~15 µs for 256 KiB)


class _Closed(Exception):
    """The client side of the connection went away."""


class _Stopped(Exception):
    """The server was asked to stop."""


class _Stream:
    """The server's end of one connection: buffered reads that wait for data, stop or disconnect. Replies are
    collected and sent in one piece before the next wait for input (a pipelined command and its status queries
    get one segment back, not one per reply)."""

    def __init__(self, recv: Callable[[], bytes | None], send: Callable[[bytes], None], fileno: int,
                 stop: threading.Event, initial: bytes = b"") -> None:
        self._recv, self._send, self._fd, self._stop = recv, send, fileno, stop
        self._buf = bytearray(initial)
        self._out: list[bytes] = []

    def _fill(self) -> None:
        self.flush()
        chunk = self._recv()  # None: nothing there (yet); b"": the client left
        if chunk is None:  # poll a moment (the client's next command is often that close), then sleep
            chunk = poll(self._recv, time.monotonic() + POLL_BEFORE_SLEEP_S)
        while chunk is None:
            if self._stop.is_set():
                raise _Stopped
            if select.select([self._fd], [], [], STOP_POLL_S)[0]:
                chunk = self._recv()
        if not chunk:
            raise _Closed
        self._buf += chunk

    def _take(self, n: int) -> bytes:
        with memoryview(self._buf) as view:
            out = view[:n].tobytes()
        del self._buf[:n]
        return out

    def read_message(self, max_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
        """One complete message (:func:`~crossbar_instruments.blocks.frame` on the buffer); a framing fault
        discards the bytes it covers and raises ProtocolError."""
        while True:
            try:
                n = frame(self._buf, max_bytes)
            except ProtocolError as err:
                del self._buf[:len(err.raw)]
                raise
            if n:
                return self._take(n)
            self._fill()

    def read_line(self, max_bytes: int) -> bytes:
        scanned = 0
        while True:
            k = self._buf.find(b"\n", scanned, max_bytes)
            if k >= 0 or len(self._buf) >= max_bytes:
                return self._take(k + 1 if k >= 0 else max_bytes)
            scanned = len(self._buf)
            self._fill()

    def read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._fill()
        return self._take(n)

    def skip_line(self) -> None:
        """Discard up to the next terminator (resynchronise after a framing error)."""
        while b"\n" not in self._buf:
            self._buf.clear()
            self._fill()
        del self._buf[:self._buf.index(b"\n") + 1]

    def write(self, data: bytes) -> None:
        self._out.append(data)

    def flush(self) -> None:
        """Send the collected replies."""
        if self._out:
            data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
            self._out.clear()
            try:
                self._send(data)
            except OSError as err:
                raise _Closed from err


def serve_connection(tester: Tester, stream: _Stream, faults: Faults) -> str:
    """Serve one client until it leaves; returns why the connection ended ("disconnect" or "dropped")."""
    while True:
        try:
            raw = stream.read_message()
        except _Closed:
            return "disconnect"
        except ProtocolError as err:
            reply = tester.framing_error(err)
            if not err.raw.endswith(b"\n"):
                try:
                    stream.skip_line()
                except _Closed:
                    return "disconnect"
            if reply is not None:
                stream.write(reply)
            continue
        fault = faults.take(raw)
        action = fault.action if fault else None
        if action is not None:
            stream.flush()  # the replies to the commands before the faulty one get through
        if action == "drop":
            return "dropped"
        if action == "stall":
            faults.stall(fault.seconds)
        reply = tester.refuse(raw, fault.code) if action == "error" else tester.handle(raw)
        if action == "drop_after":
            return "dropped"
        if action == "garbage":
            reply = fault.data
        if reply is not None:
            stream.write(reply)


class _Server:
    """Shared lifecycle of the TCP and pty servers."""

    def __init__(self, config: RunConfig, tester: Tester | None = None) -> None:
        self.config = config
        self.tester = tester if tester is not None else Tester(config)
        self.faults = Faults()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.connections = 0

    @property
    def address(self) -> str:
        raise NotImplementedError

    def serve_forever(self) -> None:
        raise NotImplementedError

    def start(self) -> "_Server":
        """Serve in a daemon thread (tests)."""
        self._thread = threading.Thread(target=self._run, name=f"{type(self).__name__}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.serve_forever()
        except _Stopped:
            pass

    def request_stop(self) -> None:
        """Ask the serving loop to return (signal handlers call this)."""
        self._stop.set()
        self.faults.release()

    def stop(self) -> None:
        """Stop serving, leave the array safe and release it (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._close()
        self.tester.shutdown()

    def _close(self) -> None:
        pass

    def __enter__(self) -> "_Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _recv_now(conn: socket.socket) -> bytes | None:
    """What the client sent (b"" if it closed the connection), or None if nothing is there yet."""
    try:
        return conn.recv(RECV_BYTES, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None


class TcpEmulator(_Server):
    """Raw-socket SCPI server on ``host:port`` (port 0: an ephemeral port, see :attr:`port`)."""

    def __init__(self, config: RunConfig, host: str = "127.0.0.1", port: int = 0,
                 tester: Tester | None = None) -> None:
        super().__init__(config, tester)
        self.host = host
        self._lsock = socket.create_server((host, port))
        self.port = self._lsock.getsockname()[1]

    @property
    def address(self) -> str:
        """The VISA resource name of this server."""
        return f"TCPIP::{self.host}::{self.port}::SOCKET"

    def serve_forever(self) -> None:
        while not self._stop.is_set():
            r, _, _ = select.select([self._lsock], [], [], STOP_POLL_S)
            if not r:
                continue
            conn, _ = self._lsock.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connections += 1
            reason = "disconnect"
            try:
                stream = _Stream(lambda: _recv_now(conn), conn.sendall, conn.fileno(), self._stop)
                reason = serve_connection(self.tester, stream, self.faults)
            except (_Closed, OSError):
                reason = "disconnect"
            except _Stopped:
                reason = "shutdown"
                raise
            finally:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
                self.tester.disconnected(reason)

    def _close(self) -> None:
        self._lsock.close()


class PtyEmulator(_Server):
    """Serves on the master side of a pseudo-terminal; a serial client opens :attr:`address` (the slave path,
    or ``link``, a symlink kept pointing at the current slave: a ``drop`` fault replaces the pty, and a client
    that reopens the link finds the new one). A client closing the port is seen as EIO on the master."""

    def __init__(self, config: RunConfig, link: str | None = None, tester: Tester | None = None) -> None:
        super().__init__(config, tester)
        self.link = link
        self._master = -1
        self.slave_path = ""
        self._new_pty()

    def _new_pty(self) -> None:
        if self._master >= 0:
            os.close(self._master)
        master, slave = os.openpty()
        tty.setraw(slave)
        self.slave_path = os.ttyname(slave)
        os.close(slave)  # hold no slave open here, so a client's close shows as EIO on the master
        os.set_blocking(master, False)
        self._master = master
        if self.link:
            tmp = f"{self.link}.{os.getpid()}.tmp"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(self.slave_path, tmp)
            os.replace(tmp, self.link)

    @property
    def address(self) -> str:
        """The serial port path a client opens."""
        return self.link or self.slave_path

    def _recv(self) -> bytes | None:
        """Bytes from the client; None if nothing is there yet; b"" if no client has the port open (EIO)."""
        try:
            return os.read(self._master, RECV_BYTES)
        except BlockingIOError:
            return None
        except OSError as err:
            if err.errno == errno.EIO:
                return b""
            raise

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._master, view)
            except BlockingIOError:
                if self._stop.is_set():
                    raise _Stopped from None
                select.select([], [self._master], [], STOP_POLL_S)
                continue
            view = view[n:]

    def serve_forever(self) -> None:
        while not self._stop.is_set():
            first = self._recv()
            if not first:  # no client (EIO: sleep, select would return at once) or an idle one
                if first == b"":
                    time.sleep(STOP_POLL_S / 2)
                else:
                    select.select([self._master], [], [], STOP_POLL_S)
                continue
            self.connections += 1
            stream = _Stream(self._recv, self._send, self._master, self._stop, initial=first)
            try:
                reason = serve_connection(self.tester, stream, self.faults)
            except (_Closed, OSError):
                reason = "disconnect"
            except _Stopped:
                self.tester.disconnected("shutdown")
                raise
            self.tester.disconnected(reason)
            if reason == "dropped":
                self._new_pty()

    def _close(self) -> None:
        if self._master >= 0:
            os.close(self._master)
            self._master = -1
        if self.link and os.path.islink(self.link):
            os.unlink(self.link)


def _print_address(address: str) -> None:
    print(address, flush=True)


def serve_tcp(config: RunConfig, host: str = "127.0.0.1", port: int = 5025,
              on_ready: Callable[[str], None] = _print_address) -> None:
    """Serve the emulated tester on a raw TCP socket until SIGINT/SIGTERM; the array is left safe.
    ``on_ready`` receives the VISA resource name (with the real port if ``port`` is 0); by default it is
    printed on stdout."""
    _serve(TcpEmulator(config, host, port), on_ready)


def serve_pty(config: RunConfig, link: str | None = None,
              on_ready: Callable[[str], None] = _print_address) -> None:
    """Serve the emulated tester on a pseudo-terminal until SIGINT/SIGTERM; the array is left safe.
    ``on_ready`` receives the path a serial client opens (the slave, or ``link``); by default it is printed on
    stdout."""
    _serve(PtyEmulator(config, link), on_ready)


@contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """While active, SIGINT and SIGTERM call ``stop()`` instead of ending the process (main thread only; the
    previous handlers come back afterwards)."""
    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda *_: stop())
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _serve(emu: _Server, on_ready: Callable[[str], None]) -> None:
    with stop_on_signals(emu.request_stop):
        try:
            on_ready(emu.address)
            emu.serve_forever()
        except _Stopped:
            pass
        finally:
            emu.stop()


def main(config: RunConfig, transport: str, host: str = "127.0.0.1", port: int = 5025,
         link: str | None = None) -> int:
    """``crossbar-ctl emulate``: load the simulator's kernels, print the address on stdout (flushed), serve until
    SIGINT/SIGTERM, leave safe."""
    if transport not in ("tcp", "pty"):
        raise ValueError(f"transport must be tcp or pty, got {transport!r}")
    warm_up(config)
    if transport == "tcp":
        emu: _Server = TcpEmulator(config, host, port)
    else:
        emu = PtyEmulator(config, link)
    _serve(emu, _print_address)
    t = emu.tester
    state = "outputs off, array left in its safe state" if t.is_safe else "OUTPUTS STILL ON"
    print(f"crossbar-ctl emulate: stopped ({t.safe_events[-1] if t.safe_events else 'never enabled'}); {state}; "
          f"{len(t.applied_seqs)} operations applied", file=sys.stderr, flush=True)
    return 0 if t.is_safe else 1
