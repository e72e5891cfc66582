"""Faults injected into the emulated tester at random points of short training runs (fixed seeds).

* drops (connection closed before or after the command executes): the driver reconnects transparently; the run
  completes with the op log equal to the tester's applied operations, and conductances and results equal an
  unfaulted run's;
* stalls, garbage replies, instrument errors: the run stops with the typed error (InstrumentTimeoutError,
  ProtocolError, InstrumentError), the tester is left safe, and the run resumes from its checkpoint; the op log
  never has a duplicate or a gap and always equals the sequence numbers the tester applied;

each with pipelined writes (the default) and without.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from crossbar_ctl.backend import connect
from crossbar_ctl.errors import InstrumentError, InstrumentTimeoutError, ProtocolError
from crossbar_ctl.oplog import read_log
from crossbar_ctl.training.trainer import Trainer
from crossbar_instruments.emulator import TcpEmulator
from crossbar_instruments.launch import with_address
from crossbar_instruments.tester import Fault, sim_config
from tests.hil_common import assert_log_consecutive, history, log_seqs, tiny

N_FAULTS = 20  # per kind
GARBAGE = [b"F64,1x1,#3xyz\n", b"\xff\xfe\xfd\n", b"F32,2x2,#216" + bytes(4) + b"\n", b"!oops\n", b"1,2,3\n",
           b'F32,1x3,#14abcd\n', b"#0\n"]
EXPECTED = {"stall": InstrumentTimeoutError, "garbage": ProtocolError, "error": InstrumentError}


def wait_for(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.005)


@pytest.mark.parametrize("pipeline", [True, False])
def test_dropped_connections_are_transparent(tmp_path: Path, pipeline: bool) -> None:
    cfg = tiny("backend.retries=3", "backend.backoff_s=0.0", "training.epochs=2",
               f"backend.pipeline_writes={str(pipeline).lower()}")
    ref = connect(cfg)
    full = Trainer(cfg, tmp_path / "ref", backend=ref, progress=False).run()
    n_ops = ref.seq
    rng = np.random.default_rng(2024)
    # >= 3 commands apart; below n_ops - 40 because a fault counts the commands it sees while not yet fired, and
    # a command at which an earlier fault fires is not shown to the later ones
    points = np.sort(rng.choice(np.arange(3, n_ops - 40, 3), size=N_FAULTS + 4, replace=False))
    with TcpEmulator(sim_config(cfg)).start() as emu:
        for k, nth in enumerate(points):  # the nth array command; before (not applied) or after (applied)
            emu.faults.add(Fault("drop" if k % 2 else "drop_after", match="TILE", nth=int(nth)))
        tr = Trainer(with_address(cfg, "visa", emu.address), tmp_path / "run", progress=False)
        res = tr.run()
        assert tr.backend.reconnects == len(points)  # every fault detected, every one survived
        assert all(f.fired for f in emu.faults._items)
        wait_for(lambda: emu.tester.safe_events[-1:] == ["disconnect"])
        assert emu.tester.is_safe and emu.tester.safe_events[-2:] == ["OUTP OFF", "disconnect"]
        assert emu.tester.applied_seqs == list(range(1, n_ops + 1))  # none applied twice, none skipped
        replays = [a for a in emu.tester.log if a.replayed]
        assert replays and all(a.name in ("vmm", "vmm_t", "cond") for a in replays)  # queries answered from cache
        for t in range(ref.n_tiles):
            assert np.array_equal(emu.tester.dut.true_conductance(t), ref.true_conductance(t))
    assert history(res) == history(full) and res["device_pulses"] == full["device_pulses"]
    assert log_seqs(tmp_path / "run").tolist() == list(range(1, n_ops + 1))
    assert read_log(tmp_path / "run" / "oplog.h5")["params"] == read_log(tmp_path / "ref" / "oplog.h5")["params"]


@pytest.mark.parametrize("pipeline", [True, False])
@pytest.mark.parametrize("kind", ["stall", "garbage", "error"])
def test_faults_stop_the_run_with_a_typed_error_and_it_resumes(kind: str, pipeline: bool, tmp_path: Path) -> None:
    timeout = 0.4
    base = ["training.limit_train=64", "training.limit_test=32", "backend.retries=3", "backend.backoff_s=0.0",
            f"backend.timeout_s={timeout}", f"backend.pipeline_writes={str(pipeline).lower()}"]
    rng = np.random.default_rng({"stall": 1, "garbage": 2, "error": 3}[kind])
    run = tmp_path / "run"
    with TcpEmulator(sim_config(tiny(*base))).start() as emu:
        Trainer(with_address(tiny(*base, "training.epochs=1"), "visa", emu.address), run, progress=False).run()
        cfg = with_address(tiny(*base, "training.epochs=1000"), "visa", emu.address)
        late = 0
        for i in range(N_FAULTS):
            fault = Fault(kind, match="TILE", nth=int(rng.integers(2, 40)), seconds=1.5 * timeout,
                          data=GARBAGE[i % len(GARBAGE)], code=-241)
            emu.faults.add(fault)
            with pytest.raises(EXPECTED[kind]) as err:
                Trainer(cfg, run, progress=False).run(resume=True)
            assert fault.fired
            if kind == "error":
                assert err.value.code == -241
            assert not emu.tester.output_on  # the client switched the outputs off on its way out
            wait_for(lambda: emu.tester.safe_events[-1] == "disconnect")
            assert emu.tester.is_safe
            assert_log_consecutive(run)
            assert log_seqs(run).tolist() == emu.tester.applied_seqs  # the log and the array agree
            late = read_log(run / "oplog.h5")["status"].count("late")
        sessions = read_log(run / "oplog.h5")["sessions"]
        assert len(sessions) == N_FAULTS + 1 and all(s["mode"] == "resume" for s in sessions[1:])
        if kind in ("stall", "garbage"):  # an operation that executed while its reply was lost: logged late
            assert late > 0
