"""The op log: what it records, append/resume, crash and interruption safety, the summary and the trainer hook."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crossbar_ctl.backend import OpRecord, connect
from crossbar_ctl.cli import main
from crossbar_ctl.config import config_from_dict
from crossbar_ctl.oplog import INLINE_MAX, OpLog, digest, read_log
from crossbar_ctl.oplog_summary import check_sequence, format_summary, summarize
from crossbar_ctl.training.trainer import Trainer
from tests.hil_common import assert_log_consecutive, history, tiny

SMALL = {"seed": 2, "array": {"tiles": 2, "rows": [12, 5], "cols": [7, 3]}}


def ops_on(backend) -> np.ndarray:
    rng = np.random.default_rng(0)
    backend.read_vmm(0, rng.uniform(-0.2, 0.2, (3, 12)))
    backend.outer_pulse(0, rng.uniform(0, 1, 12), rng.uniform(0, 1, 7), 1, 4)
    pulses = rng.integers(-5, 6, (12, 7))
    backend.program(0, pulses)
    backend.read_conductance(1)
    backend.pulse_cell(1, 1, 2, 2.0, 1e-6, 3)
    backend.read_cell(1, 1, 2)
    return pulses


def test_every_operation_is_recorded_with_parameters_and_digests(tmp_path: Path) -> None:
    b = connect(config_from_dict(SMALL))
    with OpLog(tmp_path / "oplog.h5") as log:
        log.begin_session("new", note="test")
        b.add_listener(log.record)
        pulses = ops_on(b)
    log_ = read_log(tmp_path / "oplog.h5")
    ops = log_["ops"]
    assert ops["seq"].tolist() == [1, 2, 3, 4, 5, 6] == list(range(1, b.seq + 1))
    assert log_["kind"] == ["read_vmm", "outer_pulse", "program", "read_conductance", "pulse_cell", "read_cell"]
    assert ops["tile"].tolist() == [0, 0, 0, 1, 1, 1] and set(log_["status"]) == {"ok"}
    assert np.all(np.diff(ops["time_s"]) >= 0)
    p = [json.loads(x) for x in log_["params"]]
    assert p[0] == {"batch": 3}
    assert p[1]["slots"] == 4 and p[1]["polarity"] == 1 and p[1]["row_drive"]["shape"] == [12]
    assert p[2]["pulses"]["sha256"] == digest(pulses.astype(np.int32)) and p[2]["pulses"]["shape"] == [12, 7]
    assert p[2]["pulses"]["hashed_as"] == "|i1" and p[2]["v_set_V"] == 2.0  # counts within ±127 hash as int8
    assert p[4] == {"row": 1, "col": 2, "v_pulse_V": 2.0, "width_s": 1e-06, "count": 3}
    assert log_["sessions"][0]["note"] == "test"


def test_small_arrays_are_inline_and_the_digest_is_of_the_values() -> None:
    from crossbar_ctl.oplog import encode_param

    small = np.arange(INLINE_MAX, dtype=np.float64)
    assert encode_param(small)["values"] == small.tolist()
    big = np.arange(40, dtype=np.int32)
    e = encode_param(big)
    assert e["sha256"] == digest(big.astype(np.int64)) != digest(big + 1)  # the same values, any int dtype
    assert encode_param(np.int64(3)) == 3 and encode_param(np.float64(0.5)) == 0.5


def test_append_mode_continues_and_truncate_cuts_back(tmp_path: Path) -> None:
    path = tmp_path / "oplog.h5"
    with OpLog(path) as log:
        for s in range(1, 2001):  # more than one chunk
            log.record(OpRecord(s, "read_vmm", 0, {"batch": 1}))
    with OpLog(path, "a") as log:
        assert log.last_seq == 2000 and log.count == 2000
        log.begin_session("resume")
        assert log.truncate_after(1500) == 500 and log.last_seq == 1500
        log.record(OpRecord(1501, "program", 1, {"pulses": np.ones((10, 10), np.int32)}))
    r = read_log(path)
    assert check_sequence(r["ops"]["seq"])["ok"] and r["ops"]["seq"][-1] == 1501
    assert r["kind"][-1] == "program" and r["ops"]["session"][-1] == 0 and len(r["sessions"]) == 1


def test_an_interrupted_flush_is_redone_without_duplicates(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "oplog.h5"
    log = OpLog(path, flush_every=1)
    log.record(OpRecord(1, "read_vmm", 0, {"batch": 1}))
    real = OpLog._write
    calls = {"n": 0}

    def flaky(ds, start, data, mtype):
        calls["n"] += 1
        if calls["n"] == 2:  # the parameters are written, the row is not: a signal arrives in between
            raise KeyboardInterrupt
        real(ds, start, data, mtype)

    monkeypatch.setattr(OpLog, "_write", staticmethod(flaky))
    with pytest.raises(KeyboardInterrupt):
        log.record(OpRecord(2, "read_vmm_t", 0, {"batch": 2}))
    assert read_log(path)["ops"]["seq"].tolist() == [1]  # only committed rows are visible
    log.close()  # the close flushes the buffered row again
    r = read_log(path)
    assert r["ops"]["seq"].tolist() == [1, 2] and json.loads(r["params"][1]) == {"batch": 2}


CRASH = """
import os, signal, sys
import numpy as np
from crossbar_ctl.backend import OpRecord
from crossbar_ctl.oplog import OpLog
log = OpLog(sys.argv[1], flush_every=1)
for s in range(1, 31):
    log.record(OpRecord(s, "outer_pulse", 0, {"slots": 4}))
