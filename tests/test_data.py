"""Data loaders: each reads exactly what the test wrote (no network)."""

import gzip
import os
import struct

import numpy as np
import pytest

from jaxrobust.data import Dataset, load_dataset
from jaxrobust.data import datasets as datasets_mod

IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets")


def _write(path, payload: bytes, gz: bool):
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(payload)
    else:
        with open(path, "wb") as fh:
            fh.write(payload)


def _idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_idx(tmp_path, rng, gz, n_train=7, n_test=3, h=28, w=28):
    data = {
        "x_train": rng.integers(0, 256, (n_train, h, w), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, h, w), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    arrays = (data["x_train"], data["y_train"], data["x_test"], data["y_test"])
    for name, arr in zip(IDX_NAMES, arrays, strict=True):
        _write(tmp_path / name, _idx_bytes(arr, 2051 if arr.ndim == 3 else 2049), gz)
    return data


def _expected_standardised(raw_train: np.ndarray, raw_test: np.ndarray):
    """Independent reference: x / 255, then per-channel (last axis) z-score on train."""
    tr = raw_train.astype(np.float64) / 255.0
    te = raw_test.astype(np.float64) / 255.0
    axes = tuple(range(tr.ndim - 1))
    mean, std = tr.mean(axes), tr.std(axes)
    return (tr - mean) / std, (te - mean) / std


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_reads_what_was_written(tmp_path, rng, gz, name):
    data = _write_idx(tmp_path, rng, gz)
    ds = load_dataset(name, str(tmp_path))
    assert isinstance(ds, Dataset)
    assert ds.name == name and ds.num_classes == 10 and ds.input_shape == (28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    np.testing.assert_array_equal(ds.y_train, data["y_train"])
    np.testing.assert_array_equal(ds.y_test, data["y_test"])
    want_tr, want_te = _expected_standardised(data["x_train"][..., None], data["x_test"][..., None])
    np.testing.assert_allclose(ds.x_train, want_tr, atol=1e-5)
    np.testing.assert_allclose(ds.x_test, want_te, atol=1e-5)
    assert abs(float(ds.x_train.mean())) < 1e-5 and abs(float(ds.x_train.std()) - 1) < 1e-4


def test_idx_bad_magic_and_size(tmp_path, rng):
    data = _write_idx(tmp_path, rng, gz=False)
    bad = tmp_path / "train-labels-idx1-ubyte"
    bad.write_bytes(_idx_bytes(data["y_train"], 2051))
    with pytest.raises(ValueError, match="magic"):
        load_dataset("mnist", str(tmp_path))
    bad.write_bytes(_idx_bytes(data["y_train"], 2049)[:-1])  # truncated
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte is damaged: size"):
        load_dataset("mnist", str(tmp_path))


def test_idx_missing_file_names_it_and_the_layout(tmp_path, rng):
    _write_idx(tmp_path, rng, gz=True)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte") as err:
        load_dataset("fashion_mnist", str(tmp_path))
    for name in IDX_NAMES:
        assert name in str(err.value)


# ----------------------------------------------------------------------------- CIFAR-10


def _cifar_records(rng, n):
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return np.concatenate([labels[:, None], pixels], 1)


def _decode_cifar_reference(records):
    """Pixel (h, w, c) of record i is byte 1 + 1024 c + 32 h + w."""
    n = len(records)
    out = np.empty((n, 32, 32, 3), np.uint8)
    for c in range(3):
        for h in range(32):
            start = 1 + 1024 * c + 32 * h
            out[:, h, :, c] = records[:, start : start + 32]
    return out, records[:, 0]


@pytest.mark.parametrize("gz", [False, True])
def test_cifar_reads_what_was_written(tmp_path, rng, gz):
    train = [_cifar_records(rng, 2) for _ in range(5)]
    test = _cifar_records(rng, 3)
    for i, rec in enumerate(train, 1):
        _write(tmp_path / f"data_batch_{i}.bin", rec.tobytes(), gz)
    _write(tmp_path / "test_batch.bin", test.tobytes(), gz)
    ds = load_dataset("cifar10", str(tmp_path))
    x_tr, y_tr = _decode_cifar_reference(np.concatenate(train))
    x_te, y_te = _decode_cifar_reference(test)
    assert ds.input_shape == (32, 32, 3) and ds.num_classes == 10
    np.testing.assert_array_equal(ds.y_train, y_tr)
    np.testing.assert_array_equal(ds.y_test, y_te)
    want_tr, want_te = _expected_standardised(x_tr, x_te)
    np.testing.assert_allclose(ds.x_train, want_tr, atol=1e-5)
    np.testing.assert_allclose(ds.x_test, want_te, atol=1e-5)


def test_cifar_without_test_batch_holds_out(tmp_path, rng):
    train = [_cifar_records(rng, 20) for _ in range(5)]
    for i, rec in enumerate(train, 1):
        _write(tmp_path / f"data_batch_{i}.bin", rec.tobytes(), True)
    _write(tmp_path / "test_batch_first1000.bin", _cifar_records(rng, 4).tobytes(), True)
    ds = load_dataset("cifar10", str(tmp_path), test_fraction=0.2, seed=3)
    assert len(ds.y_train) + len(ds.y_test) == 100
    assert 10 <= len(ds.y_test) <= 30
    all_labels = np.concatenate(train)[:, 0]
    np.testing.assert_array_equal(
        np.sort(np.concatenate([ds.y_train, ds.y_test])), np.sort(all_labels)
    )
    again = load_dataset("cifar10", str(tmp_path), test_fraction=0.2, seed=3)
    np.testing.assert_array_equal(again.x_test, ds.x_test)


def test_cifar_missing_batch(tmp_path, rng):
    for i in (1, 2, 4, 5):
        _write(tmp_path / f"data_batch_{i}.bin", _cifar_records(rng, 1).tobytes(), False)
    with pytest.raises(FileNotFoundError, match="data_batch_3.bin") as err:
        load_dataset("cifar10", str(tmp_path))
    assert "test_batch.bin" in str(err.value)


def test_cifar_truncated_record(tmp_path, rng):
    for i in range(1, 6):
        _write(tmp_path / f"data_batch_{i}.bin", _cifar_records(rng, 1).tobytes()[:-5], False)
    with pytest.raises(ValueError, match="3073"):
        load_dataset("cifar10", str(tmp_path))


# ----------------------------------------------------------------------------- LIBSVM


def _libsvm_text(rows):
    return "".join(
        f"{label} " + " ".join(f"{i}:{v}" for i, v in feats) + "\n" for label, feats in rows
    ).encode()


TRAIN_ROWS = [
    (+1, [(1, 0.5), (3, 1)]),
    (-1, [(2, 2.25)]),
    (-1, [(1, 1), (5, -3.5)]),
    (+1, []),
]
TEST_ROWS = [(-1, [(7, 4)]), (+1, [(3, 0.125)])]


def _dense(rows, width):
    out = np.zeros((len(rows), width), np.float32)
    for r, (_, feats) in enumerate(rows):
        for i, v in feats:
            out[r, i - 1] = v
    return out


@pytest.mark.parametrize("gz", [False, True])
def test_libsvm_with_test_file(tmp_path, gz):
    _write(tmp_path / "toy", _libsvm_text(TRAIN_ROWS), gz)
    _write(tmp_path / "toy.t", _libsvm_text(TEST_ROWS), gz)
    ds = load_dataset("libsvm:toy", str(tmp_path))
    # Width is the max index over train and test (7, only seen in the test file).
    assert ds.input_shape == (7,) and ds.num_classes == 2
    np.testing.assert_array_equal(ds.x_train, _dense(TRAIN_ROWS, 7))
    np.testing.assert_array_equal(ds.x_test, _dense(TEST_ROWS, 7))
    np.testing.assert_array_equal(ds.y_train, [1, 0, 0, 1])
    np.testing.assert_array_equal(ds.y_test, [0, 1])
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32


def test_libsvm_known_width_and_label_conventions(tmp_path):
    rows = [(2 if lab > 0 else 1, feats) for lab, feats in TRAIN_ROWS]
    _write(tmp_path / "a9a", _libsvm_text(rows), True)
    _write(tmp_path / "a9a.t", _libsvm_text([(1, [(2, 1)])]), True)
    ds = load_dataset("a9a", str(tmp_path))
    assert ds.input_shape == (123,)  # the known a9a width, wider than any index seen
    np.testing.assert_array_equal(ds.x_train, _dense(TRAIN_ROWS, 123))
    np.testing.assert_array_equal(ds.y_train, [1, 0, 0, 1])  # {1, 2} -> {0, 1}
    np.testing.assert_array_equal(ds.y_test, [0])

    multi = [(3, [(1, 1)]), (7, [(2, 1)]), (5, [(1, 2)])] * 10
    _write(tmp_path / "multi", _libsvm_text(multi), False)
    ds = load_dataset("libsvm:multi", str(tmp_path), test_fraction=0.3, seed=1)
    assert ds.num_classes == 3
    assert len(ds.y_train) == 21 and len(ds.y_test) == 9  # stratified hold-out
    np.testing.assert_array_equal(np.bincount(ds.y_test), [3, 3, 3])
    # label 3 -> 0 has x = (1, 0); 5 -> 1 has x = (2, 0); 7 -> 2 has x = (0, 1)
    want = np.array([[1, 0], [2, 0], [0, 1]], np.float32)
    np.testing.assert_array_equal(ds.x_train, want[ds.y_train])


def test_libsvm_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="w8a"):
        load_dataset("w8a", str(tmp_path))
    with pytest.raises(ValueError, match="data_dir"):
        load_dataset("phishing")


# ----------------------------------------------------------------------------- digits and options


def test_digits_offline_default():
    ds = load_dataset("digits")
    assert len(ds.y_train) + len(ds.y_test) == 1797
    assert ds.input_shape == (8, 8, 1) and ds.num_classes == 10
    assert abs(len(ds.y_test) - 180) <= 10
    assert set(np.unique(ds.y_test)) == set(range(10))
    np.testing.assert_allclose(ds.x_train.mean(), 0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.std(), 1, atol=1e-4)
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    np.testing.assert_array_equal(again.y_test, ds.y_test)
    assert not np.array_equal(other.x_test, ds.x_test)
    assert "digits" in repr(ds) and "(8, 8, 1)" in repr(ds)


def test_max_train_and_max_test(tmp_path, rng):
    data = _write_idx(tmp_path, rng, gz=False, n_train=20, n_test=10)
    full = load_dataset("mnist", str(tmp_path))
    small = load_dataset("mnist", str(tmp_path), max_train=5, max_test=3, seed=4)
    assert len(small.y_train) == 5 and len(small.y_test) == 3
    # A subset of the full data with the full-data standardisation.
    for x in small.x_train:
        assert any(np.array_equal(x, y) for y in full.x_train)
    same = load_dataset("mnist", str(tmp_path), max_train=5, max_test=3, seed=4)
    np.testing.assert_array_equal(same.x_train, small.x_train)
    big = load_dataset("mnist", str(tmp_path), max_train=1000)
    assert len(big.y_train) == len(data["y_train"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="test_fraction"):
        load_dataset("digits", test_fraction=1.0)
    with pytest.raises(ValueError, match="max_train"):
        load_dataset("digits", max_train=0)


# ----------------------------------------------------------------------------- TFDS


def test_tfds_mock_mnist(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    # mock_data stands in for the download; the download's host counts as reachable
    monkeypatch.setattr(datasets_mod, "_reachable", lambda urls: True)
    with tfds.testing.mock_data(num_examples=12):
        ds = load_dataset("mnist")
    assert ds.input_shape == (28, 28, 1) and ds.num_classes == 10
    assert ds.x_train.shape == (12, 28, 28, 1) and ds.x_test.shape == (12, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.y_train.min() >= 0 and ds.y_train.max() < 10


def test_tfds_load_route(monkeypatch):
    """With TensorFlow present the loader calls tfds.load(batch_size=-1, as_supervised=True)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    calls = []
    images = np.arange(4 * 32 * 32 * 3, dtype=np.int64).reshape(4, 32, 32, 3) % 256

    def fake_load(name, *, split, batch_size, as_supervised, data_dir):
        calls.append((name, split, batch_size, as_supervised))
        return images.astype(np.uint8), np.array([0, 1, 2, 9])

    monkeypatch.setattr(datasets_mod, "_have_tensorflow", lambda: True)
    monkeypatch.setattr(datasets_mod, "_reachable", lambda urls: True)
    monkeypatch.setattr(tfds, "load", fake_load)
    monkeypatch.setattr(tfds, "as_numpy", lambda ds: ds)
    with tfds.testing.mock_data(num_examples=1):
        ds = load_dataset("cifar10")
    assert calls == [("cifar10", "train", -1, True), ("cifar10", "test", -1, True)]
    assert ds.num_classes == 10 and ds.input_shape == (32, 32, 3)
    want, _ = _expected_standardised(images, images)
    np.testing.assert_allclose(ds.x_train, want, atol=1e-5)


def test_unknown_name_lists_builtins():
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ValueError, match="digits") as err:
        load_dataset("no_such_dataset_xyz")
    assert "mnist" in str(err.value) and "a9a" in str(err.value)


# ----------------------------------------------------------------------------- real files


@pytest.mark.skipif(
    not os.path.isdir(os.path.join(SHARED, "mnist")), reason="shared MNIST files not present"
)
def test_real_mnist():
    ds = load_dataset("mnist", os.path.join(SHARED, "mnist"), max_train=1000)
    assert ds.x_train.shape == (1000, 28, 28, 1) and ds.num_classes == 10
    assert ds.x_test.shape == (10000, 28, 28, 1)
    assert set(np.unique(ds.y_train)) == set(range(10))
