"""Data sets for training on crossbars: an IDX reader/writer and MNIST-format loaders.

The package ships a MNIST subset (the first 10,000 training digits and the 10,000 official
test digits); see ``BUNDLED_ATTRIBUTION`` and ``data/README.md`` for its provenance.
"""

from __future__ import annotations

from pathlib import Path

from .idx import IDXFormatError, parse_idx, read_idx, write_idx
from .mnist import Dataset, DatasetFormatError, load_mnist

__all__ = [
    "BUNDLED_ATTRIBUTION",
    "KNOWN_DATASETS",
    "Dataset",
    "DatasetFormatError",
    "IDXFormatError",
    "load_dataset",
    "load_mnist",
    "parse_idx",
    "read_idx",
    "write_idx",
]

BUNDLED_ATTRIBUTION = (
    "MNIST handwritten digits by Yann LeCun, Corinna Cortes and Christopher J.C. Burges, "
    "licensed CC BY-SA 3.0. Bundled subset: the first 10,000 official training digits "
    "and the 10,000 official test digits."
)

#: Names accepted by :func:`load_dataset`; "fashion-mnist" has no bundled copy and needs data_dir.
KNOWN_DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist")


def load_dataset(
    name: str = "mnist",
    data_dir: str | Path | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    pool_px: int = 1,
) -> Dataset:
    """Load a data set by name (case-insensitive).

    "mnist" with ``data_dir=None`` is the bundled subset; with ``data_dir`` it is read from
    the four standard IDX files there. "fashion-mnist" uses the same format and needs
    ``data_dir``. ``limit_train`` / ``limit_test`` keep the first n examples of each split;
    ``pool_px`` average-pools the images (:meth:`Dataset.pooled`). Raises ValueError for an unknown name.
    """
    key = name.strip().lower()
    if key not in KNOWN_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(KNOWN_DATASETS)}")
    if key == "fashion-mnist" and data_dir is None:
        raise ValueError(
            "dataset 'fashion-mnist' is not bundled; pass data_dir pointing to a directory "
            "with its four IDX files"
        )
    return load_mnist(data_dir, limit_train=limit_train, limit_test=limit_test).pooled(pool_px)
