"""Training through the instrument backends against the emulated tester: the transport is transparent, a run
resumes on the instrument without repeating or losing an operation, and signals and exceptions leave the tester
in its safe state."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from crossbar_ctl.backend import connect
from crossbar_ctl.config import RunConfig, dump_toml
from crossbar_ctl.errors import InstrumentError
from crossbar_ctl.oplog import read_log
from crossbar_ctl.training.trainer import Trainer
from crossbar_instruments.emulator import TcpEmulator
from crossbar_instruments.launch import child_env, emulated_tester, with_address
from crossbar_instruments.tester import Fault, sim_config
from tests.hil_common import METHODS, assert_log_consecutive, conductances, history, log_seqs, tiny

KIND = {"tcp": "visa", "pty": "serial"}


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def same_outcome(a: dict, b: dict) -> None:
    assert history(a) == history(b)
    for key in ("final_test_accuracy", "device_pulses", "phases", "row_programs", "reads", "initial_weight_rms_error"):
        assert a[key] == b[key], key


@pytest.mark.parametrize("method", sorted(METHODS))
def test_training_is_transparent_to_the_transport(method: str, tmp_path: Path) -> None:
    """Same TOML and seed: in process (kind sim), over VISA/TCP and over serial/pty to ``crossbar-ctl emulate``
    give bit-identical final conductances and identical results.json numbers."""
    toml = tmp_path / "run.toml"
    toml.write_text(dump_toml(tiny(method=method)))
    cfg = tiny(method=method)
    assert dump_toml(cfg) == toml.read_text()
    sim = connect(cfg)
    Trainer(cfg, tmp_path / "sim", backend=sim, progress=False).run()
    g_ref = [sim.true_conductance(t) for t in range(sim.n_tiles)]
    sim.close()
    ref = results(tmp_path / "sim")
    assert ref["final_test_accuracy"] is not None
    for transport, kind in KIND.items():
        with emulated_tester(cfg, transport) as emu:  # the emulator is configured from the same TOML
            client = with_address(cfg, kind, emu.address)
            Trainer(client, tmp_path / kind, progress=False).run()
            g = conductances(client)
        same_outcome(results(tmp_path / kind), ref)
        for a, b in zip(g, g_ref):
            assert a.dtype == b.dtype == np.float64 and np.array_equal(a, b), f"{kind}: conductances differ"
        assert results(tmp_path / kind)["backend"]["kind"] == kind
        assert "array left in its safe state" in emu.stderr
        here, there = read_log(tmp_path / kind / "oplog.h5"), read_log(tmp_path / "sim" / "oplog.h5")
        assert here["ops"]["seq"].tolist() == there["ops"]["seq"].tolist()
        assert here["kind"] == there["kind"] and here["params"] == there["params"]  # the same operations, bit for bit


def test_resume_on_the_instrument_continues_the_sequence(tmp_path: Path) -> None:
    """Stopped after epoch 1 and resumed: the array state stays on the tester (nothing is restored), the op log
    continues without a duplicate or a gap, and the outcome equals an uninterrupted run's."""
    full = Trainer(tiny("training.epochs=2"), tmp_path / "full", progress=False).run()
    run = tmp_path / "run"
    with emulated_tester(tiny(), "tcp") as emu:
        first = with_address(tiny("training.epochs=1"), "visa", emu.address)
        Trainer(first, run, progress=False).run()
        n1 = len(log_seqs(run))
        tr = Trainer(with_address(tiny("training.epochs=2"), "visa", emu.address), run, progress=False)
        assert not hasattr(tr.backend, "set_state")
        res = tr.run(resume=True)
        g = conductances(first)
    assert history(res) == history(full) and res["device_pulses"] == full["device_pulses"]
    assert_log_consecutive(run)
    log = read_log(run / "oplog.h5")
    assert [s["mode"] for s in log["sessions"]] == ["new", "resume"]
    assert log["sessions"][1]["next_seq"] == n1 + 1 and "kept_ops_after_checkpoint" not in log["sessions"][1]
    assert len(log["ops"]) == len(log_seqs(tmp_path / "full"))
    sim = connect(tiny())
    Trainer(tiny("training.epochs=2"), None, backend=sim, progress=False).run()
    assert all(np.array_equal(a, sim.true_conductance(t)) for t, a in enumerate(g))


