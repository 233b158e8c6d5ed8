"""Tests of lecopt.data: the IDX reader/writer, the embedded mnist-5k file, the IDX loader."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct
from importlib import resources
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from lecopt import data


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    """An IDX file written by hand from the format's description (independent of write_idx)."""
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


# ----------------------------------------------------------------------------- IDX format


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, suffix, dtype):
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    path = tmp_path / f"a-idx3{suffix}"
    data.write_idx(path, array)
    back = data.read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)
    back[0, 0, 0] = 1  # a fresh, writable array
    if suffix == ".gz":
        assert path.read_bytes()[:2] == b"\x1f\x8b"


def test_write_idx_matches_the_format_by_hand(tmp_path):
    labels = np.array([7, 2, 1, 0, 4], np.uint8)
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data.write_idx(tmp_path / "l", labels)
    data.write_idx(tmp_path / "i", images)
    # MNIST's magic numbers: 2049 for labels, 2051 for images.
    assert (tmp_path / "l").read_bytes() == struct.pack(">II", 2049, 5) + labels.tobytes()
    assert (tmp_path / "i").read_bytes() == _idx_bytes(images, 0x08)
    assert (tmp_path / "i").read_bytes()[:4] == struct.pack(">I", 2051)
    # Multi-byte types are big-endian on disk.
    data.write_idx(tmp_path / "s", np.array([1, -2], np.int16))
    assert (tmp_path / "s").read_bytes()[8:] == b"\x00\x01\xff\xfe"


def test_read_idx_reads_a_hand_written_gzip_file(tmp_path):
    array = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    (tmp_path / "x.gz").write_bytes(gzip.compress(_idx_bytes(array, 0x0D)))
    np.testing.assert_array_equal(data.read_idx(tmp_path / "x.gz"), array)
    # gzip is detected from the content: a gzipped file without the suffix reads as well.
    (tmp_path / "x").write_bytes(gzip.compress(_idx_bytes(array, 0x0D)))
    np.testing.assert_array_equal(data.read_idx(tmp_path / "x"), array)


def test_write_idx_rejects_bad_arrays(tmp_path):
    with pytest.raises(TypeError, match="dtype int64.*allowed"):
        data.write_idx(tmp_path / "x", np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="ndim=0"):
        data.write_idx(tmp_path / "x", np.uint8(3))


@pytest.fixture
def good_file(tmp_path):
    def make(gz: bool) -> tuple[Path, bytes]:
        raw = _idx_bytes(np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28), 0x08)
        return tmp_path / ("f.gz" if gz else "f"), raw

    return make


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda raw: raw[:-1], "truncated: shape"),
        (lambda raw: raw[:10], "truncated header"),
        (lambda raw: raw[:3], "truncated: 3 bytes"),
        (lambda raw: raw + b"\x00", "1 unexpected bytes"),
        (lambda raw: b"\x01" + raw[1:], "wrong magic number 0x01000803"),
        (lambda raw: raw[:2] + b"\x07" + raw[3:], "wrong magic number"),
        (lambda raw: raw[:3] + b"\x00" + raw[4:], "wrong magic number"),
        # A header claiming 3 images where 2 are stored.
        (lambda raw: raw[:4] + struct.pack(">I", 3) + raw[8:], "truncated: shape \\(3, 28, 28\\)"),
    ],
)
def test_read_idx_damage_raises_data_error(good_file, gz, damage, message):
    path, raw = good_file(gz)
    bad = damage(raw)
    path.write_bytes(gzip.compress(bad) if gz else bad)
    with pytest.raises(data.DataError, match=message) as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("cut", ["truncate", "flip"])
