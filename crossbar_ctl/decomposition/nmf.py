"""``nmf``: streaming non-negative factorisation of the sign-split batch gradient.

With inputs ``X >= 0`` (ReLU outputs, pixels, bias) and ``D = D+ - D-`` (``D+- >= 0``)

    G = X^T D / B = A+ - A-,   A+- = X^T D+- / B >= 0,   A = [A+ | A-]  (N x 2M, non-negative)

and ``A ~= W H^T`` with ``W >= 0`` (N x k) and ``H = [H+; H-] >= 0`` (2M x k): a shared row factor,
so ``G ~= W (H+ - H-)^T`` and every component yields the single-sign pairs ``(w_j, h+_j)`` and
``(w_j, -h-_j)`` -- one pulse phase each on the array.

Algorithm: alternating non-negative least squares (ANLS), one half step per batch, warm-started
across batches, one pass over the stream, never forming A:

* H batch: accumulate ``S = A^T W = (1/B) [D+^T (X W); D-^T (X W)]`` (2M x k) in H's buffer, then
  ``H <- argmin_{H >= 0} ||A - W H^T||_F`` row by row from ``S`` and ``W^T W`` (exact NNLS).
* W batch: accumulate ``T = A H = (1/B) X^T (D+ H+ + D- H-)`` (N x k) in W's buffer, then
  ``W <- argmin_{W >= 0} ||A - W H^T||_F`` from ``T`` and ``H^T H``.

Each half step is an exact minimisation, so for a repeated gradient ``||A - W H^T||_F`` never
increases from batch to batch; the emitted update is the best non-negative fit of *this* batch's
``A`` with the other factor fixed.  After every step the freshly solved factor is scaled to unit
columns (the other factor takes the norms; the product is unchanged); a component solved to zero
is restarted as a uniform unit column, which cannot increase the error (its product stays zero
until the next exact solve chooses a better value).

Memory (measured on the instance): ``k (N + 2M)`` floats -- W and H; the accumulators live in
their buffers.  Emitted (option ``split_signs``, default True): ``U = [W, W]``, ``V = [H+, -H-]``
(2k single-sign pairs, columns balanced so ``||u_j|| = ||v_j||``), else ``U = W``, ``V = H+ - H-``.

Option ``passes=p`` (int >= 1, default 1).  ``p = 1`` is the one-pass half step above.  For
``p > 1`` the batch is buffered -- ``X`` (B x N) and ``E = [D+ | D-]`` (B x 2M), so that
``A = X^T E / B`` -- and ``finish_batch`` runs ``p`` full ANLS rounds on *this* batch, warm-started
from the previous batch's W, always through the factors (never forming the N x 2M matrix A):

    H <- argmin_{H >= 0} ||A - W H^T||   from  A^T W = E^T (X W) / B   and  W^T W,
    W <- argmin_{W >= 0} ||A - W H^T||   from  A H   = X^T (E H) / B   and  H^T H,

each followed by the unit-column rescaling; the update is emitted after the last W step.  Every
step is an exact minimisation, so ``||A - W H^T||_F`` never increases from round to round (and
more passes never give a larger stacked error).  Memory: ``k (N + 2M) + B (N + 2M)`` floats at the
batch's peak (the buffer is released at the end of ``finish_batch``); the phase is not used.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ._linalg import add_outer
from ._nnls import nnls_rows_
from .base import Compressor, LowRankUpdate, StateDict, _append_rows, _check_int

__all__ = ["NMF"]

_H_STEP, _W_STEP = 0, 1


class NMF(Compressor):
    """Streaming ANLS non-negative factorisation of ``[X^T D+ | X^T D-] / B``; see the module doc.

    Requires ``x >= 0`` (raises ValueError otherwise).
    Options: ``split_signs`` (bool, default True); ``passes`` (int >= 1, default 1: one streaming
    half step per batch; ``p > 1``: buffer the batch and run ``p`` full ANLS rounds on it).
    """

    name: ClassVar[str] = "nmf"
    OPTIONS: ClassVar[tuple[str, ...]] = ("split_signs", "passes")

    def _setup(
        self,
        rng: np.random.Generator,
        split_signs: bool = True,
        passes: int = 1,
        **options: Any,
    ) -> None:
        if not isinstance(split_signs, (bool, np.bool_)):
            raise ValueError(f"nmf: split_signs must be a bool, got {split_signs!r}")
        self.passes = _check_int("nmf: passes", passes, 1)
        if self.rank > min(self.n_rows, 2 * self.n_cols):
            raise ValueError(
                f"nmf: rank {self.rank} exceeds min(N, 2M) = {min(self.n_rows, 2 * self.n_cols)}"
            )
        self.split_signs = bool(split_signs)
        k = self.rank
        W = rng.random((self.n_rows, k)) + 0.1
        H = rng.random((2 * self.n_cols, k)) + 0.1
        self._W = W / np.linalg.norm(W, axis=0)
        self._H = H / np.linalg.norm(H, axis=0)
        self._phase = _H_STEP
        self._batches = 0
        # passes > 1: the batch buffer X (b x N) and E = [D+ | D-] (b x 2M); None between batches
        self._bx: np.ndarray | None = None
        self._be: np.ndarray | None = None

    @property
    def row_factor(self) -> np.ndarray:
        """W (N x k), non-negative (copy)."""
        return self._W.copy()

    @property
    def col_factor(self) -> np.ndarray:
        """H = [H+; H-] (2M x k), non-negative (copy)."""
        return self._H.copy()

    def _validate(self, x: Any, delta: Any) -> tuple[np.ndarray, np.ndarray]:
        X, D = super()._validate(x, delta)
        if (X < 0).any():
            bad = int((X < 0).sum())
            raise ValueError(
                f"nmf: x must be non-negative (ReLU outputs, pixels, bias); {bad} negative "
                f"entries, min {X.min():.3g}"
            )
        return X, D

    def _start(self) -> None:
        if self.passes > 1:
            self._bx = self._be = None
            return
        (self._H if self._phase == _H_STEP else self._W).fill(0.0)

    def _consume(self, X: np.ndarray, D: np.ndarray) -> None:
        M = self.n_cols
        if self.passes > 1:
            self._bx = _append_rows(self._bx, X)
            E = np.empty((X.shape[0], 2 * M))
            np.maximum(D, 0.0, out=E[:, :M])
            np.maximum(-D, 0.0, out=E[:, M:])
            self._be = _append_rows(self._be, E)
            return
        if self._phase == _H_STEP:
            XW = X @ self._W  # (b, k)
            add_outer(self._H[:M], np.maximum(D, 0.0), XW)  # H+ part += D+^T X W
            add_outer(self._H[M:], np.maximum(-D, 0.0), XW)  # H- part += D-^T X W
        else:
            E = np.maximum(D, 0.0) @ self._H[:M] + np.maximum(-D, 0.0) @ self._H[M:]
            add_outer(self._W, X, E)  # W += X^T (D+ H+ + D- H-)

    def _finish(self, n: int) -> LowRankUpdate:
        if self.passes > 1:
            return self._finish_passes(n)
        if self._phase == _H_STEP:
            self._H /= n  # S = A^T W
            nnls_rows_(self._W.T @ self._W, self._H)
            update = self._emit()
            self._rescale(self._H, self._W)
            self._phase = _W_STEP
        else:
            self._W /= n  # T = A H
            nnls_rows_(self._H.T @ self._H, self._W)
            update = self._emit()
            self._rescale(self._W, self._H)
            self._phase = _H_STEP
        self._batches += 1
        return update

    def _finish_passes(self, n: int) -> LowRankUpdate:
        """``passes`` full ANLS rounds (H step, W step) on the buffered ``A = X^T E / n``."""
        X, E = self._bx, self._be
        assert X is not None and E is not None
        for _ in range(self.passes):
            np.matmul(E.T, X @ self._W, out=self._H)  # n A^T W
            self._H /= n
            nnls_rows_(self._W.T @ self._W, self._H)
            self._rescale(self._H, self._W)
            np.matmul(X.T, E @ self._H, out=self._W)  # n A H
            self._W /= n
            nnls_rows_(self._H.T @ self._H, self._W)
            self._rescale(self._W, self._H)
        self._note_memory()
        self._bx = self._be = None  # release the batch
        self._batches += 1
        return self._emit()

    @staticmethod
    def _rescale(solved: np.ndarray, other: np.ndarray) -> None:
        """Unit columns for ``solved``, norms moved into ``other``; dead columns restart uniform."""
        norms = np.linalg.norm(solved, axis=0)
        if norms.all():  # common case, same arithmetic as below without the masking overhead
            solved /= norms
            other *= norms
            return
        dead = norms == 0.0
        solved[:, ~dead] /= norms[~dead]
        solved[:, dead] = 1.0 / np.sqrt(solved.shape[0])
        other *= norms

    def _emit(self) -> LowRankUpdate:
        M = self.n_cols
        hn = np.linalg.norm(self._H, axis=0)
        wn = np.linalg.norm(self._W, axis=0)
        live = (hn > 0) & (wn > 0)
        c = np.ones_like(hn)
        c[live] = np.sqrt(hn[live] / wn[live])  # ||c w_j|| = ||h_j / c||
        U = self._W * c
        Hp, Hm = self._H[:M] / c, self._H[M:] / c
        if self.split_signs:
            return LowRankUpdate(np.hstack([U, U]), np.hstack([Hp, -Hm]))
        return LowRankUpdate(U, Hp - Hm)

    def _state(self) -> StateDict:
        return {
            "W": self._W.copy(),
            "H": self._H.copy(),
            "phase": int(self._phase),
            "batches": int(self._batches),
        }

    def _load(self, d: StateDict) -> None:
        W = self._load_array(d, "W", (self.n_rows, self.rank))
        H = self._load_array(d, "H", (2 * self.n_cols, self.rank))
        if (W < 0).any() or (H < 0).any():
            raise ValueError("nmf: state 'W' and 'H' must be non-negative")
        phase = int(d.get("phase", -1))
        if phase not in (_H_STEP, _W_STEP):
            raise ValueError(f"nmf: state 'phase' must be 0 or 1, got {d.get('phase')}")
        self._W[:], self._H[:] = W, H
        self._phase = phase
        self._batches = int(d.get("batches", 0))