def _wait(cond, timeout: float = 60.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


def _train_cli(run: Path, cfg: RunConfig | None = None) -> subprocess.Popen:
    """``crossbar-ctl train`` in a child process: a new run of ``cfg`` in ``run``, or ``--resume run``."""
    cmd = [sys.executable, "-m", "crossbar_ctl.cli", "train", "--quiet"]
    if cfg is None:
        cmd += ["--resume", str(run)]
    else:
        toml = run.parent / f"{run.name}.toml"
        toml.write_text(dump_toml(cfg))
        cmd += ["--config", str(toml), "--out", str(run)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())


def _stop_in_epoch_2(emu: TcpEmulator, run: Path, cfg: RunConfig, sig: int) -> tuple[subprocess.Popen, str]:
    """Start ``crossbar-ctl train`` of ``cfg`` against ``emu``, send it ``sig`` 30 operations into epoch 2; the
    ended process and its stderr."""
    proc = _train_cli(run, with_address(cfg, "visa", emu.address))
    try:
        _wait(lambda: (run / "checkpoint.npz").exists() or proc.poll() is not None, what="epoch 1")
        at_ckpt = len(emu.tester.log)
        _wait(lambda: len(emu.tester.log) > at_ckpt + 30 or proc.poll() is not None, what="epoch 2")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_run_leaves_the_tester_safe_and_the_run_resumes(sig: int, tmp_path: Path) -> None:
    """``crossbar-ctl train`` against an emulated VISA tester, signalled in epoch 2: the client switches the
    outputs off before it exits, every applied operation is in the op log, and ``--resume`` continues it."""
    cfg = tiny("training.epochs=3", "training.limit_train=512")
    with TcpEmulator(sim_config(cfg)).start() as emu:
        run = tmp_path / "run"
        proc, err = _stop_in_epoch_2(emu, run, cfg, sig)
        assert proc.returncode == (130 if sig == signal.SIGINT else 128 + sig), err
        assert f"{signal.Signals(sig).name}: stopping" in err and "closed in its safe state" in err
        _wait(lambda: emu.tester.safe_events[-1:] == ["disconnect"], what="disconnect")
        t = emu.tester
        assert t.is_safe and t.safe_events[-2:] == ["OUTP OFF", "disconnect"]  # the client made it safe first
        assert TcpAsk(emu)("SYST:SAFE?") == "1" and TcpAsk(emu)("OUTP?") == "0"
        assert log_seqs(run).tolist() == t.applied_seqs  # log and array agree: every applied op, no other
        assert not results(run)["complete"] and len(results(run)["epochs"]) == 1
        if sig == signal.SIGINT:
            return
        proc = _train_cli(run)  # the config (kind visa, the same tester) comes from the run directory
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert results(run)["complete"] and len(results(run)["epochs"]) == 3
        assert_log_consecutive(run)
        assert log_seqs(run).tolist() == t.applied_seqs
        sessions = read_log(run / "oplog.h5")["sessions"]
        assert sessions[1]["mode"] == "resume" and sessions[1]["kept_ops_after_checkpoint"] > 0
        assert t.is_safe


@pytest.mark.parametrize("pipeline", [False, True])
def test_a_killed_client_loses_at_most_the_operations_in_flight_and_the_run_resumes(tmp_path: Path,
                                                                                    pipeline: bool) -> None:
    """``crossbar-ctl train`` SIGKILLed in epoch 2 (no clean-up runs): the tester goes safe when the link drops,
    the op log (its file and its journal) holds every applied operation but those in flight (the call in
    progress, and with pipelined writes also the write before it, whose status was not read yet), and ``--resume``
    writes the journal into the file, records the lost ones as applied but not logged, and completes the run."""
    cfg = tiny("training.epochs=3", "training.limit_train=512", f"backend.pipeline_writes={str(pipeline).lower()}")
    with TcpEmulator(sim_config(cfg)).start() as emu:
        run = tmp_path / "run"
        proc, _ = _stop_in_epoch_2(emu, run, cfg, signal.SIGKILL)
        assert proc.returncode == -signal.SIGKILL
        _wait(lambda: emu.tester.safe_events[-1:] == ["disconnect"], what="disconnect")
        t = emu.tester
        assert t.is_safe and t.safe_events[-1] == "disconnect"  # the tester itself, not the dead client
        logged = read_log(run / "oplog.h5")
        assert logged["from_journal"] > 0  # rows the file had not flushed yet
        seqs = logged["ops"]["seq"].tolist()
        applied = list(t.applied_seqs)
        in_flight = 2 if pipeline else 1
        assert seqs == applied[:len(seqs)] and len(applied) - len(seqs) <= in_flight, (seqs[-3:], applied[-3:])
        proc = _train_cli(run)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert results(run)["complete"] and len(results(run)["epochs"]) == 3
        final = read_log(run / "oplog.h5")
        assert final["from_journal"] == 0 and not (run / "oplog.h5.journal").exists()
        assert t.applied_seqs == sorted(set(t.applied_seqs))  # no number was used twice on the tester
        lost = [s for s in applied if s not in seqs]  # applied by the killed process, never logged
        assert final["ops"]["seq"].tolist() == [s for s in t.applied_seqs if s not in lost]
        resume = final["sessions"][1]
        assert resume["mode"] == "resume" and resume.get("applied_not_logged", []) == lost
        assert t.is_safe


class TcpAsk:
    """One query on a fresh connection to an in-thread emulator."""

    def __init__(self, emu: TcpEmulator) -> None:
        self.emu = emu

    def __call__(self, line: str) -> str:
        import socket

        with socket.create_connection(("127.0.0.1", self.emu.port), timeout=30) as s:
            s.sendall(line.encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                buf += s.recv(4096)
        return buf[:-1].decode()


def test_an_exception_mid_run_leaves_the_tester_safe(tmp_path: Path) -> None:
    """The tester refuses a backward read in the middle of training: the run fails with the instrument's error,
    the client switches the outputs off, and the op log holds exactly the applied operations."""
    cfg = tiny(method="mbgd-rank-sum")
    with TcpEmulator(sim_config(cfg)).start() as emu:
        emu.faults.add(Fault("error", match="TILE1:VMMT?", nth=3, code=-240))
        with pytest.raises(InstrumentError) as e:
            Trainer(with_address(cfg, "visa", emu.address), tmp_path, progress=False).run()
        assert e.value.code == -240
        _wait(lambda: emu.tester.safe_events[-1:] == ["disconnect"], what="disconnect")
        assert emu.tester.is_safe and emu.tester.safe_events[-2:] == ["OUTP OFF", "disconnect"]
        assert log_seqs(tmp_path).tolist() == emu.tester.applied_seqs and len(emu.tester.applied_seqs) > 10


def test_a_run_that_cannot_be_set_up_closes_the_backend(tmp_path: Path) -> None:
    cfg = tiny("training.hidden=[40]")  # 40 outputs need 80 columns; tile 0 has 32
    with TcpEmulator(sim_config(cfg)).start() as emu:
        with pytest.raises(ValueError, match="needs a 785 x 80 tile"):
            Trainer(with_address(cfg, "visa", emu.address), tmp_path, progress=False)
        _wait(lambda: emu.connections == 1 and emu.tester.safe_events[-1:] == ["disconnect"], what="disconnect")
        assert emu.tester.is_safe and emu.tester.safe_events[-2:] == ["OUTP OFF", "disconnect"]
