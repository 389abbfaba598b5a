"""Offline-first data set loaders returning dense numpy arrays.

Every loader returns a :class:`Dataset` of host numpy arrays, ready to be put
on device once and indexed inside a jitted step:

* images are NHWC ``float32``, scaled to ``[0, 1]`` and then standardised per
  channel with the mean and standard deviation of the full training split;
* LIBSVM features are dense ``float32`` exactly as read (no scaling);
* labels are ``int32`` in ``[0, num_classes)``.

Sources, by name (see :func:`load_dataset`):

``"digits"``
    scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download):
    the offline default.
``"mnist"``, ``"fashion_mnist"``
    The four IDX files (optionally gzipped) in ``data_dir``; through TFDS when
    ``data_dir`` is None.
``"cifar10"``
    The binary version's ``data_batch_{1..5}.bin`` and ``test_batch.bin``
    (optionally gzipped) in ``data_dir``; through TFDS when ``data_dir`` is None.
``"a9a"``, ``"w8a"``, ``"phishing"``, ``"libsvm:<filename>"``
    LIBSVM sparse text files in ``data_dir`` (required).
any other TFDS name
    An image-classification data set from TensorFlow Datasets.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import os
import socket
import urllib.parse
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from jaxrobust.core import registry

__all__ = ["BUILTIN_DATASETS", "LIBSVM_DATASETS", "TFDS_MODULES", "Dataset", "load_dataset"]

#: Modules TensorFlow Datasets imports when it prepares (downloads and builds) a
#: data set but declares only for Python < 3.9 (``importlib_resources``, imported
#: by ``tfds.core.dataset_builder`` for a builder's checksums): jaxrobust
#: depends on them, and :func:`load_dataset` names a missing one before TFDS runs.
TFDS_MODULES: tuple[str, ...] = ("importlib_resources",)

#: Known LIBSVM data sets and their number of features (1-based indices).
LIBSVM_DATASETS: dict[str, int] = {"a9a": 123, "w8a": 300, "phishing": 68}

#: The registered loaders: ``loader(data_dir, *, test_fraction, seed) -> Dataset``.
DATASETS = registry("dataset")

#: Names :func:`load_dataset` knows without TFDS (``libsvm:<filename>`` too).
BUILTIN_DATASETS: tuple[str, ...] = (
    "digits",
    "mnist",
    "fashion_mnist",
    "cifar10",
    *LIBSVM_DATASETS,
)

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST = "test_batch.bin"
_CIFAR_RECORD = 1 + 3 * 32 * 32


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A classification data set held as host numpy arrays.

    Attributes
    ----------
    name : str
        The name it was loaded under.
    x_train, x_test : np.ndarray
        ``float32`` inputs with a leading example axis: NHWC images or dense
        feature vectors.
    y_train, y_test : np.ndarray
        ``int32`` labels in ``[0, num_classes)``.
    num_classes : int
        Number of classes.
    x_validation, y_validation : np.ndarray or None
        A validation split held out of the training set by
        :func:`with_validation` (for selecting hyperparameters), or ``None``.

    Examples
    --------
    >>> import numpy as np
    >>> ds = Dataset("toy", np.zeros((4, 3), np.float32), np.array([0, 1, 0, 1], np.int32),
    ...              np.zeros((2, 3), np.float32), np.array([0, 1], np.int32), num_classes=2)
    >>> ds
    Dataset(name='toy', train=4, test=2, input_shape=(3,), num_classes=2)
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    x_validation: np.ndarray | None = None
    y_validation: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(28, 28, 1)`` or ``(123,)``.

        Examples
        --------
        >>> load_dataset("digits").input_shape
        (8, 8, 1)
        """
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={len(self.x_train)}, test={len(self.x_test)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )


