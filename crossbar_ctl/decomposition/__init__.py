"""Host-side gradient compressors: turn a batch stream of (x, delta) pairs into an update.

``COMPRESSORS`` maps each method name to its class; :func:`make_compressor` builds one by name.

========================  =============================================  =======================
name                      emits                                          memory (floats)
========================  =============================================  =======================
``sgd``                   ``x delta^T`` (one pair per batch)             ``N + M``
``mbgd``                  dense ``G = X^T D / B``                        ``N M``
``svd``                   top-k SVD of the explicit ``G``                ``N M + (k+r)(N+M+1)``
``streaming-pca``         projection of ``G`` on tracked rank-k spaces   ``k (N + M) + k``
``nmf``                   ``W (H+ - H-)^T`` as 2k single-sign pairs      ``k (N + 2M)``
``nmf`` (separate)        ``W+ H+^T - W- H-^T`` as 2k single-sign pairs  ``2k (N + M)``
========================  =============================================  =======================

(``r = min(N, M)``: svd holds the thin SVD factors while finishing a batch, ``N M + k (N + M + 1)``
between batches.) With the option ``passes = p > 1`` streaming-pca and nmf buffer the batch and iterate
over it p times: add ``B (N + M)`` (pca) or ``B (N + 2M)`` (nmf) floats for a batch of B pairs.
nmf's option ``factors`` is ``"shared"`` (default: one row factor W for ``[X^T D+ | X^T D-] / B``)
or ``"separate"`` (``X^T D+ / B`` and ``X^T D- / B`` factored independently at rank k each).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Compressor, DenseUpdate, LowRankUpdate, StateDict, Update, held_floats
from .mbgd import MiniBatchGD
from .nmf import NMF
from .sgd import SGD
from .streaming_pca import StreamingPCA
from .svd import TruncatedSVD

__all__ = [
    "COMPRESSORS",
    "NMF",
    "SGD",
    "Compressor",
    "DenseUpdate",
    "LowRankUpdate",
    "MiniBatchGD",
    "StateDict",
    "StreamingPCA",
    "TruncatedSVD",
    "Update",
    "held_floats",
    "make_compressor",
]

COMPRESSORS: dict[str, type[Compressor]] = {
    cls.name: cls for cls in (SGD, MiniBatchGD, TruncatedSVD, StreamingPCA, NMF)
}


def make_compressor(
    name: str,
    n_rows: int,
    n_cols: int,
    rank: int,
    rng: np.random.Generator,
    **options: Any,
) -> Compressor:
    """Build the compressor registered as ``name`` for an ``n_rows x n_cols`` layer.

    Raises ValueError for an unknown name (listing the known ones) or invalid arguments.
    """
    try:
        cls = COMPRESSORS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(COMPRESSORS))
        raise ValueError(f"unknown compressor {name!r}; known: {known}") from None
    return cls(n_rows, n_cols, rank, rng, **options)
