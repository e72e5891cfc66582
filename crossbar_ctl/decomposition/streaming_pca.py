"""``streaming-pca``: streaming batch PCA (block power iteration on the batch gradient).

After the streaming batch eigenupdate idea of Hoskins et al. (Front. Neurosci. 13:793, 2019) and the
stochastic power iterations of Huang et al.: the rank-k singular subspaces of the batch gradient are
tracked from batch to batch by power iteration, warm-started from the previous batch's singular
vectors, with one pass over the stream and no N x M matrix.

Alternating half steps (this implementation).  The state is ``U`` (N x k), ``V`` (M x k), both with
orthonormal columns, and ``s`` (k).  Batches alternate between two kinds:

* left batch:  ``P = G V = (1/B) sum_b x_b (delta_b^T V)`` is accumulated *in U's buffer* (the old U
  is not needed in this batch).  With ``P = Q R`` (QR, in place) and ``R = a diag(s) b^T`` (k x k
  SVD): ``U <- Q a``, ``V <- V b``, and the update is ``G V V^T = U diag(s) V^T``.
* right batch: ``Q = G^T U = (1/B) sum_b delta_b (x_b^T U)`` is accumulated in V's buffer, and the
  update is ``U U^T G = U diag(s) V^T`` after the analogous re-orthonormalisation.

So each batch emits the exact projection of *its own* gradient onto the tracked subspace (a descent
direction: ``<G, G V V^T> = ||G V||^2 >= 0``), and two batches make one full power step
``U <- orth(G G^T U)`` -- the same rate per batch as updating both sides at once, which would need a
second ``k (N + M)`` accumulator.  For a gradient of rank <= k with fixed column and row spaces the
subspaces are exact after two batches; in general the principal angles shrink like
``(s_{k+1} / s_k)`` per batch.  The first batch projects onto a random orthonormal ``V`` drawn
from ``rng``.

Memory (measured on the instance): ``k (N + M) + k`` floats -- U, V, s and nothing else; the
accumulators live in U's or V's buffer.  Option ``oversample=p`` tracks ``k + p`` directions
(faster convergence, ``(k + p)(N + M + 1)`` floats) and emits the top k.

Option ``passes=p`` (int >= 1, default 1).  ``p = 1`` is the one-pass half step above.  For
``p > 1`` the batch ``X`` (B x N), ``D`` (B x M) is buffered and ``finish_batch`` runs ``p`` full
block power iterations on *this* batch's ``G = X^T D / B``, warm-started from the previous
batch's V, through the factors only (never forming G):

    U <- orth(G V) = orth(X^T (D V)),    V R = G^T U = D^T (X U) / B   (QR),

and emits ``U U^T G = U R^T V^T = (U a) diag(s) (V b)^T`` with ``R^T = a diag(s) b^T``: the
projection of G on the iterated column space, which tends to the truncated SVD (principal
angles shrink like ``(s_{k+1} / s_k)^{2p}``, the excess error like their square).  Memory: ``r (N + M + 1) + B (N + M)`` floats at the batch's peak (``r``
tracked directions; the buffer is released at the end of ``finish_batch``); the phase is not used.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ._linalg import add_outer, orthonormalize_, right_multiply_
from .base import Compressor, LowRankUpdate, StateDict, _append_rows, _check_int, _like

__all__ = ["StreamingPCA"]

_LEFT, _RIGHT = 0, 1


class StreamingPCA(Compressor):
    """Streaming batch PCA with alternating warm-started half power steps; see the module docstring.

    Options: ``oversample`` (int >= 0, default 0): extra tracked directions, not emitted;
    ``passes`` (int >= 1, default 1: one streaming half step per batch; ``p > 1``: buffer the batch
    and run ``p`` full block power iterations on it).
    """

    name: ClassVar[str] = "streaming-pca"
    OPTIONS: ClassVar[tuple[str, ...]] = ("oversample", "passes")

    def _setup(
        self,
        rng: np.random.Generator,
        oversample: int = 0,
        passes: int = 1,
        **options: Any,
    ) -> None:
        self.passes = _check_int("streaming-pca: passes", passes, 1)
        if isinstance(oversample, bool) or not isinstance(oversample, (int, np.integer)):
            raise ValueError(f"streaming-pca: oversample must be an int, got {oversample!r}")
        if oversample < 0:
            raise ValueError(f"streaming-pca: oversample must be >= 0, got {oversample}")
        r = self.rank + int(oversample)
        if r > min(self.n_rows, self.n_cols):
            raise ValueError(
                f"streaming-pca: rank + oversample = {r} exceeds min(N, M) = "
                f"{min(self.n_rows, self.n_cols)}"
            )
        self._r = r
        self._U = np.linalg.qr(rng.standard_normal((self.n_rows, r)))[0]
        self._V = np.linalg.qr(rng.standard_normal((self.n_cols, r)))[0]
        self._s = np.zeros(r)
        self._phase = _LEFT
        self._batches = 0
        # passes > 1: the batch buffer X (b x N), D (b x M); None between batches
        self._bx: np.ndarray | None = None
        self._bd: np.ndarray | None = None

    @property
    def tracked(self) -> int:
        """Number of tracked directions ``k + oversample``."""
        return self._r

    @property
    def left_vectors(self) -> np.ndarray:
        """Current left singular vector estimates U (N x k), orthonormal columns (copy)."""
        return self._U[:, : self.rank].copy()

    @property
    def right_vectors(self) -> np.ndarray:
        """Current right singular vector estimates V (M x k), orthonormal columns (copy)."""
        return self._V[:, : self.rank].copy()

    @property
    def singular_values(self) -> np.ndarray:
        """Singular value estimates of the last batch's gradient, descending (copy)."""
        return self._s[: self.rank].copy()

    def _start(self) -> None:
        if self.passes > 1:
            self._bx = self._bd = None
            return
        # The buffer of the side being estimated becomes the accumulator.
        (self._U if self._phase == _LEFT else self._V).fill(0.0)

    def _consume(self, X: np.ndarray, D: np.ndarray) -> None:
        if self.passes > 1:
            self._bx = _append_rows(self._bx, X)
            self._bd = _append_rows(self._bd, D)
        elif self._phase == _LEFT:
            add_outer(self._U, X, D @ _like(self._V, D))  # U += X^T (D V), in the batch's precision
        else:
            add_outer(self._V, D, X @ _like(self._U, X))  # V += D^T (X U)

    def _finish(self, n: int) -> LowRankUpdate:
        if self.passes > 1:
            return self._finish_passes(n)
        if self._phase == _LEFT:
            self._U /= n  # P = G V
            R = orthonormalize_(self._U)  # P = U R
            a, s, bt = np.linalg.svd(R)  # G V V^T = (U a) diag(s) (V b)^T
            right_multiply_(self._U, a)
            right_multiply_(self._V, bt.T)
        else:
            self._V /= n  # Q = G^T U
            R = orthonormalize_(self._V)  # Q = V R, so U U^T G = U R^T V^T
            a, s, bt = np.linalg.svd(R.T)
            right_multiply_(self._U, a)
            right_multiply_(self._V, bt.T)
        self._s[:] = s
        self._phase = _RIGHT if self._phase == _LEFT else _LEFT
        self._batches += 1
        return self._emit()

    def _finish_passes(self, n: int) -> LowRankUpdate:
        """``passes`` block power iterations on the buffered batch; emits ``U U^T G``."""
        X, D = self._bx, self._bd
        assert X is not None and D is not None
        R = np.zeros((self._r, self._r))
        for _ in range(self.passes):
            np.matmul(X.T, D @ self._V, out=self._U)  # n G V (scale irrelevant: only its span)
            orthonormalize_(self._U)
            np.matmul(D.T, X @ self._U, out=self._V)  # n G^T U
            self._V /= n
            R = orthonormalize_(self._V)  # G^T U = V R, so U U^T G = U R^T V^T
        a, s, bt = np.linalg.svd(R.T)
        right_multiply_(self._U, a)
        right_multiply_(self._V, bt.T)
        self._s[:] = s
        self._note_memory()
        self._bx = self._bd = None  # release the batch
        self._batches += 1
        return self._emit()

    def _emit(self) -> LowRankUpdate:
        """``U_k diag(s_k) V_k^T`` as balanced factors ``(U_k sqrt(s_k), V_k sqrt(s_k))``."""
        k = self.rank
        root = np.sqrt(self._s[:k])
        return LowRankUpdate(self._U[:, :k] * root, self._V[:, :k] * root)

    def _state(self) -> StateDict:
        return {
            "U": self._U.copy(),
            "V": self._V.copy(),
            "s": self._s.copy(),
            "phase": int(self._phase),
            "batches": int(self._batches),
        }

    def _load(self, d: StateDict) -> None:
        r = self._r
        U = self._load_array(d, "U", (self.n_rows, r))
        V = self._load_array(d, "V", (self.n_cols, r))
        s = self._load_array(d, "s", (r,))
        phase = int(d.get("phase", -1))
        if phase not in (_LEFT, _RIGHT):
            raise ValueError(f"streaming-pca: state 'phase' must be 0 or 1, got {d.get('phase')}")
        self._U[:], self._V[:], self._s[:] = U, V, s
        self._phase = phase
        self._batches = int(d.get("batches", 0))
