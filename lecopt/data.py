"""Datasets for the lecture's experiments: an embedded MNIST subset and the standard IDX files.

``load("mnist-5k")`` needs nothing but lecopt: 5,000 real MNIST digits ship inside the package
(``lecopt/_data/mnist_5k.npz``, origin and license in ``lecopt/_data/README.md``) and their
SHA-256 is checked on every load. ``load("mnist")`` and ``load("fashion-mnist")`` read the four
standard IDX files from a folder you give; nothing is ever downloaded.

Every load returns a :class:`Dataset` of NumPy arrays: float32 images in [0, 1] shaped
(N, 28, 28) and int32 labels. Put it on an accelerator once with :meth:`Dataset.to_device`.

The IDX format (LeCun et al.): a 4-byte magic number ``0x00 0x00 <type> <ndim>``, then ``ndim``
big-endian uint32 dimension sizes, then the data in C order, big-endian. :func:`read_idx`
checks every part of it and raises :class:`DataError` instead of returning a partly read array.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import math
import os
import zlib
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = [
    "DATASETS",
    "IDX_FILES",
    "MNIST_5K_SHA256",
    "DataError",
    "Dataset",
    "load",
    "read_idx",
    "write_idx",
]

DATASETS: tuple[str, ...] = ("mnist-5k", "mnist", "fashion-mnist")
"""Names accepted by :func:`load`."""

MNIST_5K_SHA256 = "537e16e251f6c9f2cd2a7651869d81a79cb8ef5153fcb3aed8170452ac9ee65f"
"""SHA-256 of the embedded ``lecopt/_data/mnist_5k.npz``."""

IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
"""The four standard MNIST / Fashion-MNIST files; each may also be gzipped (``<name>.gz``)."""

_NUM_CLASSES = 10
_IMAGE_SHAPE = (28, 28)
_ENV_VAR = "LECOPT_DATA"

# IDX type byte -> element type (always stored big-endian).
_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES: dict[np.dtype, int] = {d.newbyteorder("="): c for c, d in _IDX_TYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


class DataError(ValueError):
    """A data file is damaged or does not hold what it should; the message names the file."""


Array = Any  # np.ndarray, or jax.Array after Dataset.to_device


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split of labelled images.

    Attributes:
      x_train: float32 images in [0, 1], shape (N_train, 28, 28).
      y_train: int32 labels in [0, num_classes), shape (N_train,).
      x_test: float32 images in [0, 1], shape (N_test, 28, 28).
      y_test: int32 labels, shape (N_test,).
      name: the name it was loaded by (one of :data:`DATASETS`).
      num_classes: number of classes (10 for all datasets here).
    """

    x_train: Array
    y_train: Array
    x_test: Array
    y_test: Array
    name: str
    num_classes: int = _NUM_CLASSES

    def to_device(self, device: Any = None) -> Dataset:
        """Returns the same dataset with its four arrays placed by ``jax.device_put``.

        Args:
          device: a ``jax.Device`` or ``Sharding``; None means JAX's default device.

        Returns:
          A new :class:`Dataset` holding ``jax.Array``s.
        """
        arrays = jax.device_put((self.x_train, self.y_train, self.x_test, self.y_test), device)
        return dataclasses.replace(
            self, x_train=arrays[0], y_train=arrays[1], x_test=arrays[2], y_test=arrays[3]
        )

    def __repr__(self) -> str:
        def show(a: Array) -> str:
            return f"{a.dtype}{list(a.shape)}"

        return (
            f"Dataset(name={self.name!r}, x_train={show(self.x_train)}, "
            f"y_train={show(self.y_train)}, x_test={show(self.x_test)}, "
            f"y_test={show(self.y_test)}, num_classes={self.num_classes})"
        )


