"""Tests for crossbar_ctl.datasets: IDX reading/writing, corrupt-file errors, MNIST loading."""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import re
import subprocess
import sys
import tomllib
import zipfile
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from crossbar_ctl.datasets import (
    BUNDLED_ATTRIBUTION,
    Dataset,
    DatasetFormatError,
    IDXFormatError,
    load_dataset,
    load_mnist,
    read_idx,
    write_idx,
)

STANDARD_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# Official MNIST test-set class counts (all 10,000 test digits are bundled).
OFFICIAL_TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ---------------------------------------------------------------- bundled subset


@pytest.fixture(scope="module")
def bundled() -> Dataset:
    return load_dataset("mnist")


def test_bundled_shapes_dtypes_and_range(bundled: Dataset) -> None:
    assert bundled.x_train.shape == (10_000, 784)
    assert bundled.y_train.shape == (10_000,)
    assert bundled.x_test.shape == (10_000, 784)
    assert bundled.y_test.shape == (10_000,)
    for x in (bundled.x_train, bundled.x_test):
        assert x.dtype == np.float32
        assert x.min() == 0.0 and x.max() == 1.0
    for y in (bundled.y_train, bundled.y_test):
        assert y.dtype == np.int64
    assert bundled.n_train == 10_000 and bundled.n_test == 10_000


def test_bundled_pixels_are_exact_multiples_of_one_255th(bundled: Dataset) -> None:
    levels = bundled.x_train[:100] * 255
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)


def test_bundled_labels_match_official_mnist(bundled: Dataset) -> None:
    assert bundled.y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert bundled.y_test[:5].tolist() == [7, 2, 1, 0, 4]
    train_counts = np.bincount(bundled.y_train, minlength=10)
    assert train_counts.size == 10 and (train_counts > 800).all()
    assert np.bincount(bundled.y_test, minlength=10).tolist() == OFFICIAL_TEST_CLASS_COUNTS


def test_bundled_files_match_readme_checksums() -> None:
    data_dir = files("crossbar_ctl.datasets").joinpath("data")
    readme = data_dir.joinpath("README.md").read_text(encoding="utf-8")
    listed = dict((name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})\s+(\S+)$", readme, re.M))
    assert sorted(listed) == sorted(name + ".gz" for name in STANDARD_NAMES)
    for name, digest in listed.items():
        assert hashlib.sha256(data_dir.joinpath(name).read_bytes()).hexdigest() == digest, name


def test_bundled_source_and_attribution(bundled: Dataset) -> None:
    assert bundled.source.replace("\\", "/").endswith("crossbar_ctl/datasets/data")
    for phrase in ("LeCun", "Cortes", "Burges", "CC BY-SA 3.0", "10,000"):
        assert phrase in BUNDLED_ATTRIBUTION


def test_limits_take_the_first_examples(bundled: Dataset) -> None:
    small = load_dataset("mnist", limit_train=50, limit_test=20)
    assert small.x_train.shape == (50, 784) and small.y_test.shape == (20,)
    np.testing.assert_array_equal(small.x_train, bundled.x_train[:50])
    np.testing.assert_array_equal(small.y_test, bundled.y_test[:20])


@pytest.mark.parametrize("limit", [0, -3])
def test_non_positive_limit_is_rejected(limit: int) -> None:
    with pytest.raises(ValueError, match="limit_train"):
        load_dataset(limit_train=limit)


def test_limit_beyond_available_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"limit_test=20000 exceeds the 10000"):
        load_dataset(limit_test=20_000)


def test_unknown_dataset_name_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'.*mnist"):
        load_dataset("cifar10")


def test_fashion_mnist_needs_data_dir() -> None:
    with pytest.raises(ValueError, match="data_dir"):
        load_dataset("fashion-mnist")