def with_validation(dataset: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """Hold out a seeded, label-stratified ``fraction`` of the training set for validation.

    Parameters
    ----------
    dataset : Dataset
        The data set; its test split is kept as is.
    fraction : float
        Fraction of each class's training examples moved to the validation
        split (rounded per class), in ``(0, 1)``.
    seed : int
        Seed of the split.

    Returns
    -------
    Dataset
        A copy with fewer training examples and ``x_validation`` /
        ``y_validation`` set.

    Raises
    ------
    ValueError
        ``fraction`` not in ``(0, 1)``, or a split that would be empty.

    Examples
    --------
    >>> ds = with_validation(load_dataset("digits"), 0.2)
    >>> len(ds.y_train), len(ds.y_validation), len(ds.y_test)
    (1294, 324, 179)
    >>> with_validation(ds, 1.0)
    Traceback (most recent call last):
    ...
    ValueError: validation needs 0 < fraction < 1, got fraction=1.0
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation needs 0 < fraction < 1, got fraction={fraction}")
    train_idx, val_idx = _holdout(dataset.y_train, fraction, seed)
    return dataclasses.replace(
        dataset,
        x_train=dataset.x_train[train_idx],
        y_train=dataset.y_train[train_idx],
        x_validation=dataset.x_train[val_idx],
        y_validation=dataset.y_train[val_idx],
    )


def load_dataset(
    name: str,
    data_dir: str | None = None,
    *,
    test_fraction: float = 0.1,
    seed: int = 0,
    max_train: int | None = None,
    max_test: int | None = None,
) -> Dataset:
    """Load a classification data set as dense numpy arrays.

    Parameters
    ----------
    name : str
        ``"digits"`` (scikit-learn's bundled 8x8 digits, offline, shape
        ``(8, 8, 1)``), ``"mnist"`` / ``"fashion_mnist"`` (IDX files
        ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally
        ``.gz``), ``"cifar10"`` (binary batches ``data_batch_1.bin`` ...
        ``data_batch_5.bin`` and ``test_batch.bin``, each optionally ``.gz``),
        ``"a9a"``, ``"w8a"``, ``"phishing"`` or ``"libsvm:<filename>"`` (LIBSVM
        text ``<name>`` or ``<name>.gz``, with ``<name>.t`` or ``<name>.t.gz``
        as the test split), or, with ``data_dir=None``, any TFDS
        image-classification name.
    data_dir : str, optional
        Folder holding the files. When None, ``"mnist"``, ``"fashion_mnist"``,
        ``"cifar10"`` and other non-built-in names are loaded through TFDS (which
        may download); the LIBSVM names then raise. For a name that is neither
        built in nor LIBSVM, ``data_dir`` is passed to TFDS as its data folder.
        Ignored for ``"digits"``.
    test_fraction : float
        Fraction of the training data held out as the test split when the
        source has none: ``"digits"`` always; ``"cifar10"`` when
        ``test_batch.bin(.gz)`` is missing (e.g. a folder with only the first
        1,000 test images as ``test_batch_first1000.bin.gz``: that file is not
        used); LIBSVM without a ``.t`` file; TFDS data sets without a ``test``
        split. The hold-out is stratified by label and reproducible from
        ``seed``. Must be in ``(0, 1)``.
    seed : int
        Seed of the hold-out split and of the ``max_train`` / ``max_test``
        subsampling.
    max_train, max_test : int, optional
        Keep only this many training / test examples: the first after a seeded
        shuffle (for quick runs). The image standardisation statistics are
        always those of the full training split, so a subsampled run sees the
        same inputs as a full one.

    Returns
    -------
    Dataset
        Images NHWC ``float32``, scaled to ``[0, 1]`` then standardised per
        channel with the training split's mean and standard deviation (a
        channel with zero deviation is only centred); LIBSVM features dense
        ``float32`` as read; labels ``int32``.

    Raises
    ------
    FileNotFoundError
        A file is missing from ``data_dir``: the message names it and lists the
        expected layout.
    ValueError
        ``test_fraction`` not in ``(0, 1)``; ``max_train`` or ``max_test``
        below 1; a LIBSVM name without ``data_dir``; a hold-out that would
        leave a split empty; malformed files (bad IDX magic number or size,
        images and labels of different counts, a CIFAR file whose size is not
        a multiple of the 3,073-byte record); a name neither built in nor
        known to TFDS (the message lists the built-in names); or a TFDS data
        set without a class-label feature.

    Examples
    --------
    >>> ds = load_dataset("digits")
    >>> ds.input_shape, ds.num_classes, ds.x_train.dtype, ds.y_train.dtype
    ((8, 8, 1), 10, dtype('float32'), dtype('int32'))
    >>> len(ds.y_train), len(ds.y_test)
    (1618, 179)
    >>> load_dataset("digits", max_train=100, max_test=50)
    Dataset(name='digits', train=100, test=50, input_shape=(8, 8, 1), num_classes=10)
    >>> load_dataset("digits", test_fraction=0.0)
    Traceback (most recent call last):
    ...
    ValueError: test_fraction must be in (0, 1), got test_fraction=0.0
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got test_fraction={test_fraction}")
    for arg, value in (("max_train", max_train), ("max_test", max_test)):
        if value is not None and value < 1:
            raise ValueError(f"{arg} must be >= 1 or None, got {arg}={value}")

    key = name.lower()
    if key.startswith("libsvm:"):
        ds = _libsvm_loader(name)(data_dir, test_fraction=test_fraction, seed=seed)
    elif key in DATASETS:
        ds = DATASETS[key](data_dir, test_fraction=test_fraction, seed=seed)
    else:
        ds = _load_tfds(name, data_dir, test_fraction, seed)
    return _subsample(ds, max_train, max_test, seed)


