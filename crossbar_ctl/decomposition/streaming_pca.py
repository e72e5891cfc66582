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
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ._linalg import add_outer, orthonormalize_, right_multiply_
from .base import Compressor, LowRankUpdate, StateDict

__all__ = ["StreamingPCA"]

_LEFT, _RIGHT = 0, 1


class StreamingPCA(Compressor):
    """Streaming batch PCA with alternating warm-started half power steps; see the module docstring.

    Options: ``oversample`` (int >= 0, default 0): extra tracked directions, not emitted.
    """

    name: ClassVar[str] = "streaming-pca"
    OPTIONS: ClassVar[tuple[str, ...]] = ("oversample",)

    def _setup(self, rng: np.random.Generator, oversample: int = 0, **options: Any) -> None:
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
        # The buffer of the side being estimated becomes the accumulator.
        (self._U if self._phase == _LEFT else self._V).fill(0.0)

    def _consume(self, X: np.ndarray, D: np.ndarray) -> None:
        if self._phase == _LEFT:
            add_outer(self._U, X, D @ self._V)  # U += X^T (D V)
        else:
            add_outer(self._V, D, X @ self._U)  # V += D^T (X U)

    def _finish(self, n: int) -> LowRankUpdate:
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