# ----------------------------------------------------------------------------- IDX files


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic number."""
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        # A truncated gzip stream raises EOFError, a corrupted one BadGzipFile/zlib.error.
        raise DataError(f"{path}: damaged gzip stream ({e})") from None


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads one IDX file (plain or gzipped) into a NumPy array in native byte order.

    Checks the magic number (two zero bytes, a known type code, ndim >= 1), that the header is
    complete, and that the data has exactly the size the dimensions promise. Gzip is detected
    from the content, not the file name.

    Args:
      path: the file.

    Returns:
      A new, writable array of the stored type (uint8 for MNIST), shaped as the header says.

    Raises:
      FileNotFoundError: no such file.
      DataError: the file is truncated, has trailing bytes, a wrong magic number, or a damaged
        gzip stream; the message names the file and the problem.

    Example:
      >>> labels = read_idx("train-labels-idx1-ubyte.gz")  # doctest: +SKIP
    """
    path = Path(path)
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise DataError(f"{path}: truncated: {len(buf)} bytes, less than the 4-byte magic number")
    zero0, zero1, code, ndim = buf[0], buf[1], buf[2], buf[3]
    if zero0 != 0 or zero1 != 0 or code not in _IDX_TYPES or ndim == 0:
        raise DataError(
            f"{path}: wrong magic number 0x{buf[:4].hex()}; an IDX file starts with 0x0000TTNN "
            f"(TT a type code in {{{', '.join(f'0x{c:02x}' for c in _IDX_TYPES)}}}, NN >= 1 "
            "dimensions)"
        )
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(
            f"{path}: truncated header: {ndim} dimensions need {header} bytes, file has {len(buf)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_TYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    actual = len(buf) - header
    if actual < expected:
        raise DataError(
            f"{path}: truncated: shape {shape} of {dtype.newbyteorder('=')} needs {expected} data "
            f"bytes, file has {actual}"
        )
    if actual > expected:
        raise DataError(
            f"{path}: {actual - expected} unexpected bytes after the data of shape {shape} "
            "(corrupted header or concatenated files)"
        )
    data = np.frombuffer(buf, dtype=dtype, count=math.prod(shape), offset=header)
    return data.reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike[str], array: Any) -> None:
    """Writes ``array`` as an IDX file, gzipped when ``path`` ends in ``.gz``.

    Args:
      path: the file to create (overwritten if it exists).
      array: array-like with 1 to 255 dimensions, each < 2**32, of dtype uint8, int8, int16,
        int32, float32 or float64.

    Raises:
      TypeError: any other dtype.
      ValueError: a 0-d array, more than 255 dimensions, or a dimension >= 2**32.

    Example:
      >>> write_idx("labels-idx1-ubyte.gz", np.array([3, 1, 4], np.uint8))  # doctest: +SKIP
    """
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _IDX_CODES:
        allowed = ", ".join(str(d) for d in _IDX_CODES)
        raise TypeError(f"array: dtype {array.dtype} cannot be stored in IDX; allowed: {allowed}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"array: ndim={array.ndim}; IDX stores 1 to 255 dimensions")
    if any(d >= 2**32 for d in array.shape):
        raise ValueError(f"array: shape {array.shape} has a dimension >= 2**32")
    header = (
        bytes([0, 0, _IDX_CODES[native], array.ndim])
        + np.asarray(array.shape, dtype=">u4").tobytes()
    )
    payload = header + np.ascontiguousarray(array, dtype=native.newbyteorder(">")).tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        # mtime=0 keeps the bytes reproducible.
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)


# ----------------------------------------------------------------------------- loading


def _images_to_float(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32) / np.float32(255.0)).astype(np.float32)


