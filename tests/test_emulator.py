"""The emulated tester over real transports (pyvisa-py on a loopback TCP socket, pyserial on a pty):
bit-identical results to the in-process simulator, limits, safe state, errors, stalls, dropped connections."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

from crossbar_ctl.backend import Backend, connect
from crossbar_ctl.config import RunConfig, config_from_dict, dump_toml
from crossbar_ctl.errors import ConnectionLostError, InstrumentError, InstrumentTimeoutError, LimitError, ProtocolError
from crossbar_instruments.emulator import PtyEmulator, TcpEmulator
from crossbar_instruments.serial_backend import SerialBackend
from crossbar_instruments.tester import Fault
from crossbar_instruments.transport import SerialTransport, VisaTransport
from crossbar_instruments.visa_backend import VisaBackend

BASE: dict[str, Any] = {
    "seed": 7,
    "array": {"tiles": 2, "rows": [12, 5], "cols": [7, 3]},
    "read": {"read_noise": 0.03},
    "device": {"preset": "agsi", "sigma_c2c": 0.02, "sigma_d2d_g_max": 0.1},
}


def make_cfg(base: dict[str, Any] = BASE, **backend: Any) -> RunConfig:
    d = {k: v for k, v in base.items()}
    d["backend"] = {"timeout_s": 30.0, "retries": 3, "backoff_s": 0.01, **backend}  # generous: CI may compile
    return config_from_dict(d)


def workload(b: Backend) -> list[Any]:
    """Every operation, with stochastic pulses and read noise (so any extra or missing RNG draw shows)."""
    rng = np.random.default_rng(1)
    out: list[Any] = [b.read_vmm(0, rng.uniform(-0.2, 0.2, 12))]
    b.outer_pulse(0, rng.uniform(0, 1, 12), rng.uniform(0, 1, 7), 1, 16)
    b.outer_pulse(1, rng.uniform(0, 1, 5), rng.uniform(0, 1, 3), -1, 8, mode="expected")
    b.program(0, rng.integers(-20, 21, (12, 7)))
    out.append(b.read_vmm(1, rng.uniform(-0.2, 0.2, (4, 5))))
    out.append(b.read_vmm_t(0, rng.uniform(-0.2, 0.2, (2, 7))))
    out.append(b.read_conductance(0))
    b.pulse_cell(1, 2, 1, 2.5, 1e-6, 5)
    out.append(b.read_cell(1, 2, 1))
    out.append(b.read_cell(0, 0, 0, v_read_V=1.5))  # above threshold: the read pulses the device
    return out


N_OPS = 10


@pytest.fixture(scope="module", autouse=True)
def _warm_kernels() -> None:
    """Compile the simulator's kernels before any test with a short timeout runs (emulators in threads share
    them; the numba disk cache serves the CLI's subprocess)."""
    workload(connect(make_cfg()))


