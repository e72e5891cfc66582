"""MNIST-format loader: the bundled subset, or any directory of the four standard IDX files.

The same layout serves MNIST and Fashion-MNIST: 28 x 28 uint8 images and uint8 labels 0..9.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import abc as resources_abc
from importlib.resources import files
from pathlib import Path

import numpy as np

from .idx import parse_idx

__all__ = [
    "Dataset",
    "DatasetFormatError",
    "load_mnist",
    "MNIST_FILE_STEMS",
    "IMAGE_SHAPE_PX",
    "N_PIXELS",
    "N_CLASSES",
]

IMAGE_SHAPE_PX = (28, 28)
N_PIXELS = IMAGE_SHAPE_PX[0] * IMAGE_SHAPE_PX[1]
N_CLASSES = 10
_PIXEL_FULL_SCALE = 255.0

#: Standard file names without the optional ``.gz`` suffix: split -> (images, labels).
MNIST_FILE_STEMS: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_BUNDLED_DATA_DIR = "data"


class DatasetFormatError(ValueError):
    """A well-formed IDX file holds the wrong content for MNIST (shape, dtype, labels, counts)."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images and labels of one MNIST-format data set (see :meth:`pooled` for smaller inputs).

    ``x_*`` are (n, 784) float32 pixel intensities in [0, 1] (row-major 28 x 28);
    ``y_*`` are (n,) int64 class labels in 0..9; ``source`` is where the files came from.
    ``codes_train`` is None or the (n, 784) uint8 pixel codes x_train was made from,
    ``x_train == float32(codes_train) / float32(codes_divisor)`` exactly: a quarter of the bytes, from which
    the trainer gathers its random batches (that gather is bound by memory reads, not arithmetic).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    codes_train: np.ndarray | None = None
    codes_divisor: float = _PIXEL_FULL_SCALE

    def pooled(self, factor: int) -> "Dataset":
        """The images average-pooled over ``factor`` × ``factor`` pixel blocks: (28/factor)² inputs per image (a
        factor of 7 gives 4 × 4 = 16 inputs, small enough for a rig of a few dozen lines). Factor 1: unchanged."""
        if factor == 1:
            return self
        side = IMAGE_SHAPE_PX[0]
        if factor < 1 or side % factor:
            raise ValueError(f"pool factor must divide {side} (1, 2, 4, 7, 14, 28), got {factor}")
        k = side // factor

        def pool(x: np.ndarray) -> np.ndarray:
            return x.reshape(-1, k, factor, k, factor).mean(axis=(2, 4), dtype=np.float32).reshape(-1, k * k)

        return Dataset(pool(self.x_train), self.y_train, pool(self.x_test), self.y_test,
                       f"{self.source} (pooled {factor}x{factor} to {k}x{k})")  # block means have no pixel codes

    @property
    def n_train(self) -> int:
        """Number of training examples."""
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test examples."""
        return int(self.x_test.shape[0])

    def __repr__(self) -> str:
        return f"Dataset(n_train={self.n_train}, n_test={self.n_test}, source={self.source!r})"


def _check_limit(limit: int | None, argument_name: str) -> None:
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)):
        raise TypeError(f"{argument_name} must be a positive int or None, got {limit!r}")
    if limit < 1:
        raise ValueError(f"{argument_name} must be a positive int or None, got {limit}")


def _locate_files(root: resources_abc.Traversable) -> dict[str, resources_abc.Traversable]:
    """Map each standard stem to the file found under ``root`` (plain name first, then ``.gz``)."""
    found: dict[str, resources_abc.Traversable] = {}
    missing: list[str] = []
    for stems in MNIST_FILE_STEMS.values():
        for stem in stems:
            candidates = [root.joinpath(stem), root.joinpath(stem + ".gz")]
            existing = next((candidate for candidate in candidates if candidate.is_file()), None)
            if existing is None:
                missing.append(stem)
            else:
                found[stem] = existing
    if missing:
        expected = ", ".join(stem + "[.gz]" for stems in MNIST_FILE_STEMS.values() for stem in stems)
        raise FileNotFoundError(
            f"{root}: missing MNIST-format file(s) {', '.join(missing)}; "
            f"the directory must hold all of: {expected}"
        )
    return found


def _read_split(
    images_file: resources_abc.Traversable,
    labels_file: resources_abc.Traversable,
    limit: int | None,
    limit_name: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read, validate and convert one split; return (x float32 (n, 784) in [0, 1], y int64 (n,), and the uint8
    pixel codes (n, 784) that x is code/255 of)."""
    images_source, labels_source = str(images_file), str(labels_file)
    images = parse_idx(images_file.read_bytes(), source=images_source)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE_PX:
        raise DatasetFormatError(
            f"{images_source}: expected uint8 images of shape (n, {IMAGE_SHAPE_PX[0]}, "
            f"{IMAGE_SHAPE_PX[1]}), got {images.dtype} of shape {images.shape}"
        )
    labels = parse_idx(labels_file.read_bytes(), source=labels_source)
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DatasetFormatError(
            f"{labels_source}: expected uint8 labels of shape (n,), "
            f"got {labels.dtype} of shape {labels.shape}"
        )
    out_of_range = np.flatnonzero(labels >= N_CLASSES)
    if out_of_range.size:
        first = int(out_of_range[0])
        raise DatasetFormatError(
            f"{labels_source}: {out_of_range.size} label(s) outside 0..{N_CLASSES - 1}, "
            f"first is {int(labels[first])} at index {first}"
        )
    n_items = images.shape[0]
    if labels.shape[0] != n_items:
        raise DatasetFormatError(
            f"count mismatch: {images_source} holds {n_items} images but "
            f"{labels_source} holds {labels.shape[0]} labels"
        )
    if limit is not None and limit > n_items:
        raise ValueError(f"{limit_name}={limit} exceeds the {n_items} items in {images_source}")

    n_kept = n_items if limit is None else limit
    codes = images[:n_kept].reshape(n_kept, N_PIXELS).copy()  # its own memory, not a view of the whole file
    x = codes.astype(np.float32)
    x /= np.float32(_PIXEL_FULL_SCALE)
    y = labels[:n_kept].astype(np.int64)
    return x, y, codes


