"""Common interface of the host-side gradient compressors.

A dense layer with ``N`` inputs (bias included) and ``M`` outputs has weights ``W`` (N x M) and
computes ``y = W^T x``.  For a batch of ``B`` pairs ``(x_b, delta_b)`` the batch-averaged gradient
is

    G = X^T D / B = (1/B) sum_b x_b delta_b^T        (N x M)

A :class:`Compressor` sees the batch as a stream of pairs (``consume`` may be called with one pair
or with a chunk of pairs, any number of times) and emits an :data:`Update` approximating ``G`` in
``finish_batch``.  Crossbar rows correspond to inputs (N), columns to outputs (M).

Memory accounting: every compressor keeps its arrays as direct ``numpy.ndarray`` attributes of the
instance; :attr:`Compressor.memory_floats` is the peak, over the last batch, of the sum of their
``.size`` as measured on the live instance after every call (and inside ``finish_batch`` where a
method holds extra arrays transiently).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

import numpy as np

__all__ = [
    "Compressor",
    "DenseUpdate",
    "LowRankUpdate",
    "StateDict",
    "Update",
    "held_floats",
]

StateDict: TypeAlias = dict[str, "np.ndarray | int | float"]


@dataclass(frozen=True)
class LowRankUpdate:
    """A factored gradient approximation ``G ~= U @ V.T`` (U: N x r, V: M x r, float64).

    Column ``j`` of ``U`` and ``V`` is one rank-1 pair ``u_j v_j^T``; ``r`` may differ from the
    compressor's rank (e.g. NMF emits its sign-split pairs, ``r = 2k``).
    """

    U: np.ndarray
    V: np.ndarray

    def __post_init__(self) -> None:
        if self.U.ndim != 2 or self.V.ndim != 2 or self.U.shape[1] != self.V.shape[1]:
            raise ValueError(
                f"LowRankUpdate needs U (N, r) and V (M, r); got U{self.U.shape}, V{self.V.shape}"
            )

    @property
    def rank(self) -> int:
        """Number of rank-1 pairs ``r``."""
        return int(self.U.shape[1])

    def to_dense(self) -> np.ndarray:
        """Return ``U @ V.T`` (N x M)."""
        return self.U @ self.V.T


@dataclass(frozen=True)
class DenseUpdate:
    """The explicit gradient ``G`` (N x M, float64)."""

    G: np.ndarray

    def __post_init__(self) -> None:
        if self.G.ndim != 2:
            raise ValueError(f"DenseUpdate needs a 2-D G; got shape {self.G.shape}")

    def to_dense(self) -> np.ndarray:
        """Return ``G`` itself."""
        return self.G


Update: TypeAlias = LowRankUpdate | DenseUpdate


def held_floats(obj: object) -> int:
    """Sum of ``.size`` over the ``numpy.ndarray`` attributes found in ``vars(obj)``."""
    return int(sum(v.size for v in vars(obj).values() if isinstance(v, np.ndarray)))


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _append_rows(buf: np.ndarray | None, A: np.ndarray) -> np.ndarray:
    """A new array holding the rows of ``buf`` (if any) followed by a copy of ``A``'s rows.

    Used by the multi-pass compressors to keep a batch's chunks as ONE instance array, so its
    ``.size`` (``b_total * width``) is what ``held_floats`` counts; the caller's arrays are never
    referenced.  (Re-allocating per chunk costs ``O(b_total^2 width)`` copies for pair-by-pair
    streaming, negligible next to the iterations for batch-sized chunks.)
    """
    if buf is None:
        return np.array(A, dtype=np.float64, order="C", copy=True)
    return np.concatenate([buf, A], axis=0)


def _as_float_array(name: str, a: Any) -> np.ndarray:
    """A C-contiguous float array: float32 stays float32 (the trainer's activations; matrix products then run
    in single precision, as in the float reference), anything else becomes float64."""
    arr = np.asarray(a)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise ValueError(f"{name} must have a real float or integer dtype, got {arr.dtype}")
    dtype = np.float32 if arr.dtype == np.float32 else np.float64
    return np.ascontiguousarray(arr, dtype=dtype)


def _like(factor: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """``factor`` in the batch's precision (no copy if it already is), so that the product of a float32 batch
    (B x N) with a small float64 factor (N x k) runs in single precision on the batch as it is, instead of
    numpy converting the whole batch to float64 first (that conversion cost more than the product)."""
    return factor.astype(batch.dtype, copy=False)


def _all_finite(a: np.ndarray) -> bool:
    """No NaN or infinity in ``a`` (a finite sum proves it in one pass without a temporary)."""
    return bool(np.isfinite(a.sum())) or bool(np.isfinite(a).all())


class Compressor(ABC):
    """A streaming gradient compressor for one N x M layer (scikit-learn style interface).

    Use per batch: ``start_batch()``; ``consume(x, delta)`` one or more times; ``finish_batch()``
    returns the approximation of ``G = (1/B) sum_b x_b delta_b^T`` over the ``B`` pairs consumed.
    Subclasses implement ``_setup``, ``_start``, ``_consume`` and ``_finish``.
    """

    name: ClassVar[str]
    #: keyword options accepted by ``__init__`` (anything else raises ValueError)
    OPTIONS: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        n_rows: int,
        n_cols: int,
        rank: int,
        rng: np.random.Generator,
        **options: Any,
    ) -> None:
        self.n_rows = _check_int("n_rows", n_rows, 1)
        self.n_cols = _check_int("n_cols", n_cols, 1)
        self.rank = _check_int("rank", rank, 1)
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            allowed = ", ".join(self.OPTIONS) or "none"
            raise ValueError(f"{self.name}: unknown option(s) {unknown}; allowed: {allowed}")
        self._in_batch = False
        self._count = 0
        self._setup(rng, **options)
        self._peak = held_floats(self)

    # ----------------------------------------------------------------- public interface
    def start_batch(self) -> None:
        """Begin a batch: reset the accumulators (warm-start state is kept)."""
        if self._in_batch:
            raise RuntimeError(f"{self.name}: start_batch() called twice without finish_batch()")
        self._in_batch = True
        self._count = 0
        self._start()
        self._peak = held_floats(self)

    def consume(self, x: np.ndarray, delta: np.ndarray, x_checked: bool = False) -> None:
        """Add pairs: ``x`` (N,) with ``delta`` (M,), or ``x`` (b, N) with ``delta`` (b, M).

        Equivalent (up to rounding) to consuming the ``b`` pairs one at a time. ``x_checked=True`` skips the one
        check that repeats an earlier one, that x is finite: for inputs that were just read on the array, whose
        voltage check refused NaN and infinity (the trainer's layer inputs); everything else is still checked.
        """
        if not self._in_batch:
            raise RuntimeError(f"{self.name}: call start_batch() before consume()")
        X, D = self._validate(x, delta, x_checked)
        if X.shape[0] == 0:
            return
        self._consume(X, D)
        self._count += X.shape[0]
        self._note_memory()

    def finish_batch(self) -> Update:
        """End the batch and return the approximation of the batch-averaged gradient ``G``."""
        if not self._in_batch:
            raise RuntimeError(f"{self.name}: finish_batch() called without start_batch()")
        if self._count == 0:
            raise RuntimeError(f"{self.name}: finish_batch() with no pairs consumed")
        update = self._finish(self._count)
        self._in_batch = False
        self._note_memory()
        return update

    @property
    def n_consumed(self) -> int:
        """Number of pairs consumed in the current (or last) batch."""
        return self._count

    @property
    def memory_floats(self) -> int:
        """Peak floats held in the instance's own arrays during the last batch (measured)."""
        return max(self._peak, held_floats(self))

    def state_dict(self) -> StateDict:
        """Warm-start state (copies), for checkpoints; only between batches."""
        if self._in_batch:
            raise RuntimeError(f"{self.name}: state_dict() is only available between batches")
        return {"n_rows": self.n_rows, "n_cols": self.n_cols, "rank": self.rank, **self._state()}

    def load_state_dict(self, d: StateDict) -> None:
        """Restore the state produced by :meth:`state_dict` (shapes are checked)."""
        if self._in_batch:
            raise RuntimeError(f"{self.name}: load_state_dict() is only allowed between batches")
        for key, mine in (("n_rows", self.n_rows), ("n_cols", self.n_cols), ("rank", self.rank)):
            if key not in d:
                raise ValueError(f"{self.name}: state dict lacks {key!r}")
            if int(d[key]) != mine:
                raise ValueError(f"{self.name}: state dict has {key}={d[key]}, instance has {mine}")
        self._load(d)
        self._peak = held_floats(self)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_rows={self.n_rows}, n_cols={self.n_cols}, rank={self.rank})"
        )

    # ----------------------------------------------------------------- helpers for subclasses
    def _note_memory(self) -> None:
        """Record the floats currently held (call where a method transiently holds more)."""
        self._peak = max(self._peak, held_floats(self))

    def _validate(self, x: Any, delta: Any, x_checked: bool = False) -> tuple[np.ndarray, np.ndarray]:
        X = _as_float_array("x", x)
        D = _as_float_array("delta", delta)
        if X.ndim != D.ndim or X.ndim not in (1, 2):
            raise ValueError(
                f"{self.name}: x and delta must both be 1-D (one pair) or both 2-D (b pairs); "
                f"got x{X.shape}, delta{D.shape}"
            )
        if X.ndim == 1:
            X, D = X[None, :], D[None, :]
        if X.shape[1] != self.n_rows:
            raise ValueError(f"{self.name}: x has {X.shape[1]} inputs, expected N={self.n_rows}")
        if D.shape[1] != self.n_cols:
            raise ValueError(
                f"{self.name}: delta has {D.shape[1]} outputs, expected M={self.n_cols}"
            )
        if X.shape[0] != D.shape[0]:
            raise ValueError(f"{self.name}: x has {X.shape[0]} rows but delta has {D.shape[0]}")
        if not x_checked and not _all_finite(X):
            raise ValueError(f"{self.name}: x contains NaN or inf")
        if not _all_finite(D):
            raise ValueError(f"{self.name}: delta contains NaN or inf")
        return X, D

    def _load_array(self, d: StateDict, key: str, shape: tuple[int, ...]) -> np.ndarray:
        if key not in d:
            raise ValueError(f"{self.name}: state dict lacks {key!r}")
        arr = np.array(d[key], dtype=np.float64)
        if arr.shape != shape:
            raise ValueError(f"{self.name}: state {key!r} has shape {arr.shape}, expected {shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{self.name}: state {key!r} contains NaN or inf")
        return arr

    # ----------------------------------------------------------------- to implement
    @abstractmethod
    def _setup(self, rng: np.random.Generator, **options: Any) -> None:
        """Allocate state; draw any random initialisation from ``rng``."""

    @abstractmethod
    def _start(self) -> None:
        """Reset the accumulators for a new batch."""

    @abstractmethod
    def _consume(self, X: np.ndarray, D: np.ndarray) -> None:
        """Accumulate validated chunks ``X`` (b, N) and ``D`` (b, M), b >= 1 (float32 or float64)."""

    @abstractmethod
    def _finish(self, n: int) -> Update:
        """Return the update for the ``n`` pairs consumed."""

    def _state(self) -> StateDict:
        """Method-specific warm-start state (default: none)."""
        return {}

    def _load(self, d: StateDict) -> None:
        """Restore method-specific warm-start state (default: none)."""
