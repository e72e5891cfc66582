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
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ._linalg import add_outer
from ._nnls import nnls_rows_
from .base import Compressor, LowRankUpdate, StateDict

__all__ = ["NMF"]

_H_STEP, _W_STEP = 0, 1


class NMF(Compressor):
    """Streaming ANLS non-negative factorisation of ``[X^T D+ | X^T D-] / B``; see the module doc.

    Requires ``x >= 0`` (raises ValueError otherwise).
    Options: ``split_signs`` (bool, default True).
    """

    name: ClassVar[str] = "nmf"
    OPTIONS: ClassVar[tuple[str, ...]] = ("split_signs",)

    def _setup(self, rng: np.random.Generator, split_signs: bool = True, **options: Any) -> None:
        if not isinstance(split_signs, (bool, np.bool_)):
            raise ValueError(f"nmf: split_signs must be a bool, got {split_signs!r}")
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
        (self._H if self._phase == _H_STEP else self._W).fill(0.0)

    def _consume(self, X: np.ndarray, D: np.ndarray) -> None:
        M = self.n_cols
        if self._phase == _H_STEP:
            XW = X @ self._W  # (b, k)
            add_outer(self._H[:M], np.maximum(D, 0.0), XW)  # H+ part += D+^T X W
            add_outer(self._H[M:], np.maximum(-D, 0.0), XW)  # H- part += D-^T X W
        else:
            E = np.maximum(D, 0.0) @ self._H[:M] + np.maximum(-D, 0.0) @ self._H[M:]
            add_outer(self._W, X, E)  # W += X^T (D+ H+ + D- H-)

    def _finish(self, n: int) -> LowRankUpdate:
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

    @staticmethod
    def _rescale(solved: np.ndarray, other: np.ndarray) -> None:
        """Unit columns for ``solved``, norms moved into ``other``; dead columns restart uniform."""
        norms = np.linalg.norm(solved, axis=0)
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