def test_package_data_config_ships_every_bundled_file() -> None:
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("not running from a source checkout")
    package_data = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]
    patterns = package_data["crossbar_ctl.datasets"]
    data_dir = files("crossbar_ctl.datasets").joinpath("data")
    for entry in data_dir.iterdir():
        assert any(fnmatch.fnmatch("data/" + entry.name, pattern) for pattern in patterns), entry.name


def test_bundled_data_loads_from_a_zipped_package(tmp_path: Path) -> None:
    """The loader uses importlib.resources only, so it also works when not on a plain filesystem."""
    package_dir = Path(files("crossbar_ctl.datasets").joinpath("__init__.py")).parent
    archive = tmp_path / "crossbar_ctl_datasets.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("crossbar_ctl/__init__.py", "")
        for module in ("__init__.py", "idx.py", "mnist.py"):
            zipped.write(package_dir / module, f"crossbar_ctl/datasets/{module}")
        for data_file in (package_dir / "data").iterdir():
            zipped.write(data_file, f"crossbar_ctl/datasets/data/{data_file.name}")
    script = (
        f"import sys; sys.path.insert(0, {str(archive)!r})\n"
        "from crossbar_ctl.datasets import load_dataset\n"
        "d = load_dataset(limit_train=5, limit_test=5)\n"
        "print(d.source); print(d.y_train.tolist(), d.x_train.shape)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    source, labels = result.stdout.splitlines()
    assert archive.name in source
    assert labels == "[5, 0, 4, 1, 9] (5, 784)"


# ---------------------------------------------------------------- IDX reader / writer


@pytest.mark.parametrize("file_name", ["seven-images-idx3-ubyte", "seven-images-idx3-ubyte.gz"])
def test_item_count_comes_from_the_header(tmp_path: Path, file_name: str) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / file_name, images)
    loaded = read_idx(path)
    assert loaded.shape == (7, 28, 28) and loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, images)
    assert loaded.flags.writeable


def test_written_header_is_big_endian_idx(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "small-idx2-int16", np.array([[1, -2, 3], [256, 5, 6]], dtype=np.int16))
    raw = path.read_bytes()
    assert raw[:12] == bytes([0, 0, 0x0B, 2, 0, 0, 0, 2, 0, 0, 0, 3])
    assert raw[12:16] == b"\x00\x01\xff\xfe"
    assert len(raw) == 12 + 6 * 2


def test_gz_output_is_gzip(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "labels-idx1-ubyte.gz", np.arange(10, dtype=np.uint8))
    assert gzip.decompress(path.read_bytes())[:4] == bytes([0, 0, 0x08, 1])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_round_trip_every_type_code(tmp_path: Path, dtype: type) -> None:
    values = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    loaded = read_idx(write_idx(tmp_path / "values.idx", values))
    assert loaded.dtype == np.dtype(dtype) and loaded.dtype.isnative
    np.testing.assert_array_equal(loaded, values)


def test_write_rejects_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="int64"):
        write_idx(tmp_path / "x.idx", np.zeros(3, dtype=np.int64))


def _valid_idx_bytes() -> bytes:
    # 3 images of 2 x 2 uint8 pixels.
    return bytes([0, 0, 0x08, 3, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 2]) + bytes(range(12))