def load_mnist(
    data_dir: str | Path | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> Dataset:
    """Load MNIST-format data (MNIST, Fashion-MNIST) as float32 pixels in [0, 1] and int64 labels.

    ``data_dir=None`` loads the bundled subset (10,000 training + 10,000 test digits) from
    the installed package. Otherwise ``data_dir`` must hold the four standard files
    (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``), each optionally gzip-compressed with a ``.gz`` suffix.
    ``limit_train`` / ``limit_test`` keep only the first n examples of each split.

    Raises FileNotFoundError for a missing directory or file, IDXFormatError for a corrupt
    file, DatasetFormatError for wrong shapes, labels outside 0..9 or count mismatches.
    """
    _check_limit(limit_train, "limit_train")
    _check_limit(limit_test, "limit_test")

    root: resources_abc.Traversable
    if data_dir is None:
        root = files(__package__).joinpath(_BUNDLED_DATA_DIR)
    else:
        root = Path(data_dir).expanduser().resolve()
        if not root.exists():
            raise FileNotFoundError(f"MNIST data directory {root} does not exist")
        if not root.is_dir():
            raise NotADirectoryError(f"MNIST data directory {root} is not a directory")

    found = _locate_files(root)
    train_images, train_labels = MNIST_FILE_STEMS["train"]
    test_images, test_labels = MNIST_FILE_STEMS["test"]
    x_train, y_train, codes_train = _read_split(found[train_images], found[train_labels], limit_train, "limit_train")
    x_test, y_test, _ = _read_split(found[test_images], found[test_labels], limit_test, "limit_test")
    return Dataset(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, source=str(root),
                   codes_train=codes_train)
