"""Transports: exact reads of lines and blocks, and dead or silent peers raising typed errors, never hanging."""
from __future__ import annotations

import os
import socket
import threading
import time
import tty
from typing import Callable, Iterator

import pytest

from crossbar_ctl.errors import ConnectionLostError, InstrumentTimeoutError, ProtocolError
from crossbar_instruments.transport import SerialTransport, VisaTransport

BLOCK_MSG = b"F32,1x2,#18\n\n\n\n\x00\x00\x80?\n"  # the block's bytes include four terminators


@pytest.fixture
def server() -> Iterator[Callable[[Callable[[socket.socket], None]], str]]:
    """A loopback TCP server running ``behaviour(conn)`` for one client; returns the VISA resource name."""
    socks: list[socket.socket] = []

    def start(behaviour: Callable[[socket.socket], None]) -> str:
        ls = socket.create_server(("127.0.0.1", 0))
        socks.append(ls)

        def run() -> None:
            conn, _ = ls.accept()
            with conn:
                behaviour(conn)

        threading.Thread(target=run, daemon=True).start()
        return f"TCPIP::127.0.0.1::{ls.getsockname()[1]}::SOCKET"

    yield start
    for s in socks:
        s.close()


def test_visa_reads_a_block_containing_terminators_by_its_length(server) -> None:
    def reply(conn: socket.socket) -> None:
        assert conn.recv(100) == b"Q?\n"
        conn.sendall(BLOCK_MSG + b"1\n")
        time.sleep(0.5)

    t = VisaTransport(server(reply), 2.0)
    t.open()
    try:
        t.write(b"Q?\n")
        assert t.read_message() == BLOCK_MSG
        assert t.read_message() == b"1\n"
    finally:
        t.close()


def test_visa_frames_a_message_that_arrives_in_pieces(server) -> None:
    def reply(conn: socket.socket) -> None:
        assert conn.recv(100) == b"Q?\n"
        for k in range(len(BLOCK_MSG)):  # one byte per segment: every cut, also inside the block
            conn.sendall(BLOCK_MSG[k:k + 1])
            time.sleep(0.002)
        conn.sendall(b'0,"No error"\n' + BLOCK_MSG[:9])  # and a message cut after its header
        time.sleep(2)

    t = VisaTransport(server(reply), 0.5)
    t.open()
    try:
        t.write(b"Q?\n")
        assert t.read_message() == BLOCK_MSG
        assert t.read_message() == b'0,"No error"\n'
        t0 = time.monotonic()
        with pytest.raises(InstrumentTimeoutError):
            t.read_message()
        assert 0.4 <= time.monotonic() - t0 < 1.5
    finally:
        t.close()


def test_visa_peer_that_closes_raises_connection_lost_at_once(server) -> None:
    t = VisaTransport(server(lambda conn: None), 10.0)
    t.open()
    t0 = time.monotonic()
    with pytest.raises(ConnectionLostError):
        t.read_line(100)
    assert time.monotonic() - t0 < 3.0  # not after the 10 s timeout
    t.close()


def test_visa_silent_peer_times_out(server) -> None:
    t = VisaTransport(server(lambda conn: time.sleep(2)), 0.3)
    t.open()
    t0 = time.monotonic()
    with pytest.raises(InstrumentTimeoutError):
        t.read_line(100)
    assert 0.25 <= time.monotonic() - t0 < 2.0
    t.close()


def test_visa_unreachable_instrument() -> None:
    ls = socket.create_server(("127.0.0.1", 0))
    port = ls.getsockname()[1]
    ls.close()  # nobody listens there now
    t = VisaTransport(f"TCPIP::127.0.0.1::{port}::SOCKET", 1.0)
    with pytest.raises(ConnectionLostError):
        t.open()
        t.write(b"*IDN?\n")
        t.read_line(100)
    t.close()


def test_serial_loopback_reads_lines_and_blocks() -> None:
    t = SerialTransport("loop://", 0.3)
    t.open()
    try:
        t.write(BLOCK_MSG + b'0,"No error"\n')
        assert t.read_message() == BLOCK_MSG
        assert t.read_message() == b'0,"No error"\n'
        t0 = time.monotonic()
        with pytest.raises(InstrumentTimeoutError):
            t.read_line(100)
        assert time.monotonic() - t0 < 2.0
        t.write(b"x" * 50 + b"\n")
        with pytest.raises(ProtocolError, match="limit"):
            t.read_message(max_bytes=20)
    finally:
        t.close()


def test_serial_pty_frames_blocks_across_reads() -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    os.close(slave)
    t = SerialTransport(path, 0.5)
    t.open()
    try:
        big = b"F64,1200,#49600" + bytes(range(256)) * 37 + bytes(128) + b"\n"  # > 4 KiB: several pty reads
        for k in range(0, len(big), 1000):
            os.write(master, big[k:k + 1000])
        os.write(master, BLOCK_MSG)
        assert t.read_message() == big
        assert t.read_message() == BLOCK_MSG
        os.write(master, b"F32,1,#14\x00")  # the rest never comes
        with pytest.raises(InstrumentTimeoutError):
            t.read_message()
    finally:
        t.close()
        os.close(master)


def test_serial_pty_whose_peer_vanishes_raises_connection_lost() -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    os.close(slave)
    t = SerialTransport(path, 10.0)
    t.open()
    try:
        os.write(master, b"1\n")
        assert t.read_line(10) == b"1\n"
        os.close(master)
        t0 = time.monotonic()
        with pytest.raises(ConnectionLostError):
            t.read_line(10)
        assert time.monotonic() - t0 < 3.0  # not after the 10 s timeout
    finally:
        t.close()
    with pytest.raises(ConnectionLostError):
        SerialTransport("/nonexistent/tty", 1.0).open()