def assert_same(a: list[Any], b: list[Any]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert type(x) is type(y) and np.asarray(x).dtype == np.asarray(y).dtype
        assert np.array_equal(x, y), (x, y)


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


def ask(emu: TcpEmulator, line: bytes) -> bytes:
    """One query on a fresh raw socket (the way a second client would ask the tester)."""
    with socket.create_connection(("127.0.0.1", emu.port), timeout=30) as s:
        s.sendall(line)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(4096)
            assert chunk, "emulator closed the connection"
            buf += chunk
        return buf


@pytest.fixture
def tcp() -> Iterator[Callable[..., TcpEmulator]]:
    made: list[TcpEmulator] = []

    def make(cfg: RunConfig | None = None) -> TcpEmulator:
        emu = TcpEmulator(cfg or make_cfg()).start()
        made.append(emu)
        return emu

    yield make
    for emu in made:
        emu.stop()


def visa(emu: TcpEmulator, base: dict[str, Any] = BASE, **backend: Any) -> VisaBackend:
    return VisaBackend(make_cfg(base, kind="visa", address=emu.address, **backend))


# --------------------------------------------------------------------------- transparency
def test_visa_tcp_matches_in_process_simulator(tcp) -> None:
    emu = tcp()
    ref = connect(make_cfg())
    with visa(emu) as b:
        assert_same(workload(b), workload(ref))
        for t in (0, 1):
            assert np.array_equal(b.true_conductance(t), ref.true_conductance(t))
        assert b.seq == ref.seq == N_OPS
    assert emu.tester.applied_seqs == list(range(1, N_OPS + 1))


def test_serial_pty_matches_in_process_simulator() -> None:
    with PtyEmulator(make_cfg()).start() as emu:
        ref = connect(make_cfg())
        with SerialBackend(make_cfg(kind="serial", address=emu.address)) as b:
            assert_same(workload(b), workload(ref))
            assert np.array_equal(b.true_conductance(0), ref.true_conductance(0))
        wait_for(lambda: emu.tester.safe_events[-1:] == ["disconnect"])
        assert emu.tester.is_safe and emu.tester.applied_seqs == list(range(1, N_OPS + 1))


@pytest.mark.parametrize("transport", ["tcp", "pty"])
def test_full_size_tile_blocks(transport: str, tcp) -> None:
    base = {"seed": 3, "array": {"tiles": 1, "rows": 785, "cols": 200}, "read": {"read_noise": 0.02}}
    counts = np.random.default_rng(0).integers(-30, 31, (785, 200))
    ref = connect(make_cfg(base))
    if transport == "tcp":
        emu = tcp(make_cfg(base))
        b: Backend = visa(emu, base)
    else:
        emu = PtyEmulator(make_cfg(base)).start()
        b = SerialBackend(make_cfg(base, kind="serial", address=emu.address))
    try:
        for be in (b, ref):
            be.program(0, counts)
        assert np.array_equal(b.read_conductance(0), ref.read_conductance(0))  # 1.26 MB binary block
        v = np.full(785, 0.1)
        assert np.array_equal(b.read_vmm(0, v), ref.read_vmm(0, v))
    finally:
        b.close()
        if transport == "pty":
            emu.stop()


def test_sparse_arrays_travel_zero_suppressed_over_serial_and_decode_the_same() -> None:
    base = {"seed": 3, "array": {"tiles": 1, "rows": 785, "cols": 200}, "read": {"read_noise": 0.02}}
    rng = np.random.default_rng(4)
    counts = np.where(rng.random((785, 200)) < 0.01, rng.integers(-3, 4, (785, 200)), 0)
    v = np.where(rng.random((8, 785)) < 0.2, rng.uniform(-0.2, 0.2, (8, 785)), 0.0)
    p = np.where(rng.random(785) < 0.3, rng.uniform(0, 0.2, 785), 0.0)
    sent: list[bytes] = []

    class Spy(SerialTransport):
        def write(self, data: bytes) -> None:
            sent.append(bytes(data))
            super().write(data)

    ref = connect(make_cfg(base))
    with PtyEmulator(make_cfg(base)).start() as emu:
        c = make_cfg(base, kind="serial", address=emu.address)
        with SerialBackend(c, transport_factory=lambda: Spy(emu.address, 30.0)) as b:
            for be in (b, ref):
                be.program(0, counts)
                be.outer_pulse(0, p, np.full(200, 0.5), 1, 8)
            assert np.array_equal(b.read_vmm(0, v), ref.read_vmm(0, v))
            assert np.array_equal(b.true_conductance(0), ref.true_conductance(0))
    heads = [w.split(b"#", 1)[0] for w in sent]
    # counts within ±127 travel as int8 on a slow link
    assert any(b"PROG 1,ZI8,785x200," in h for h in heads) and any(b"OPUL 2,ZF64,785," in h for h in heads)
    assert any(b"VMM? 3,ZF32,8x785," in h for h in heads)


def test_status_query_reports_the_last_sequence_and_takes_the_oldest_error(tcp) -> None:
    emu = tcp()
    assert ask(emu, b"SEQ:STAT?\n") == b'0,0,"No error"\n'
    emu.tester.push_error(-240, "Hardware error; relay")
    emu.tester.push_error(-241, "second")
    assert ask(emu, b"SEQ:STAT?\n") == b'0,-240,"Hardware error; relay"\n'
    assert ask(emu, b"SYST:ERR?\n") == b'-241,"second"\n'
    with visa(emu) as b:
        b.pulse_cell(0, 1, 1, 2.0, 1e-6, 2)
    assert ask(emu, b"SEQuence:STATus?\n") == b'1,0,"No error"\n'


# --------------------------------------------------------------------------- limits and safe state
def test_limit_error_is_raised_before_anything_is_sent(tcp) -> None:
    emu = tcp()
    sent: list[bytes] = []

    class Spy(VisaTransport):
        def write(self, data: bytes) -> None:
            sent.append(data)
            super().write(data)

    c = make_cfg(kind="visa", address=emu.address)
    with VisaBackend(c, transport_factory=lambda: Spy(emu.address, 30.0)) as b:
        n_sent, n_seen = len(sent), emu.tester.commands
        with pytest.raises(LimitError, match="max_voltage_V"):
            b.read_vmm(0, np.full(12, 3.5))
        with pytest.raises(LimitError, match="max_pulses_per_device"):
            b._program(0, np.full((12, 7), 2000, dtype=np.int32), 2.0, -2.0, 1e-6)
        with pytest.raises(LimitError, match="max_pulse_width_s"):
            b.pulse_cell(0, 0, 0, 2.0, 1.0)
        assert len(sent) == n_sent and emu.tester.commands == n_seen


def test_safe_state_after_close(tcp) -> None:
    emu = tcp()
    b = visa(emu)
    b.read_vmm(0, np.zeros(12))
    assert b.scpi("OUTP?") == "1"
    b.close()
    wait_for(lambda: emu.tester.safe_events[-1:] == ["disconnect"])
    assert ask(emu, b"SYST:SAFE?\n") == b"1\n" and ask(emu, b"OUTP?\n") == b"0\n"
    assert "OUTP OFF" in emu.tester.safe_events


def test_safe_state_after_an_exception_in_a_with_block(tcp) -> None:
    emu = tcp()
    with pytest.raises(ZeroDivisionError):
        with visa(emu) as b:
            b.program(0, np.ones((12, 7), dtype=int))
            b.settle()  # (a pipelined write returns once sent)
            assert emu.tester.output_on
            1 / 0
    wait_for(lambda: emu.tester.safe_events[-2:] == ["OUTP OFF", "disconnect"])
    assert emu.tester.is_safe
    assert ask(emu, b"SYST:SAFE?\n") == b"1\n"


def test_safe_state_after_the_client_drops_the_connection(tcp) -> None:
    emu = tcp()
    with socket.create_connection(("127.0.0.1", emu.port), timeout=30) as s:
        s.sendall(b"OUTP ON\nOUTP?\n")
        assert s.recv(16) == b"1\n"
        assert not emu.tester.is_safe
    wait_for(lambda: emu.tester.safe_events[-1:] == ["disconnect"])
    assert ask(emu, b"SYST:SAFE?\n") == b"1\n"


# --------------------------------------------------------------------------- errors and faults
def test_garbled_reply_raises_protocol_error_with_the_raw_bytes(tcp) -> None:
    emu = tcp()
    ref = connect(make_cfg())
    garbage = b"F32,1x7,#14abcd\n"
    emu.faults.add(Fault("garbage", match="TILE0:VMM?", data=garbage))
    with visa(emu) as b:
        with pytest.raises(ProtocolError) as e:
            b.read_vmm(0, np.full(12, 0.1))
        assert e.value.raw == garbage
        ref.read_vmm(0, np.full(12, 0.1))  # the tester did execute it
        assert_same(workload(b), workload(ref))  # the next call resolves the read: logged late, no desync
        assert b.seq == ref.seq == N_OPS + 1 and b.reconnects == 1


@pytest.mark.parametrize("pipeline", [False, True])
def test_instrument_errors_raise_instrument_error(tcp, pipeline: bool) -> None:
    """A refused or failed write raises InstrumentError at its call, or (pipelined) at settle(); no sequence
    number is used twice or skipped either way."""
    tight = dict(BASE, limits={"max_voltage_V": 2.5, "max_pulses_per_device": 5})
    emu = tcp(make_cfg(tight))
    with visa(emu, pipeline_writes=pipeline) as b:  # the client allows 3 V and 1000 pulses; the tester refuses
        with pytest.raises(InstrumentError) as e:
            b.read_vmm(0, np.full(12, 2.8))
        assert e.value.code == -222 and "max_voltage_V" in e.value.text
        with pytest.raises(InstrumentError) as e:
            b.program(0, np.full((12, 7), 9))
            b.settle()
        assert e.value.code == -222 and "max_pulses_per_device" in e.value.text
        assert b.seq == 0
        emu.tester.push_error(-240, "Hardware error; relay stuck")
        with pytest.raises(InstrumentError) as e:
            b.pulse_cell(0, 0, 0, 2.0, 1e-6, 1)
            b.settle()
        assert (e.value.code, e.value.text) == (-240, "Hardware error; relay stuck")
        assert b.seq == 1 and emu.tester.applied_seqs == [1]  # it was applied: logged, no sequence gap
        b.read_vmm(0, np.zeros(12))
        assert emu.tester.applied_seqs == [1, 2]


def test_pipelined_write_error_surfaces_at_the_next_call(tcp, tmp_path: Path) -> None:
    """A pipelined write the tester refuses is reported by the next call (naming the write); the command sent
    behind it is resolved on reconnection, and the op log still equals what the tester applied."""
    from crossbar_ctl.oplog import OpLog, read_log

    tight = dict(BASE, limits={"max_pulses_per_device": 5})
    emu = tcp(make_cfg(tight))
    with visa(emu) as b:
        log = OpLog(tmp_path / "oplog.h5")
        b.add_listener(log.record)
        b.program(0, np.full((12, 7), 2))  # seq 1: fine
        b.program(0, np.full((12, 7), 9))  # seq 2: the tester refuses it; this call has already returned
        with pytest.raises(InstrumentError) as e:
            b.read_vmm(0, np.zeros(12))  # seq 3 goes out behind it, then the refusal is read
        assert e.value.code == -222 and "program (seq 2)" in e.value.text
        assert b.seq == 1
        out = b.read_vmm(0, np.zeros(12))  # reconnects; seq 2 again, this time a read
        assert out.shape == (7,) and b.seq == 2 and b.reconnects == 1
        log.close()
    assert emu.tester.applied_seqs == [1, 2]
    rows = read_log(tmp_path / "oplog.h5")
    assert rows["ops"]["seq"].tolist() == [1, 2] and rows["kind"] == ["program", "read_vmm"]


def test_stalled_tester_times_out_within_the_timeout(tcp) -> None:
    emu = tcp()
    ref = connect(make_cfg())
    emu.faults.add(Fault("stall", match="TILE0:VMM?", seconds=30))
    b = visa(emu, timeout_s=0.5)
    try:
        t0 = time.monotonic()
        with pytest.raises(InstrumentTimeoutError):
            b.read_vmm(0, np.full(12, 0.1))
        assert 0.45 <= time.monotonic() - t0 < 2.5  # timeout_s = 0.5; the stall is 30 s
        emu.faults.release()  # the tester wakes up and completes the read nobody waits for any more
        ref.read_vmm(0, np.full(12, 0.1))
        wait_for(lambda: emu.tester.applied_seqs == [1])
        assert_same(workload(b), workload(ref))
        assert b.seq == N_OPS + 1
    finally:
        b.close()


def test_dropped_connections_mid_sequence_apply_every_op_exactly_once(tcp) -> None:
    emu = tcp()
    ref = connect(make_cfg())
    emu.faults.add(Fault("drop", match="TILE0:PROG"))  # lost before it was applied: re-sent
    emu.faults.add(Fault("drop_after", match="TILE1:OPUL"))  # applied, status lost: not re-sent
    emu.faults.add(Fault("drop_after", match="TILE0:VMM?", nth=1))  # applied query: replayed from the cache
    emu.faults.add(Fault("drop", match="TILE0:COND?"))
    with visa(emu) as b:
        assert_same(workload(b), workload(ref))
        assert b.reconnects == 4
        assert np.array_equal(b.true_conductance(0), ref.true_conductance(0))
        assert np.array_equal(b.true_conductance(1), ref.true_conductance(1))
    log = emu.tester.log
    assert emu.tester.applied_seqs == list(range(1, N_OPS + 1))  # none twice, none skipped
    assert [(a.seq, a.name) for a in log if a.replayed] == [(1, "vmm")]


def test_pty_drop_reconnects_through_the_link(tmp_path) -> None:
    link = str(tmp_path / "tester")
    with PtyEmulator(make_cfg(), link=link).start() as emu:
        ref = connect(make_cfg())
        emu.faults.add(Fault("drop_after", match="TILE0:PROG"))
        with SerialBackend(make_cfg(kind="serial", address=link)) as b:
            assert_same(workload(b), workload(ref))
            assert b.reconnects == 1 and emu.connections == 2  # a new pty behind the same link
        assert emu.tester.applied_seqs == list(range(1, N_OPS + 1))


# --------------------------------------------------------------------------- the CLI
@pytest.mark.parametrize("transport", ["tcp", "pty"])
def test_cli_emulate_serves_until_sigterm_and_leaves_safe(transport: str, tmp_path) -> None:
    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text(dump_toml(make_cfg()))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    args = [sys.executable, "-m", "crossbar_ctl.cli", "emulate", "--config", str(cfg_file), "--transport", transport]
    if transport == "tcp":
        args += ["--port", "0"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        address = proc.stdout.readline().strip()
        assert address.startswith("TCPIP::127.0.0.1::" if transport == "tcp" else "/dev/")
        kind = {"tcp": "visa", "pty": "serial"}[transport]
        b = connect(make_cfg(kind=kind, address=address))
        ref = connect(make_cfg())
        assert_same(workload(b), workload(ref))
        assert b.scpi("OUTP?") == "1"
        proc.send_signal(signal.SIGTERM)  # while the client still holds the outputs on
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0 and "stopped (shutdown); outputs off, array left in its safe state" in err
        assert f"{N_OPS} operations applied" in err
        with pytest.raises(ConnectionLostError):
            b.close()  # the tester is gone: closing says it could not reach it (after bounded retries)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_emulate_refuses_a_thread_count_below_one(capsys: pytest.CaptureFixture[str]) -> None:
    from crossbar_ctl.cli import main

    assert main(["emulate", "--threads", "0"]) == 2
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err
