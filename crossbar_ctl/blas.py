"""Multi-threaded BLAS for large matrix products only.

The simulator holds BLAS to one thread while it is open (its Numba kernels run on all cores, and a BLAS pool
spinning beside them slows small reads several-fold; see :class:`crossbar_sim.backend.SimBackend`). Products
of at least :data:`WIDE_MIN_FLOPS` (a forward read of a 1024-sample batch on the 785×200 tile: 3.2e8) are
worth the cores: :func:`wide` lifts the limit to every available core for one product and puts it back.
Setting the thread count costs under 1 µs (threadpoolctl's library controller, a direct call into OpenBLAS).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator

WIDE_MIN_FLOPS = 5e7

_controllers: list[Any] | None = None


def _blas() -> list[Any]:
    global _controllers
    if _controllers is None:
        try:
            from threadpoolctl import ThreadpoolController

            _controllers = list(ThreadpoolController().select(user_api="blas").lib_controllers)
        except Exception:  # no threadpoolctl-visible BLAS: nothing to widen
            _controllers = []
    return _controllers


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class _Narrow:
    """A no-op context manager (small products: entering ``wide`` must cost next to nothing)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NARROW = _Narrow()


def wide(flops: float) -> Any:
    """Run the block with BLAS on every core if the product costs at least WIDE_MIN_FLOPS; else unchanged."""
    return _NARROW if flops < WIDE_MIN_FLOPS else _wide()


@contextmanager
def _wide() -> Iterator[None]:
    libs = _blas()
    before = [lc.get_num_threads() for lc in libs]
    n = cores()
    try:
        for lc, b in zip(libs, before):
            if b < n:
                lc.set_num_threads(n)
        yield
    finally:
        for lc, b in zip(libs, before):
            if b < n:
                lc.set_num_threads(b)