def test_read_idx_damaged_gzip_stream(good_file, cut):
    path, raw = good_file(True)
    packed = bytearray(gzip.compress(raw))
    if cut == "truncate":
        packed = packed[: len(packed) // 2]
    else:
        packed[len(packed) // 2] ^= 0xFF
    path.write_bytes(bytes(packed))
    with pytest.raises(data.DataError, match="damaged gzip stream") as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        data.read_idx(tmp_path / "nope")


# ----------------------------------------------------------------------------- mnist-5k


def test_mnist_5k_shape_dtype_range_and_stratified_split():
    ds = data.load("mnist-5k")
    assert ds.name == "mnist-5k" and ds.num_classes == 10
    chex.assert_shape([ds.x_train, ds.x_test], [(4000, 28, 28), (1000, 28, 28)])
    chex.assert_shape([ds.y_train, ds.y_test], [(4000,), (1000,)])
    chex.assert_type([ds.x_train, ds.x_test, ds.y_train, ds.y_test],
                     [np.float32, np.float32, np.int32, np.int32])
    for x in (ds.x_train, ds.x_test):
        assert x.min() == 0.0 and x.max() == 1.0
        # 8-bit pixels scaled by 1/255 exactly.
        np.testing.assert_array_equal(np.round(x * 255) / np.float32(255), x)
    np.testing.assert_array_equal(np.bincount(ds.y_train, minlength=10), np.full(10, 400))
    np.testing.assert_array_equal(np.bincount(ds.y_test, minlength=10), np.full(10, 100))
    # The split is shuffled, not sorted by class, and train and test share no image.
    assert np.any(np.diff(ds.y_train) < 0) and np.any(np.diff(ds.y_test) < 0)
    train = {x.tobytes() for x in (ds.x_train * 255).astype(np.uint8)}
    assert not any(x.tobytes() in train for x in (ds.x_test * 255).astype(np.uint8))
    assert "num_classes=10" in repr(ds)


def test_mnist_5k_is_fixed_and_looks_like_digits():
    a, b = data.load(), data.load()
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    # Digits are white strokes on black: most pixels are background, the centre has ink,
    # and each class's mean image differs from the others' (labels go with images).
    assert 0.7 < np.mean(a.x_train == 0) < 0.9
    assert a.x_train[:, 10:18, 10:18].mean() > 3 * a.x_train[:, :3, :].mean()
    means = np.stack([a.x_train[a.y_train == c].mean(0).ravel() for c in range(10)])
    test_means = np.stack([a.x_test[a.y_test == c].mean(0).ravel() for c in range(10)])
    # Nearest class mean (from train) classifies the class means of test correctly.
    dist = ((test_means[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    np.testing.assert_array_equal(dist.argmin(1), np.arange(10))


def test_mnist_5k_checksum_constant_matches_the_shipped_file():
    raw = (resources.files("lecopt") / "_data" / "mnist_5k.npz").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == data.MNIST_5K_SHA256
    assert (resources.files("lecopt") / "_data" / "README.md").is_file()


def test_mnist_5k_flipped_byte_is_caught(tmp_path, monkeypatch):
    src = resources.files("lecopt") / "_data" / "mnist_5k.npz"
    copy = tmp_path / "mnist_5k.npz"
    with resources.as_file(src) as path:
        shutil.copyfile(path, copy)
    monkeypatch.setattr(data, "_mnist_5k_file", lambda: copy)
    assert data.load().x_train.shape == (4000, 28, 28)  # the intact copy loads
    raw = bytearray(copy.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    copy.write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match="SHA-256 mismatch") as info:
        data.load("mnist-5k")
    assert str(copy) in str(info.value)


def test_mnist_5k_missing_file(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_mnist_5k_file", lambda: tmp_path / "gone.npz")
    with pytest.raises(FileNotFoundError, match="gone.npz"):
        data.load()


def test_to_device():
    ds = data.load().to_device(jax.devices("cpu")[0])
    assert isinstance(ds.x_train, jax.Array) and isinstance(ds.y_test, jax.Array)
    assert ds.x_train.dtype == np.float32 and ds.y_test.dtype == np.int32
    assert ds.name == "mnist-5k"


# ----------------------------------------------------------------------------- IDX datasets


def _write_set(folder: Path, n_train=6, n_test=4, gz=False, labels_max=9):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, labels_max + 1, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, labels_max + 1, n_test, dtype=np.uint8),
    }
    arrays["train-labels-idx1-ubyte"][0] = labels_max
    for name, a in arrays.items():
        raw = _idx_bytes(a, 0x08)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_dataset_from_data_dir(tmp_path, gz):
    arrays = _write_set(tmp_path, gz=gz)
    ds = data.load("mnist", data_dir=tmp_path)
    assert ds.name == "mnist"
    chex.assert_shape([ds.x_train, ds.x_test], [(6, 28, 28), (4, 28, 28)])
    chex.assert_type([ds.x_train, ds.y_train], [np.float32, np.int32])
    np.testing.assert_array_equal(ds.x_train, arrays["train-images-idx3-ubyte"] / np.float32(255))
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])


def test_load_from_env_and_named_subfolder(tmp_path, monkeypatch):
    arrays = _write_set(tmp_path / "fashion-mnist", gz=True)
    _write_set(tmp_path / "mnist", n_train=3)
    monkeypatch.setenv("LECOPT_DATA", str(tmp_path))
    ds = data.load("fashion-mnist")
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte"])
    assert data.load("mnist").x_train.shape == (3, 28, 28)


def test_missing_directory_error_lists_files_and_places(tmp_path, monkeypatch):
    monkeypatch.delenv("LECOPT_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="LECOPT_DATA") as info:
        data.load("mnist")
    for name in data.IDX_FILES:
        assert name in str(info.value)
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as info:
        data.load("mnist", data_dir=tmp_path)
    msg = str(info.value)
    for name in data.IDX_FILES:
        assert name in msg
    assert str(tmp_path / "mnist") in msg and "found: train-images-idx3-ubyte.gz" in msg
    assert f"{tmp_path} (exists; found: none of them)" in msg


def test_mismatched_counts_and_label_range(tmp_path):
    arrays = _write_set(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(
        _idx_bytes(arrays["train-labels-idx1-ubyte"][:5], 0x08)
    )
    with pytest.raises(data.DataError, match="6 images but .* 5 labels") as info:
        data.load("mnist", data_dir=tmp_path)
    assert "train-images-idx3-ubyte" in str(info.value)

    _write_set(tmp_path / "bad", labels_max=10)
    with pytest.raises(data.DataError, match="label 10 at index 0 is out of range") as info:
        data.load("mnist", data_dir=tmp_path / "bad")
    assert "train-labels-idx1-ubyte" in str(info.value)

    _write_set(tmp_path / "shape")
    (tmp_path / "shape" / "t10k-images-idx3-ubyte").write_bytes(
        _idx_bytes(np.zeros((4, 28, 27), np.uint8), 0x08)
    )
    with pytest.raises(data.DataError, match=r"shape \(N, 28, 28\)"):
        data.load("mnist", data_dir=tmp_path / "shape")


def test_bad_names():
    for bad in ["MNIST", "cifar10", "", None, 3]:
        with pytest.raises(ValueError, match="mnist-5k, mnist, fashion-mnist"):
            data.load(bad)
    with pytest.raises(TypeError, match="data_dir"):
        data.load("mnist", data_dir=3)