# ----------------------------------------------------------------------------- helpers


def _find(data_dir: str, stem: str) -> str | None:
    """``data_dir/stem`` or ``data_dir/stem.gz``, whichever exists, else None."""
    for candidate in (stem, stem + ".gz"):
        path = os.path.join(data_dir, candidate)
        if os.path.isfile(path):
            return path
    return None


def _require(data_dir: str, stem: str, dataset: str, layout: tuple[str, ...]) -> str:
    path = _find(data_dir, stem)
    if path is None:
        listing = "\n".join(f"    {f}[.gz]" for f in layout)
        raise FileNotFoundError(
            f"{dataset}: missing file {stem!r} (or {stem + '.gz'!r}) in {data_dir!r}. "
            f"Expected layout:\n  {data_dir}/\n{listing}"
        )
    return path


def _read_bytes(path: str) -> bytes:
    """A file's bytes, gunzipped if it ends in ``.gz``; a damaged gzip file is named."""
    opener: Callable = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            return fh.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise ValueError(
            f"{path} is damaged: {err} (a truncated or corrupt gzip file, e.g. an "
            "interrupted download); download it again"
        ) from None


def _standardise(
    images_train: np.ndarray, images_test: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Scale to [0, 1] by ``1 / scale``, then standardise per channel (last axis)."""
    x_train = images_train.astype(np.float32) / np.float32(scale)
    x_test = images_test.astype(np.float32) / np.float32(scale)
    axes = tuple(range(x_train.ndim - 1))
    mean = x_train.mean(axis=axes, dtype=np.float64)
    std = x_train.std(axis=axes, dtype=np.float64)
    std = np.where(std > 0, std, 1.0)
    mean, std = mean.astype(np.float32), std.astype(np.float32)
    return (x_train - mean) / std, (x_test - mean) / std


def _holdout(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: (train indices, test indices), each sorted."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.append(idx[: int(round(test_fraction * len(idx)))])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
    mask = np.ones(len(labels), bool)
    mask[test_idx] = False
    if not mask.any() or not len(test_idx):
        raise ValueError(
            f"cannot hold out test_fraction={test_fraction} of {len(labels)} examples: "
            "one of the splits would be empty"
        )
    return np.flatnonzero(mask), test_idx


def _subsample(ds: Dataset, max_train: int | None, max_test: int | None, seed: int) -> Dataset:
    """Keep the first ``max_*`` examples of each split after a seeded shuffle."""
    if max_train is None and max_test is None:
        return ds
    rng_train, rng_test = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    changes = {}
    if max_train is not None and max_train < len(ds.y_train):
        keep = rng_train.permutation(len(ds.y_train))[:max_train]
        changes.update(x_train=ds.x_train[keep], y_train=ds.y_train[keep])
    if max_test is not None and max_test < len(ds.y_test):
        keep = rng_test.permutation(len(ds.y_test))[:max_test]
        changes.update(x_test=ds.x_test[keep], y_test=ds.y_test[keep])
    return dataclasses.replace(ds, **changes)


def _images(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    scale: float,
) -> Dataset:
    if x_train.ndim == 3:  # (N, H, W) -> (N, H, W, 1)
        x_train, x_test = x_train[..., None], x_test[..., None]
    x_train, x_test = _standardise(x_train, x_test, scale)
    return Dataset(
        name=name,
        x_train=np.ascontiguousarray(x_train),
        y_train=np.asarray(y_train, np.int32),
        x_test=np.ascontiguousarray(x_test),
        y_test=np.asarray(y_test, np.int32),
        num_classes=int(num_classes),
    )


# ----------------------------------------------------------------------------- digits


def _load_digits(test_fraction: float, seed: int) -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError(
            "the 'digits' data set needs scikit-learn: pip install scikit-learn"
        ) from err
    bunch = load_digits()
    images = np.asarray(bunch.images, np.float32)  # (1797, 8, 8), values 0..16
    labels = np.asarray(bunch.target, np.int32)
    train, test = _holdout(labels, test_fraction, seed)
    return _images("digits", images[train], labels[train], images[test], labels[test], 10, 16.0)


# ----------------------------------------------------------------------------- IDX


def _parse_idx(path: str, magic: int) -> np.ndarray:
    """Decode an IDX file of unsigned bytes (magic 2049: labels, 2051: images)."""
    raw = _read_bytes(path)
    ndim = 1 if magic == 2049 else 3
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise ValueError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise ValueError(f"{path}: bad IDX magic number {got}, expected {magic}")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise ValueError(
            f"{path} is damaged: size {len(raw)} bytes does not match its header {shape} "
            f"(expected {expected} bytes; a truncated or corrupt file); download it again"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _load_idx(name: str, data_dir: str) -> Dataset:
    paths = [_require(data_dir, stem, name, _IDX_FILES) for stem in _IDX_FILES]
    x_train, y_train = _parse_idx(paths[0], 2051), _parse_idx(paths[1], 2049)
    x_test, y_test = _parse_idx(paths[2], 2051), _parse_idx(paths[3], 2049)
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
        if len(x) != len(y):
            raise ValueError(f"{name}: {split} has {len(x)} images but {len(y)} labels")
    return _images(name, x_train, y_train, x_test, y_test, 10, 255.0)


# ----------------------------------------------------------------------------- CIFAR-10


def _parse_cifar(path: str) -> tuple[np.ndarray, np.ndarray]:
    raw = _read_bytes(path)
    if len(raw) % _CIFAR_RECORD:
        raise ValueError(
            f"{path}: size {len(raw)} is not a multiple of the {_CIFAR_RECORD}-byte CIFAR record"
        )
    records = np.frombuffer(raw, np.uint8).reshape(-1, _CIFAR_RECORD)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW -> HWC
    return images, records[:, 0]


def _load_cifar10(data_dir: str, test_fraction: float, seed: int) -> Dataset:
    layout = (*_CIFAR_TRAIN, _CIFAR_TEST)
    parts = [_parse_cifar(_require(data_dir, f, "cifar10", layout)) for f in _CIFAR_TRAIN]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    test_path = _find(data_dir, _CIFAR_TEST)
    if test_path is not None:
        x_test, y_test = _parse_cifar(test_path)
    else:
        train, test = _holdout(y_train, test_fraction, seed)
        x_train, y_train, x_test, y_test = (
            x_train[train],
            y_train[train],
            x_train[test],
            y_train[test],
        )
    return _images("cifar10", x_train, y_train, x_test, y_test, 10, 255.0)


# ----------------------------------------------------------------------------- LIBSVM


def _libsvm_file(name: str) -> str:
    return name[len("libsvm:") :] if name.lower().startswith("libsvm:") else name.lower()


def _map_labels(y_train: np.ndarray, y_test: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Map LIBSVM labels to ``0..K-1``: {0,1} kept, {-1,+1} -> {0,1}, {1,2} -> {0,1}."""
    values = set(np.unique(np.concatenate([y_train, y_test])).tolist())
    if values <= {0.0, 1.0}:
        return y_train.astype(np.int32), y_test.astype(np.int32), 2
    if values <= {-1.0, 1.0}:
        return (y_train > 0).astype(np.int32), (y_test > 0).astype(np.int32), 2
    if values <= {1.0, 2.0}:
        return (y_train - 1).astype(np.int32), (y_test - 1).astype(np.int32), 2
    classes = np.array(sorted(values))
    return (
        np.searchsorted(classes, y_train).astype(np.int32),
        np.searchsorted(classes, y_test).astype(np.int32),
        len(classes),
    )


def _load_libsvm(name: str, data_dir: str, test_fraction: float, seed: int) -> Dataset:
    from sklearn.datasets import load_svmlight_file, load_svmlight_files

    fname = _libsvm_file(name)
    layout = (fname, fname + ".t  (optional test split)")
    train_path = _require(data_dir, fname, name, layout)
    test_path = _find(data_dir, fname + ".t")
    default = LIBSVM_DATASETS.get(fname.lower())
    if test_path is not None:
        x_train, y_train, x_test, y_test = load_svmlight_files(
            [train_path, test_path], zero_based=False, dtype=np.float32
        )
    else:
        x_train, y_train = load_svmlight_file(train_path, zero_based=False, dtype=np.float32)
        x_test, y_test = None, None
    # Number of features: max index seen (the loaders already align train and
    # test on it), or the data set's known width if wider.
    width = max(x_train.shape[1], default or 0)
    if x_train.shape[1] < width:
        x_train.resize((x_train.shape[0], width))
        if x_test is not None:
            x_test.resize((x_test.shape[0], width))
    x_train = x_train.toarray().astype(np.float32, copy=False)
    if x_test is None:
        y_all = np.asarray(y_train)
        labels, _, num_classes = _map_labels(y_all, y_all[:0])
        train, test = _holdout(labels, test_fraction, seed)
        x_test, x_train = x_train[test], x_train[train]
        y_train, y_test = labels[train], labels[test]
    else:
        x_test = x_test.toarray().astype(np.float32, copy=False)
        y_train, y_test, num_classes = _map_labels(np.asarray(y_train), np.asarray(y_test))
    return Dataset(
        name=name,
        x_train=np.ascontiguousarray(x_train),
        y_train=y_train,
        x_test=np.ascontiguousarray(x_test),
        y_test=y_test,
        num_classes=num_classes,
    )


# ----------------------------------------------------------------------------- TFDS


def _have_tensorflow() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def _tfds_split(tfds, name: str, split: str, data_dir: str | None, keys: tuple[str, str]):
    """One split as (images, labels) numpy arrays."""
    if _have_tensorflow():
        ds = tfds.load(name, split=split, batch_size=-1, as_supervised=True, data_dir=data_dir)
        x, y = tfds.as_numpy(ds)
        return np.asarray(x), np.asarray(y)
    # Without TensorFlow, TFDS can still serve prepared data sets as random-access
    # data sources (ArrayRecord).
    source = tfds.data_source(name, split=split, data_dir=data_dir)
    examples = [source[i] for i in range(len(source))]
    x = np.stack([np.asarray(e[keys[0]]) for e in examples])
    y = np.asarray([e[keys[1]] for e in examples])
    return x, y


def _check_tfds_modules(name: str) -> None:
    """Name a module of :data:`TFDS_MODULES` that is not installed, before TFDS needs it."""
    missing = [m for m in TFDS_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ModuleNotFoundError(
            f"loading {name!r} through TensorFlow Datasets needs the module(s) "
            f"{', '.join(missing)}, which TFDS imports to prepare a data set but does not "
            f"install: pip install {' '.join(missing)} (a dependency of jaxrobust; "
            f"reinstall it with pip install -e .), or {_local_files(name)}",
            name=missing[0],
        )


def _local_files(name: str) -> str:
    """How to load ``name`` from local files instead of TFDS, as advice."""
    key = name.lower()
    if key in ("mnist", "fashion_mnist"):
        files = ", ".join(f"{f}[.gz]" for f in _IDX_FILES)
        return f"pass --data-dir DIR (data_dir=DIR), a folder holding the IDX files {files}"
    if key == "cifar10":
        return (
            "pass --data-dir DIR (data_dir=DIR), a folder holding the binary version's "
            "data_batch_1.bin ... data_batch_5.bin and test_batch.bin (each optionally .gz)"
        )
    return (
        "pass --data-dir DIR (data_dir=DIR), a TFDS data folder where it is prepared, "
        f"or use a built-in name: {', '.join(BUILTIN_DATASETS)}"
    )


def _reachable(urls: Sequence[str], timeout: float = 5.0) -> bool:
    """Whether the host of one of ``urls`` accepts a connection (one try each, no retries)."""
    hosts = dict.fromkeys(urllib.parse.urlsplit(url) for url in urls)
    for parts in hosts:
        if not parts.hostname:
            continue
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
        except OSError:
            continue
        return True
    return False


def _check_downloadable(name: str, builder) -> None:
    """Refuse a data set TFDS would have to download while its source cannot be reached.

    TFDS retries a failed download with back-off for minutes before its own
    ``ConnectionError``; one connection attempt per host decides it at once.
    """
    try:
        urls = list(builder.url_infos or ())
    except Exception:  # noqa: BLE001 - a builder without a checksums file: let TFDS try
        return
    if urls and not _reachable(urls):
        host = urllib.parse.urlsplit(urls[0]).hostname
        raise FileNotFoundError(
            f"{name!r} is not downloaded in {os.fspath(builder.data_dir)!r} (TFDS's data "
            f"folder) and {host} cannot be reached to download it (no network?): "
            f"{_local_files(name)}, or prepare it once where the network is reachable "
            f"(python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}')"
            '.download_and_prepare()") and set TFDS_DATA_DIR to that folder'
        )


def _load_tfds(name: str, data_dir: str | None, test_fraction: float, seed: int) -> Dataset:
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:  # pragma: no cover - tensorflow-datasets is a dependency
        raise ImportError(
            f"{name!r} needs tensorflow-datasets (pip install tensorflow-datasets), "
            f"or use one of the built-in names: {', '.join(BUILTIN_DATASETS)}"
        ) from err
    _check_tfds_modules(name)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"unknown data set {name!r}: TFDS does not know it. Built-in names: "
            f"{', '.join(BUILTIN_DATASETS)}, or 'libsvm:<filename>' with data_dir; "
            "any TFDS image-classification name also works"
        ) from None
    if not builder.is_prepared():
        _check_downloadable(name, builder)
    info = builder.info
    keys = tuple(info.supervised_keys or ("image", "label"))[:2]
    label_feature = info.features[keys[1]]
    num_classes = getattr(label_feature, "num_classes", None)
    if num_classes is None:
        raise ValueError(f"TFDS data set {name!r} has no class-label feature {keys[1]!r}")
    x_train, y_train = _tfds_split(tfds, name, "train", data_dir, keys)
    # Unknown split metadata ({}) means "try it"; a known list without "test" holds out.
    if info.splits and "test" not in info.splits:
        train, test = _holdout(y_train, test_fraction, seed)
        x_train, y_train, x_test, y_test = (
            x_train[train],
            y_train[train],
            x_train[test],
            y_train[test],
        )
    else:
        x_test, y_test = _tfds_split(tfds, name, "test", data_dir, keys)
    scale = 255.0 if x_train.dtype == np.uint8 else 1.0
    return _images(name, x_train, y_train, x_test, y_test, num_classes, scale)


# ----------------------------------------------------------------------------- registry


@DATASETS.register("digits")
def digits(data_dir: str | None = None, *, test_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (offline; ``data_dir`` is ignored).

    The 1,797 images of 8x8 pixels (values 0 to 16) of scikit-learn's
    ``load_digits``, scaled to ``[0, 1]`` and standardised; a seeded
    stratified ``test_fraction`` is held out as the test split. See
    :func:`load_dataset` for the parameters.

    Examples
    --------
    >>> ds = digits(test_fraction=0.5)
    >>> len(ds.y_train), len(ds.y_test)
    (899, 898)
    >>> abs(float(ds.x_train.mean())) < 1e-5, round(float(ds.x_train.std()), 2)
    (True, 1.0)
    """
    del data_dir
    return _load_digits(test_fraction, seed)


def _idx_loader(name: str) -> Callable[..., Dataset]:
    def load(data_dir: str | None = None, *, test_fraction: float = 0.1, seed: int = 0):
        if data_dir is None:
            return _load_tfds(name, None, test_fraction, seed)
        return _load_idx(name, data_dir)

    load.__doc__ = f"{name} from IDX files in data_dir (TFDS without data_dir)."
    return load


def _libsvm_loader(name: str) -> Callable[..., Dataset]:
    def load(data_dir: str | None = None, *, test_fraction: float = 0.1, seed: int = 0):
        if data_dir is None:
            raise ValueError(
                f"{name!r} is a LIBSVM data set: pass data_dir, the folder holding "
                f"{_libsvm_file(name)}[.gz] (and optionally {_libsvm_file(name)}.t[.gz])"
            )
        return _load_libsvm(name, data_dir, test_fraction, seed)

    load.__doc__ = f"LIBSVM {name} (``{_libsvm_file(name)}`` in data_dir; ``libsvm:<file>`` too)."
    return load


@DATASETS.register("cifar10")
def cifar10(data_dir: str | None = None, *, test_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """CIFAR-10 from its binary batches in data_dir (TFDS without data_dir).

    ``data_batch_1.bin`` ... ``data_batch_5.bin`` and ``test_batch.bin``
    (each optionally ``.gz``) of the binary version; without
    ``test_batch.bin`` a stratified ``test_fraction`` of the training set is
    the test split. See :func:`load_dataset`.

    Raises
    ------
    FileNotFoundError
        A training batch missing from ``data_dir`` (the message lists the
        expected layout).
    ValueError
        A file whose size is not a multiple of the 3,073-byte record.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as empty:
    ...     cifar10(empty)
    Traceback (most recent call last):
    ...
    FileNotFoundError: cifar10: missing file 'data_batch_1.bin' (or 'data_batch_1.bin.gz') in ...
    """
    if data_dir is None:
        return _load_tfds("cifar10", None, test_fraction, seed)
    return _load_cifar10(data_dir, test_fraction, seed)


for _name in ("mnist", "fashion_mnist"):
    DATASETS.register(_name, _idx_loader(_name))
for _name in LIBSVM_DATASETS:
    DATASETS.register(_name, _libsvm_loader(_name))
