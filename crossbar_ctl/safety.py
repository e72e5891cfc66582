"""Stopping safely on signals: finish the array operation in flight, then unwind so that ``finally`` blocks leave
the backend in its safe state.

Every public array operation of :class:`~crossbar_ctl.backend.Backend` runs inside :data:`OPERATION` (the
:func:`operation` decorator: a re-entrant critical section counted on the main thread only, where Python
delivers signals). Inside
:func:`stop_signals_raise` the first SIGINT/SIGTERM/SIGHUP:

* outside an operation raises at once (KeyboardInterrupt for SIGINT, SystemExit(128 + n) otherwise);
* inside one is deferred: the operation completes (it is applied on the array *and* recorded by the listeners,
  so the op log and the array agree) and the exception is raised as it returns.

A second signal while an operation is still in flight (a tester that does not answer) raises at once: the
instrument driver drops the link and resolves the operation on reconnection. A second signal while the run is
already unwinding is reported and ignored, so that leaving the array safe is not cut short; a third one
abandons the clean-up.
"""
from __future__ import annotations

import functools
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_MAIN_THREAD_ID = threading.main_thread().ident  # compared with get_ident(): cheaper than current_thread()


class _Operation:
    """The critical section around one array operation (a context manager; cheap when nothing is pending)."""

    __slots__ = ("depth", "pending")

    def __init__(self) -> None:
        self.depth = 0
        self.pending: BaseException | None = None

    def __enter__(self) -> None:
        if threading.get_ident() == _MAIN_THREAD_ID:
            self.depth += 1

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if threading.get_ident() != _MAIN_THREAD_ID:
            return
        self.depth -= 1
        if self.depth == 0 and self.pending is not None:
            pending, self.pending = self.pending, None
            if exc_type is None:
                raise pending

    def failed(self) -> None:
        """Leave the section of an operation that raised: its own exception is what propagates."""
        self.depth -= 1
        if self.depth == 0:
            self.pending = None

    def raise_pending(self) -> None:
        """Raise the deferred stop (the outermost operation has returned)."""
        pending, self.pending = self.pending, None
        assert pending is not None
        raise pending

    def defer(self, exc: BaseException) -> bool:
        """Hold ``exc`` until the operation in flight returns; False if none is in flight (raise it now)."""
        if self.depth > 0 and self.pending is None:
            self.pending = exc
            return True
        return False


OPERATION = _Operation()
F = TypeVar("F", bound=Callable[..., Any])


def operation(fn: F) -> F:
    """Decorator: run an array operation as one critical section, so that a stop signal arriving meanwhile is
    raised only once the operation has been applied and recorded by the listeners."""

    op = OPERATION
    get_ident = threading.get_ident  # (bound here: this wrapper runs around every read)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:  # ``with OPERATION:`` spelled out: this is on every read
        if get_ident() != _MAIN_THREAD_ID:
            return fn(*args, **kwargs)
        op.depth += 1
        try:
            out = fn(*args, **kwargs)
        except BaseException:
            op.failed()
            raise
        op.depth -= 1
        if op.depth == 0 and op.pending is not None:
            op.raise_pending()
        return out

    return wrapper  # type: ignore[return-value]


def read_operation(fn: F) -> F:
    """:func:`operation` for a method called as ``fn(self, tile, v)`` (``read_vmm``, ``read_vmm_t``: the most
    frequent calls): the same critical section behind a fixed signature, which costs 0.25 µs less per call than
    forwarding ``*args, **kwargs`` (6 % of a 64-vector read of a 101×10 tile)."""

    op = OPERATION
    get_ident = threading.get_ident

    @functools.wraps(fn)
    def wrapper(self: Any, tile: int, v: Any) -> Any:
        if get_ident() != _MAIN_THREAD_ID:
            return fn(self, tile, v)
        op.depth += 1
        try:
            out = fn(self, tile, v)
        except BaseException:
            op.failed()
            raise
        op.depth -= 1
        if op.depth == 0 and op.pending is not None:
            op.raise_pending()
        return out

    return wrapper  # type: ignore[return-value]


def _exception_for(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(128 + signum)


@contextmanager
def stop_signals_raise(name: str = "crossbar-ctl") -> Iterator[None]:
    """While active, SIGINT/SIGTERM/SIGHUP stop the program as described in the module doc (messages go to
    stderr, prefixed with ``name``). No-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hits: list[int] = []

    def handler(signum: int, frame: object) -> None:
        hits.append(signum)
        sig = signal.Signals(signum).name
        if len(hits) == 1:
            exc = _exception_for(signum)
            deferred = OPERATION.defer(exc)
            print(f"{name}: {sig}: stopping{' after the operation in flight' if deferred else ''}; leaving the "
                  f"backend in its safe state", file=sys.stderr, flush=True)
            if not deferred:
                raise exc
        elif OPERATION.pending is not None:  # still inside that operation: the instrument does not answer
            OPERATION.pending = None
            print(f"{name}: {sig} again: abandoning the operation in flight", file=sys.stderr, flush=True)
            raise _exception_for(signum)
        elif len(hits) == 2:
            print(f"{name}: {sig} again: still leaving the backend in its safe state (once more to abandon "
                  f"that)", file=sys.stderr, flush=True)
        else:
            raise _exception_for(signum)

    old = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        OPERATION.pending = None
        for sig, h in old.items():
            signal.signal(sig, h)
