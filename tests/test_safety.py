"""Stop signals: raised between array operations, deferred to the end of the one in flight, repeated ones."""
from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest

from crossbar_ctl.config import config_from_dict
from crossbar_ctl.safety import OPERATION, stop_signals_raise
from tests.fakes import RecordingBackend

CFG = config_from_dict({"array": {"tiles": 1, "rows": 4, "cols": 3}})


def backend_with_logged_seqs() -> tuple[RecordingBackend, list[int]]:
    b = RecordingBackend(CFG)
    seen: list[int] = []
    b.add_listener(lambda rec: seen.append(rec.seq))
    return b, seen


@pytest.mark.parametrize("sig, exc, code", [(signal.SIGTERM, SystemExit, 128 + signal.SIGTERM),
                                            (signal.SIGINT, KeyboardInterrupt, None)])
def test_a_signal_inside_an_operation_stops_after_it_is_applied_and_logged(sig, exc, code) -> None:
    b, seen = backend_with_logged_seqs()
    real = b._program

    def program_then_signal(*args):
        os.kill(os.getpid(), sig)  # delivered while the operation is in flight
        for _ in range(1000):  # give the interpreter many chances to run the handler here
            pass
        return real(*args)

    b._program = program_then_signal  # type: ignore[method-assign]
    with pytest.raises(exc) as e:
        with stop_signals_raise():
            b.program(0, np.ones((4, 3), dtype=int))
            b.read_vmm(0, np.zeros(4))  # never sent
    assert seen == [1] and b.kinds() == ["program"]
    if code is not None:
        assert e.value.code == code
    assert OPERATION.depth == 0 and OPERATION.pending is None
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_a_signal_between_operations_raises_at_once() -> None:
    b, seen = backend_with_logged_seqs()
    with pytest.raises(SystemExit):
        with stop_signals_raise():
            b.read_vmm(0, np.zeros(4))
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
            b.read_vmm(0, np.zeros(4))
    assert seen == [1]


def test_a_second_signal_during_the_clean_up_is_ignored(capsys) -> None:
    cleaned = []
    with pytest.raises(SystemExit):
        with stop_signals_raise():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):
                    pass
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # e.g. a second Ctrl-C while the tester is made safe
                for _ in range(1000):
                    pass
                cleaned.append(True)
    assert cleaned == [True]
    assert "still leaving the backend in its safe state" in capsys.readouterr().err


def test_operations_in_other_threads_do_not_defer_signals() -> None:
    b, _ = backend_with_logged_seqs()
    inside = threading.Event()
    release = threading.Event()
    real = b._read_vmm

    def slow_read(*args):
        inside.set()
        release.wait(5)
        return real(*args)

    b._read_vmm = slow_read  # type: ignore[method-assign]
    t = threading.Thread(target=b.read_vmm, args=(0, np.zeros(4)))
    t.start()
    try:
        inside.wait(5)
        assert OPERATION.depth == 0  # a thread's operation (an emulator's device under test) is not counted
        with pytest.raises(SystemExit):
            with stop_signals_raise():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):
                    pass
    finally:
        release.set()
        t.join()


def test_a_signal_inside_a_failing_operation_leaves_the_failure_to_propagate() -> None:
    b, seen = backend_with_logged_seqs()

    def program_signal_then_fail(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            pass
        raise RuntimeError("tester fault")

    b._program = program_signal_then_fail  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="tester fault"):
        with stop_signals_raise():
            b.program(0, np.ones((4, 3), dtype=int))
    assert seen == [] and OPERATION.depth == 0 and OPERATION.pending is None