CORRUPT_CASES = {
    # case: (file name, file bytes, phrase expected in the message)
    "truncated payload": (
        "cut-idx3-ubyte",
        _valid_idx_bytes()[:-5],
        "expected 12 bytes for shape (3, 2, 2) of uint8, found 7",
    ),
    "truncated header": ("short-idx3-ubyte", _valid_idx_bytes()[:10], "truncated header"),
    "bad magic": ("magic-idx3-ubyte", b"\x01\x02" + _valid_idx_bytes()[2:], "bad magic"),
    "unknown type code": ("type-idx3-ubyte", b"\x00\x00\x07" + _valid_idx_bytes()[3:], "type code 0x07"),
    "trailing bytes": ("long-idx3-ubyte", _valid_idx_bytes() + b"\x00\x00", "2 trailing bytes"),
    "empty file": ("empty-idx3-ubyte", b"", "empty file"),
    "too short for magic": ("tiny-idx3-ubyte", b"\x00\x00", "too short"),
    "zero dimensions": ("scalar-idx3-ubyte", b"\x00\x00\x08\x00", "0 dimensions"),
    "garbage named .gz": ("garbage-idx3-ubyte.gz", b"this is not gzip at all", "not gzip"),
    "empty .gz": ("empty-idx3-ubyte.gz", b"", "empty file"),
    "truncated .gz": ("cut-idx3-ubyte.gz", gzip.compress(_valid_idx_bytes(), mtime=0)[:-12], "gzip stream"),
    "gzip of nothing": ("nothing-idx3-ubyte.gz", gzip.compress(b"", mtime=0), "0 bytes"),
    "gzip data without .gz name": ("packed-idx3-ubyte", gzip.compress(_valid_idx_bytes()), "should end in .gz"),
    "corrupt payload inside .gz": (
        "inner-idx3-ubyte.gz",
        gzip.compress(_valid_idx_bytes()[:-1], mtime=0),
        "expected 12 bytes for shape (3, 2, 2) of uint8, found 11",
    ),
}


@pytest.mark.parametrize("case", sorted(CORRUPT_CASES))
def test_corrupt_file_raises_idx_format_error_naming_the_file(tmp_path: Path, case: str) -> None:
    file_name, content, phrase = CORRUPT_CASES[case]
    path = tmp_path / file_name
    path.write_bytes(content)
    with pytest.raises(IDXFormatError) as caught:
        read_idx(path)
    message = str(caught.value)
    assert file_name in message
    assert phrase in message
    assert isinstance(caught.value, ValueError)


# ---------------------------------------------------------------- loading from a directory


def _write_mnist_dir(
    directory: Path,
    n_train: int = 7,
    n_test: int = 3,
    compress: tuple[bool, bool, bool, bool] = (True, False, False, True),
) -> dict[str, np.ndarray]:
    """Write the four standard files of a tiny synthetic MNIST-format set; return the arrays."""
    rng = np.random.default_rng(1)
    arrays = {
        STANDARD_NAMES[0]: rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        STANDARD_NAMES[1]: rng.integers(0, 10, size=n_train, dtype=np.uint8),
        STANDARD_NAMES[2]: rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        STANDARD_NAMES[3]: rng.integers(0, 10, size=n_test, dtype=np.uint8),
    }
    for (name, array), gz in zip(arrays.items(), compress):
        write_idx(directory / (name + (".gz" if gz else "")), array)
    return arrays


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "MNIST"])
def test_data_dir_round_trip(tmp_path: Path, name: str) -> None:
    arrays = _write_mnist_dir(tmp_path)
    dataset = load_dataset(name, data_dir=tmp_path)
    assert dataset.source == str(tmp_path.resolve())
    assert dataset.x_train.shape == (7, 784) and dataset.x_test.shape == (3, 784)
    np.testing.assert_allclose(dataset.x_train, arrays[STANDARD_NAMES[0]].reshape(7, 784) / 255, rtol=1e-6)
    np.testing.assert_array_equal(dataset.y_train, arrays[STANDARD_NAMES[1]])
    np.testing.assert_allclose(dataset.x_test, arrays[STANDARD_NAMES[2]].reshape(3, 784) / 255, rtol=1e-6)
    np.testing.assert_array_equal(dataset.y_test, arrays[STANDARD_NAMES[3]])
    assert dataset.y_test.dtype == np.int64 and dataset.x_test.dtype == np.float32


def test_data_dir_accepts_str_and_limits(tmp_path: Path) -> None:
    _write_mnist_dir(tmp_path)
    dataset = load_mnist(str(tmp_path), limit_train=4, limit_test=2)
    assert dataset.n_train == 4 and dataset.n_test == 2