log.flush_every = 10**6  # buffered from here on, never flushed: only the journal has them
for s in range(31, 36):
    log.record(OpRecord(s, "outer_pulse", 0, {"slots": s, "v_pulse_V": 2.0}))
log.record(OpRecord(36, "program", 0, {"pulses": np.ones((300, 200), np.int32)}))  # hashed in a thread
with open(str(log._journal.path), "ab") as f:
    f.write(b"\\x40\\x00\\x00\\x00[37,")  # the operation in flight: an entry cut short
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_process_loses_at_most_the_operation_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "oplog.h5"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run([sys.executable, "-c", CRASH, str(path)], env=env, capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    journal = Path(str(path) + ".journal")
    assert journal.exists()
    r = read_log(path)  # a file never closed: still readable; the rows after the last flush come from the journal
    assert r["ops"]["seq"].tolist() == list(range(1, 37)) and r["from_journal"] == 6
    assert [json.loads(p) for p in r["params"][30:35]] == [{"slots": s, "v_pulse_V": 2.0} for s in range(31, 36)]
    prog = json.loads(r["params"][35])["pulses"]
    assert prog["shape"] == [300, 200] and prog["dtype"] == "<i4"  # its digest may have been lost with the process
    assert prog["sha256"] in (None, digest(np.ones((300, 200), np.int32)))
    assert "6 of them only in the journal" in format_summary(summarize(path))
    with OpLog(path, "a") as log:  # appending first writes the journal's rows to the file
        assert log.recovered == 6 and log.last_seq == 36
        log.record(OpRecord(37, "read_vmm", 0, {"batch": 1}))
    assert not journal.exists()
    r = read_log(path)
    assert r["from_journal"] == 0 and check_sequence(r["ops"]["seq"])["ok"] and r["ops"]["seq"][-1] == 37
    assert [json.loads(p) for p in r["params"][30:35]] == [{"slots": s, "v_pulse_V": 2.0} for s in range(31, 36)]


def test_buffered_rows_are_journaled_and_the_journal_emptied_by_each_flush(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "oplog.h5"
    journal = Path(str(path) + ".journal")
    log = OpLog(path, flush_every=100)
    for s in range(1, 4):
        log.record(OpRecord(s, "read_vmm", 0, {"batch": s}))
    assert journal.stat().st_size > 0 and read_log(path)["from_journal"] == 3
    log.flush()
    assert journal.stat().st_size == 0 and read_log(path)["ops"]["seq"].tolist() == [1, 2, 3]
    # a process that dies between the file's flush and emptying the journal: its rows are not written twice
    log.record(OpRecord(4, "read_vmm", 0, {"batch": 4}))
    monkeypatch.setattr(log._journal, "clear", lambda: None)
    log.flush()
    assert journal.stat().st_size > 0
    assert read_log(path)["ops"]["seq"].tolist() == [1, 2, 3, 4]  # the journal's row 3 is already in the file
    log._f.close()
    with OpLog(path, "a") as again:
        assert again.recovered == 0 and again.count == 4
    assert read_log(path)["ops"]["seq"].tolist() == [1, 2, 3, 4] and not journal.exists()
    stale = OpLog(path, "a", flush_every=100)
    stale.record(OpRecord(5, "read_vmm", 0, {"batch": 5}))
    stale._f.close()  # dies with row 4 in its journal
    assert read_log(path)["from_journal"] == 1
    OpLog(path, "w").close()  # a new log drops the journal left beside the old one
    assert read_log(path)["ops"].size == 0 and not journal.exists()


def test_summary_and_cli_report_gaps_and_duplicates(tmp_path: Path, capsys) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    for d, seqs in ((good, [1, 2, 3, 4]), (bad, [1, 2, 2, 4, 5])):
        d.mkdir()
        with OpLog(d / "oplog.h5") as log:
            log.begin_session("new")
            for s in seqs:
                log.record(OpRecord(s, "read_vmm", 0, {"batch": 8}))
    s = summarize(bad / "oplog.h5")
    assert s["sequence"]["duplicates"] == [2] and s["sequence"]["missing"] == [3] and not s["sequence"]["ok"]
    assert s["per_kind"] == {"read_vmm": 5} and s["operations"] == 5 and s["last"][-1]["seq"] == 5
    assert main(["log", "show", str(good)]) == 0
    out = capsys.readouterr().out
    assert "4 operations" in out and "1..4: consecutive" in out and "read_vmm 4" in out
    assert main(["log", "show", str(bad)]) == 1
    assert "1 missing (3), 1 duplicated (2)" in capsys.readouterr().out
    assert main(["log", "show", str(bad), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["sequence"]["missing"] == [3]
    assert main(["log", "show", str(tmp_path / "nothing")]) == 2


def test_trainer_logs_every_operation_of_a_run(tmp_path: Path) -> None:
    tr = Trainer(tiny(method="pca-rank-seq"), tmp_path, progress=False)
    res = tr.run()
    r = read_log(tmp_path / "oplog.h5")
    assert_log_consecutive(tmp_path)
    assert len(r["ops"]) == tr.backend.seq  # nothing missing
    kinds = {k: r["kind"].count(k) for k in set(r["kind"])}
    assert kinds["outer_pulse"] == res["phases"] > 0
    assert r["sessions"][0]["mode"] == "new" and r["sessions"][0]["backend"] == "sim"
    assert tr.oplog is not None and tr.oplog.journal is False  # a simulator run rolls back to its checkpoint


def test_op_log_can_be_switched_off(tmp_path: Path) -> None:
    Trainer(tiny("logging.op_log=false"), tmp_path, progress=False).run()
    assert not (tmp_path / "oplog.h5").exists() and (tmp_path / "results.json").exists()


def test_in_process_resume_after_a_crash_mid_epoch_rolls_the_log_back(tmp_path: Path, monkeypatch) -> None:
    """A run killed in epoch 2 resumes from the epoch-1 checkpoint: the simulator state is restored, so the
    operations logged after the checkpoint are cut from the log, and the results equal an uninterrupted run's."""
    full = Trainer(tiny("training.epochs=2"), tmp_path / "full", progress=False).run()
    run = tmp_path / "run"
    tr = Trainer(tiny("training.epochs=2"), run, progress=False)
    real = tr.controller.apply_update
    calls = {"n": 0}

    def crash_in_epoch_2(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2 * 8 + 5:  # 8 batches x 2 layers per epoch: the 3rd batch of epoch 2
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(tr.controller, "apply_update", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        tr.run()
    before = len(read_log(run / "oplog.h5")["ops"])
    res = Trainer(tiny("training.epochs=2"), run, progress=False).run(resume=True)
    assert history(res) == history(full) and res["device_pulses"] == full["device_pulses"]
    r = read_log(run / "oplog.h5")
    assert_log_consecutive(run)
    assert r["sessions"][1]["mode"] == "resume" and r["sessions"][1]["rolled_back_ops"] > 0
    assert before - r["sessions"][1]["rolled_back_ops"] == r["sessions"][1]["first_row"]
    assert len(r["ops"]) == len(read_log(tmp_path / "full" / "oplog.h5")["ops"])
