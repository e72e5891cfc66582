"""``sgd``: the batch-size-1 baseline, ``G = x delta^T`` emitted as one rank-1 pair."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .base import Compressor, LowRankUpdate

__all__ = ["SGD"]


class SGD(Compressor):
    """Stochastic gradient descent: exactly one pair per batch, emitted as ``U = x[:, None]``,
    ``V = delta[:, None]`` (so ``G = x delta^T``).

    Memory: the copies of ``x`` and ``delta`` it holds, ``N + M`` floats.  ``rank`` is ignored.
    """

    name: ClassVar[str] = "sgd"

    def _setup(self, rng: np.random.Generator, **options: Any) -> None:
        self._x = np.zeros(self.n_rows)
        self._delta = np.zeros(self.n_cols)

    def _start(self) -> None:
        self._x.fill(0.0)
        self._delta.fill(0.0)

    def _consume(self, X: np.ndarray, D: np.ndarray) -> None:
        if self._count + X.shape[0] > 1:
            raise ValueError(
                f"sgd takes exactly one pair per batch; got {self._count + X.shape[0]} "
                "(use mbgd or a low-rank compressor for larger batches)"
            )
        self._x[:] = X[0]
        self._delta[:] = D[0]

    def _finish(self, n: int) -> LowRankUpdate:
        return LowRankUpdate(self._x[:, None].copy(), self._delta[:, None].copy())