def _check_split(
    x: np.ndarray, y: np.ndarray, x_name: str, y_name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Validates one (images, labels) pair of uint8 arrays and converts them."""
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != _IMAGE_SHAPE:
        raise DataError(
            f"{x_name}: expected uint8 images of shape (N, 28, 28), got {x.dtype} {x.shape}"
        )
    if y.dtype != np.uint8 or y.ndim != 1:
        raise DataError(f"{y_name}: expected uint8 labels of shape (N,), got {y.dtype} {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise DataError(
            f"{x_name} holds {x.shape[0]} images but {y_name} holds {y.shape[0]} labels"
        )
    if y.size and int(y.max()) >= _NUM_CLASSES:
        bad = int(np.flatnonzero(y >= _NUM_CLASSES)[0])
        raise DataError(
            f"{y_name}: label {int(y[bad])} at index {bad} is out of range; labels must be in "
            f"[0, {_NUM_CLASSES - 1}]"
        )
    return _images_to_float(x), y.astype(np.int32)


def _mnist_5k_file() -> Traversable:
    """The embedded archive (a function, so tests can point it at a damaged copy)."""
    return resources.files("lecopt") / "_data" / "mnist_5k.npz"


def _load_mnist_5k() -> Dataset:
    resource = _mnist_5k_file()
    try:
        raw = resource.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the embedded mnist-5k file is missing: {resource}; the lecopt installation is "
            "incomplete (package data not installed); reinstall lecopt"
        ) from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MNIST_5K_SHA256:
        raise DataError(
            f"{resource}: SHA-256 mismatch (expected {MNIST_5K_SHA256}, got {digest}); the "
            "embedded mnist-5k file is corrupted; reinstall lecopt"
        )
    with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    x_train, y_train = _check_split(
        arrays["x_train"], arrays["y_train"], f"{resource}[x_train]", f"{resource}[y_train]"
    )
    x_test, y_test = _check_split(
        arrays["x_test"], arrays["y_test"], f"{resource}[x_test]", f"{resource}[y_test]"
    )
    return Dataset(x_train, y_train, x_test, y_test, name="mnist-5k")


def _find_idx_files(name: str, data_dir: str | os.PathLike[str] | None) -> list[Path]:
    """The paths of the four IDX files of ``name``, or FileNotFoundError listing the search."""
    if data_dir is None:
        data_dir = os.environ.get(_ENV_VAR) or None
    wanted = ", ".join(f"{f}[.gz]" for f in IDX_FILES)
    if data_dir is None:
        raise FileNotFoundError(
            f"load({name!r}) reads the files {wanted} from a folder, and nothing is downloaded: "
            f"pass data_dir=... or set ${_ENV_VAR} (the files may also sit in a subfolder "
            f"named {name!r})"
        )
    root = Path(data_dir).expanduser()
    candidates = list(dict.fromkeys([root / name, root / name.replace("-", "_"), root]))
    searched = []
    for folder in candidates:
        found: list[Path] = []
        for stem in IDX_FILES:
            for path in (folder / stem, folder / f"{stem}.gz"):
                if path.is_file():
                    found.append(path)
                    break
        if len(found) == len(IDX_FILES):
            return found
        have = ", ".join(p.name for p in found) or "none of them"
        searched.append(f"  {folder} ({'exists' if folder.is_dir() else 'missing'}; found: {have})")
    raise FileNotFoundError(
        f"load({name!r}): the files {wanted} were not all found in one folder. Searched:\n"
        + "\n".join(searched)
    )


def _load_idx_dataset(name: str, data_dir: str | os.PathLike[str] | None) -> Dataset:
    train_x, train_y, test_x, test_y = _find_idx_files(name, data_dir)
    x_train, y_train = _check_split(
        read_idx(train_x), read_idx(train_y), str(train_x), str(train_y)
    )
    x_test, y_test = _check_split(read_idx(test_x), read_idx(test_y), str(test_x), str(test_y))
    return Dataset(x_train, y_train, x_test, y_test, name=name)


def load(name: str = "mnist-5k", data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Loads a dataset as NumPy arrays: float32 images in [0, 1] of shape (N, 28, 28), int32 labels.

    - ``"mnist-5k"`` (default): 5,000 real MNIST digits embedded in lecopt, a fixed stratified
      split of 4,000 training (400 per class) and 1,000 test images (100 per class); the file's
      SHA-256 is checked. ``data_dir`` is ignored.
    - ``"mnist"``, ``"fashion-mnist"``: the standard files ``train-images-idx3-ubyte``,
      ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``
      (each plain or ``.gz``) from ``data_dir``, else from ``$LECOPT_DATA``; looked for first in
      the subfolder ``<dir>/<name>`` (or ``<dir>/fashion_mnist``), then in ``<dir>`` itself.
      Nothing is downloaded.

    Args:
      name: one of :data:`DATASETS`.
      data_dir: folder holding the IDX files (for ``"mnist"`` / ``"fashion-mnist"``).

    Returns:
      A :class:`Dataset`.

    Raises:
      ValueError: unknown ``name`` (the message lists the allowed names).
      FileNotFoundError: a needed file is missing; the message lists the files and folders.
      DataError: a file is damaged or inconsistent (a ``ValueError`` subclass).

    Example:
      >>> ds = load("mnist-5k")
      >>> ds.x_train.shape, ds.y_test.shape
      ((4000, 28, 28), (1000,))
      >>> ds = ds.to_device()  # once, before training
    """
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"name={name!r} is not a known dataset; allowed: {', '.join(DATASETS)}")
    if data_dir is not None and not isinstance(data_dir, str | os.PathLike):
        raise TypeError(f"data_dir={data_dir!r} must be a path (str or os.PathLike) or None")
    if name == "mnist-5k":
        return _load_mnist_5k()
    return _load_idx_dataset(name, data_dir)