def test_missing_file_lists_expected_names(tmp_path: Path) -> None:
    _write_mnist_dir(tmp_path, compress=(False, False, False, False))
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError) as caught:
        load_dataset(data_dir=tmp_path)
    message = str(caught.value)
    assert str(tmp_path.resolve()) in message
    assert "missing MNIST-format file(s) t10k-labels-idx1-ubyte;" in message
    for name in STANDARD_NAMES:
        assert name in message


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_dataset(data_dir=tmp_path / "does-not-exist")


def test_image_label_count_mismatch_names_both_files(tmp_path: Path) -> None:
    _write_mnist_dir(tmp_path, compress=(False, False, False, False))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(6, dtype=np.uint8))
    with pytest.raises(DatasetFormatError, match=r"7 images.*train-labels-idx1-ubyte holds 6 labels"):
        load_dataset(data_dir=tmp_path)


def test_label_outside_0_to_9_names_the_file(tmp_path: Path) -> None:
    _write_mnist_dir(tmp_path, compress=(False, False, False, False))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([3, 10, 2], dtype=np.uint8))
    expected = r"t10k-labels-idx1-ubyte: 1 label\(s\) outside 0..9, first is 10 at index 1"
    with pytest.raises(DatasetFormatError, match=expected):
        load_dataset(data_dir=tmp_path)


@pytest.mark.parametrize(
    "bad_images",
    [
        np.zeros((7, 28, 27), dtype=np.uint8),
        np.zeros((7, 784), dtype=np.uint8),
        np.zeros((7, 28, 28), dtype=np.float32),
    ],
    ids=["28x27", "flat", "float32"],
)
def test_wrong_image_format_names_the_file(tmp_path: Path, bad_images: np.ndarray) -> None:
    _write_mnist_dir(tmp_path, compress=(False, False, False, False))
    write_idx(tmp_path / "train-images-idx3-ubyte", bad_images)
    expected = r"train-images-idx3-ubyte: expected uint8 images of shape \(n, 28, 28\)"
    with pytest.raises(DatasetFormatError, match=expected):
        load_dataset(data_dir=tmp_path)


def test_corrupt_file_in_data_dir_surfaces_idx_error(tmp_path: Path) -> None:
    _write_mnist_dir(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(IDXFormatError, match=r"train-images-idx3-ubyte\.gz: name ends in \.gz but"):
        load_dataset(data_dir=tmp_path)


def test_pooled_images_are_block_means(bundled: Dataset) -> None:
    from crossbar_ctl.datasets import load_dataset

    small = load_dataset(limit_train=5, limit_test=3, pool_px=7)
    assert small.x_train.shape == (5, 16) and small.x_test.shape == (3, 16) and small.x_train.dtype == np.float32
    img = bundled.x_train[2].reshape(28, 28)
    np.testing.assert_allclose(small.x_train[2].reshape(4, 4)[1, 3], img[7:14, 21:28].mean(), rtol=1e-6)
    np.testing.assert_array_equal(small.y_train, bundled.y_train[:5])
    with pytest.raises(ValueError, match="pool factor must divide 28"):
        bundled.pooled(5)


def test_pixel_codes_reproduce_the_pixels_exactly(bundled: Dataset, tmp_path: Path) -> None:
    codes = bundled.codes_train
    assert codes is not None and codes.dtype == np.uint8 and codes.shape == bundled.x_train.shape
    np.testing.assert_array_equal(codes.astype(np.float32) / np.float32(bundled.codes_divisor), bundled.x_train)
    limited = load_dataset(limit_train=5, limit_test=3)
    np.testing.assert_array_equal(limited.codes_train, codes[:5])
    assert limited.codes_train.base is None  # a copy of the kept images, not a view of the whole file
    assert load_dataset(limit_train=5, limit_test=3, pool_px=7).codes_train is None  # block means: no codes
