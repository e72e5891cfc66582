"""``mbgd``: mini-batch gradient descent with the full ``N x M`` accumulator."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ._linalg import add_outer
from .base import Compressor, DenseUpdate

__all__ = ["MiniBatchGD"]


class MiniBatchGD(Compressor):
    """Accumulates ``S = sum_b x_b delta_b^T = X^T D`` and emits ``DenseUpdate(S / B)``.

    Memory: the accumulator, ``N * M`` floats.  ``rank`` is ignored.
    """

    name: ClassVar[str] = "mbgd"

    def _setup(self, rng: np.random.Generator, **options: Any) -> None:
        self._acc = np.zeros((self.n_rows, self.n_cols))

    def _start(self) -> None:
        self._acc.fill(0.0)

    def _consume(self, X: np.ndarray, D: np.ndarray) -> None:
        add_outer(self._acc, X, D)  # acc += X^T D, in row blocks (no N x M temporary)

    def _finish(self, n: int) -> DenseUpdate:
        return DenseUpdate(self._acc / n)
