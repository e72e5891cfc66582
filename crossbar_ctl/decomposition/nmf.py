"""``nmf``: streaming non-negative factorisation of the sign-split batch gradient.

With inputs ``X >= 0`` (ReLU outputs, pixels, bias) and ``D = D+ - D-`` (``D+- >= 0``)

    G = X^T D / B = A+ - A-,   A+- = X^T D+- / B >= 0  (N x M each)

Option ``factors`` chooses what is factored:

* ``"shared"`` (default): the stacked ``A = [A+ | A-]`` (N x 2M) ``~= W H^T`` with ``W >= 0``
  (N x k) and ``H = [H+; H-] >= 0`` (2M x k): one row factor for both parts, so
  ``G ~= W (H+ - H-)^T`` and every component yields the single-sign pairs ``(w_j, h+_j)`` and
  ``(w_j, -h-_j)`` -- one pulse phase each on the array.
* ``"separate"``: two independent factorisations at rank k, ``A+ ~= W+ H+^T`` and
  ``A- ~= W- H-^T`` (all four factors >= 0), so ``G ~= W+ H+^T - W- H-^T``: 2k single-sign pairs
  ``(w+_j, h+_j)`` and ``(w-_j, -h-_j)`` whose row vectors differ.  Every step below runs on the
  two parts independently (each with its own Gram matrix); they share only the batch stream.
  Stored as ``W = [W+ | W-]`` (N x 2k) and ``H = [H+ | H-]`` (M x 2k), column ``j`` of W paired
  with column ``j`` of H, so one product serves both parts.

Algorithm: alternating non-negative least squares (ANLS), one half step per batch, warm-started
across batches, one pass over the stream, never forming A (shown for "shared"; "separate" is the
same per part with ``A+ = X^T D+ / B`` and ``A- = X^T D- / B`` in place of A):

* H batch: accumulate ``S = A^T W = (1/B) [D+^T (X W); D-^T (X W)]`` (2M x k) in H's buffer, then
  ``H <- argmin_{H >= 0} ||A - W H^T||_F`` row by row from ``S`` and ``W^T W`` (exact NNLS).
  ("separate": ``S+ = D+^T (X W+) / B`` and ``S- = D-^T (X W-) / B``; Grams ``W+^T W+`` and
  ``W-^T W-``.)
* W batch: accumulate ``T = A H = (1/B) X^T (D+ H+ + D- H-)`` (N x k) in W's buffer, then
  ``W <- argmin_{W >= 0} ||A - W H^T||_F`` from ``T`` and ``H^T H``.
  ("separate": ``[T+ | T-] = X^T [D+ H+ | D- H-] / B``, Grams ``H+^T H+``, ``H-^T H-``.)

Each half step is an exact minimisation, so for a repeated gradient ``||A - W H^T||_F`` never
increases from batch to batch (for "separate": ``||A+ - W+ H+^T||`` and ``||A- - W- H-^T||``
each never increase); the emitted update is the best non-negative fit of *this* batch's
target with the other factor fixed.  After every step the freshly solved factor is scaled to unit
columns (the other factor takes the norms; the product is unchanged); a component solved to zero
is restarted as a uniform unit column, which cannot increase the error (its product stays zero
until the next exact solve chooses a better value).

Memory (measured on the instance): ``k (N + 2M)`` floats for "shared", ``2k (N + M)`` for
"separate" -- W and H; the accumulators live in their buffers.  Emitted: for "shared" (option
``split_signs``, default True) ``U = [W, W]``, ``V = [H+, -H-]`` (2k single-sign pairs, columns
balanced so ``||u_j|| = ||v_j||``), else ``U = W``, ``V = H+ - H-`` (k signed pairs).  For
"separate" always ``U = [W+, W-]``, ``V = [H+, -H-]`` (2k single-sign pairs, balanced): the row
factors differ, so there is no k-pair net form and ``split_signs`` does not change the output.

Option ``passes=p`` (int >= 1, default 1).  ``p = 1`` is the one-pass half step above.  For
``p > 1`` the batch is buffered -- ``X`` (B x N) and ``E = [D+ | D-]`` (B x 2M), so that
``A = X^T E / B`` -- and ``finish_batch`` runs ``p`` full ANLS rounds on *this* batch, warm-started
from the previous batch's W, always through the factors (never forming the N x 2M matrix A):

    H <- argmin_{H >= 0} ||A - W H^T||   from  A^T W = E^T (X W) / B   and  W^T W,
    W <- argmin_{W >= 0} ||A - W H^T||   from  A H   = X^T (E H) / B   and  H^T H,

each followed by the unit-column rescaling; the update is emitted after the last W step
("separate": per part, ``A+^T W+ = E+^T (X W+) / B``, ``A+ H+ = X^T (E+ H+) / B`` and likewise
for ``-``).  Every step is an exact minimisation, so the factored error (stacked, or each part's)
never increases from round to round.  Memory: the state plus ``B (N + 2M)`` floats at the batch's
peak (the buffer is released at the end of ``finish_batch``); the phase is not used.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ._linalg import add_outer
from ._nnls import nnls_rows_
from .base import Compressor, LowRankUpdate, StateDict, _append_rows, _check_int, _like

__all__ = ["NMF"]

_H_STEP, _W_STEP = 0, 1
#: values of the option ``factors``
FACTORS = ("shared", "separate")


class NMF(Compressor):
    """Streaming ANLS non-negative factorisation of ``[X^T D+ | X^T D-] / B``; see the module doc.

    Requires ``x >= 0`` (raises ValueError otherwise).
    Options: ``factors`` ("shared", default: one row factor W for both sign parts; "separate": the
    parts ``X^T D+ / B`` and ``X^T D- / B`` factored independently at rank k each);
    ``split_signs`` (bool, default True; "shared" only, "separate" always emits 2k pairs);
    ``passes`` (int >= 1, default 1: one streaming half step per batch; ``p > 1``: buffer the
    batch and run ``p`` full ANLS rounds on it).
    """

    name: ClassVar[str] = "nmf"
    OPTIONS: ClassVar[tuple[str, ...]] = ("split_signs", "passes", "factors")

    def _setup(
        self,
        rng: np.random.Generator,
        split_signs: bool = True,
        passes: int = 1,
        factors: str = "shared",
        **options: Any,
    ) -> None:
        if not isinstance(split_signs, (bool, np.bool_)):
            raise ValueError(f"nmf: split_signs must be a bool, got {split_signs!r}")
        self.passes = _check_int("nmf: passes", passes, 1)
        if not isinstance(factors, str) or factors not in FACTORS:
            allowed = ", ".join(repr(f) for f in FACTORS)
            raise ValueError(f"nmf: factors must be one of {allowed}; got {factors!r}")
        self.factors = factors
        self.separate = factors == "separate"
        k, n, m = self.rank, self.n_rows, self.n_cols
        limit = min(n, m) if self.separate else min(n, 2 * m)
        if k > limit:
            what = "min(N, M) (factors='separate')" if self.separate else "min(N, 2M)"
            raise ValueError(f"nmf: rank {k} exceeds {what} = {limit}")
        self.split_signs = bool(split_signs)
        if self.separate:  # W = [W+ | W-] (N x 2k), H = [H+ | H-] (M x 2k)
            W = rng.random((n, 2 * k)) + 0.1
            H = rng.random((m, 2 * k)) + 0.1
        else:  # W (N x k), H = [H+; H-] (2M x k)
            W = rng.random((n, k)) + 0.1
            H = rng.random((2 * m, k)) + 0.1
        self._W = W / np.linalg.norm(W, axis=0)
        self._H = H / np.linalg.norm(H, axis=0)
        self._phase = _H_STEP
        self._batches = 0
        # passes > 1: the batch buffer X (b x N) and E = [D+ | D-] (b x 2M); None between batches
        self._bx: np.ndarray | None = None
        self._be: np.ndarray | None = None

    @property
    def row_factor(self) -> np.ndarray:
        """W (N x k), non-negative (copy); "separate": ``[W+ | W-]`` (N x 2k)."""
        return self._W.copy()

    @property
    def col_factor(self) -> np.ndarray:
        """H = [H+; H-] (2M x k), non-negative (copy); "separate": ``[H+ | H-]`` (M x 2k)."""
        return self._H.copy()

    def _validate(self, x: Any, delta: Any, x_checked: bool = False) -> tuple[np.ndarray, np.ndarray]:
        X, D = super()._validate(x, delta, x_checked)
        if X.size and X.min() < 0:  # one pass, no temporary (X is finite here)
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
        if self.separate:
            self._consume_separate(X, D)
        elif self._phase == _H_STEP:  # products in the batch's precision
            XW = X @ _like(self._W, X)  # (b, k)
            add_outer(self._H[:M], np.maximum(D, 0.0), XW)  # H+ part += D+^T X W
            add_outer(self._H[M:], np.maximum(-D, 0.0), XW)  # H- part += D-^T X W
        else:
            H = _like(self._H, D)
            E = np.maximum(D, 0.0) @ H[:M] + np.maximum(-D, 0.0) @ H[M:]
            add_outer(self._W, X, E)  # W += X^T (D+ H+ + D- H-)

    def _consume_separate(self, X: np.ndarray, D: np.ndarray) -> None:
        k = self.rank
        if self._phase == _H_STEP:  # products in the batch's precision
            XW = X @ _like(self._W, X)  # (b, 2k) = [X W+ | X W-]
            add_outer(self._H[:, :k], np.maximum(D, 0.0), XW[:, :k])  # H+ += D+^T X W+
            add_outer(self._H[:, k:], np.maximum(-D, 0.0), XW[:, k:])  # H- += D-^T X W-
        else:
            H = _like(self._H, D)
            E = np.empty((X.shape[0], 2 * k), dtype=H.dtype)
            np.matmul(np.maximum(D, 0.0), H[:, :k], out=E[:, :k])  # D+ H+
            np.matmul(np.maximum(-D, 0.0), H[:, k:], out=E[:, k:])  # D- H-
            add_outer(self._W, X, E)  # [W+ | W-] += X^T [D+ H+ | D- H-]

    def _solve(self, fixed: np.ndarray, rhs: np.ndarray) -> None:
        """``rhs <- argmin_{>= 0}`` given the fixed factor (via its Gram); per part if separate."""
        if not self.separate:
            nnls_rows_(fixed.T @ fixed, rhs)
            return
        k = self.rank
        for part in (slice(0, k), slice(k, 2 * k)):
            F = fixed[:, part]
            nnls_rows_(F.T @ F, rhs[:, part])

    def _finish(self, n: int) -> LowRankUpdate:
        if self.passes > 1:
            return self._finish_passes(n)
        if self._phase == _H_STEP:
            self._H /= n  # S = A^T W
            self._solve(self._W, self._H)
            update = self._emit()
            self._rescale(self._H, self._W)
            self._phase = _W_STEP
        else:
            self._W /= n  # T = A H
            self._solve(self._H, self._W)
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
            if self.separate:
                self._h_products_separate(X, E)
            else:
                np.matmul(E.T, X @ self._W, out=self._H)  # n A^T W
            self._H /= n
            self._solve(self._W, self._H)
            self._rescale(self._H, self._W)
            if self.separate:
                self._w_products_separate(X, E)
            else:
                np.matmul(X.T, E @ self._H, out=self._W)  # n A H
            self._W /= n
            self._solve(self._H, self._W)
            self._rescale(self._W, self._H)
        self._note_memory()
        self._bx = self._be = None  # release the batch
        self._batches += 1
        return self._emit()

    def _h_products_separate(self, X: np.ndarray, E: np.ndarray) -> None:
        """``H <- n [A+^T W+ | A-^T W-] = [E+^T (X W+) | E-^T (X W-)]``."""
        k, M = self.rank, self.n_cols
        XW = X @ self._W  # (b, 2k)
        np.matmul(E[:, :M].T, XW[:, :k], out=self._H[:, :k])
        np.matmul(E[:, M:].T, XW[:, k:], out=self._H[:, k:])

    def _w_products_separate(self, X: np.ndarray, E: np.ndarray) -> None:
        """``W <- n [A+ H+ | A- H-] = X^T [E+ H+ | E- H-]``."""
        k, M = self.rank, self.n_cols
        EH = np.empty((X.shape[0], 2 * k))
        np.matmul(E[:, :M], self._H[:, :k], out=EH[:, :k])
        np.matmul(E[:, M:], self._H[:, k:], out=EH[:, k:])
        np.matmul(X.T, EH, out=self._W)

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
        if self.separate:  # columns [W+ | W-] and [H+ | H-]: negate the H- half
            V = self._H / c
            V[:, self.rank :] *= -1.0
            return LowRankUpdate(U, V)
        Hp, Hm = self._H[:M] / c, self._H[M:] / c
        if self.split_signs:
            return LowRankUpdate(np.hstack([U, U]), np.hstack([Hp, -Hm]))
        return LowRankUpdate(U, Hp - Hm)

    def _state(self) -> StateDict:
        state: StateDict = {
            "W": self._W.copy(),
            "H": self._H.copy(),
            "phase": int(self._phase),
            "batches": int(self._batches),
        }
        if self.separate:
            state["separate"] = 1
        return state

    def _load(self, d: StateDict) -> None:
        theirs = "separate" if int(d.get("separate", 0)) else "shared"
        if theirs != self.factors:
            raise ValueError(
                f"nmf: state dict is from factors={theirs!r}, this instance has "
                f"factors={self.factors!r}"
            )
        W = self._load_array(d, "W", self._W.shape)
        H = self._load_array(d, "H", self._H.shape)
        if (W < 0).any() or (H < 0).any():
            raise ValueError("nmf: state 'W' and 'H' must be non-negative")
        phase = int(d.get("phase", -1))
        if phase not in (_H_STEP, _W_STEP):
            raise ValueError(f"nmf: state 'phase' must be 0 or 1, got {d.get('phase')}")
        self._W[:], self._H[:] = W, H
        self._phase = phase
        self._batches = int(d.get("batches", 0))
