"""Inputs that used to fail deep: each is refused early, naming what is wrong and what to do.

The TFDS tests run the real TFDS code (builder, checksums, download plan) up to
the point where it would download, with the network declared unreachable, so
they pass with or without a network and never download.
"""

from __future__ import annotations

import gzip
import importlib.util
import pathlib
import struct

import numpy as np
import pytest

from jaxrobust import cli
from jaxrobust.data import check_batch_size, load_dataset, partition
from jaxrobust.data import datasets as datasets_mod

IDX = {
    "train-images-idx3-ubyte": (2051, (12, 28, 28)),
    "train-labels-idx1-ubyte": (2049, (12,)),
    "t10k-images-idx3-ubyte": (2051, (4, 28, 28)),
    "t10k-labels-idx1-ubyte": (2049, (4,)),
}


def write_mnist(folder, rng):
    """The four IDX files, gzipped, of a tiny MNIST-shaped data set."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (magic, shape) in IDX.items():
        high = 256 if len(shape) == 3 else 10
        payload = rng.integers(0, high, shape, dtype=np.uint8).tobytes()
        header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in shape)
        with gzip.open(folder / f"{name}.gz", "wb") as fh:
            fh.write(header + payload)
    return folder


@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_truncated_gzip_names_the_file_and_says_it_is_damaged(tmp_path, keep, capsys):
    folder = write_mnist(tmp_path / "mnist", np.random.default_rng(0))
    assert load_dataset("mnist", str(folder)).x_train.shape == (12, 28, 28, 1)
    path = folder / "train-images-idx3-ubyte.gz"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])  # an interrupted download
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz is damaged") as err:
        load_dataset("mnist", str(folder))
    assert "download it again" in str(err.value)
    code = cli.main(["run", "--dataset", "mnist", "--data-dir", str(folder), "--steps", "1",
                     "--eval-every", "1", "--num-honest", "2", "--num-byzantine", "0",
                     "--batch-size", "2"])  # fmt: skip
    assert code == 2
    message = capsys.readouterr().err
    assert "train-images-idx3-ubyte.gz is damaged" in message and "Traceback" not in message


def test_tfds_offline_says_not_downloaded_and_how_to_pass_data_dir(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    asked = []

    def unreachable(urls):
        asked.extend(urls)
        return False

    monkeypatch.setattr(datasets_mod, "_reachable", unreachable)
    with pytest.raises(FileNotFoundError, match="'mnist' is not downloaded") as err:
        load_dataset("mnist")  # no data_dir: through TFDS
    message = str(err.value)
    folder = str(tfds.builder("mnist").data_dir)
    assert f"not downloaded in {folder!r} (TFDS's data folder)" in message
    assert "--data-dir" in message
    assert "train-images-idx3-ubyte" in message  # what the folder must hold
    # the check ran on TFDS's own download plan for MNIST
    assert asked and all(url.startswith("https://") for url in asked)
    assert any("train-images-idx3-ubyte" in url for url in asked)


def test_tfds_offline_from_the_cli(monkeypatch, capsys):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(datasets_mod, "_reachable", lambda urls: False)
    assert cli.main(["run", "--dataset", "cifar10", "--steps", "1", "--eval-every", "1"]) == 2
    message = capsys.readouterr().err
    assert "'cifar10' is not downloaded" in message and "--data-dir" in message
    assert "data_batch_1.bin" in message


def test_tfds_needs_its_undeclared_modules_named(monkeypatch, capsys):
    pytest.importorskip("tensorflow_datasets")
    # every module of the declaration is installed with jaxrobust ...
    assert all(importlib.util.find_spec(m) is not None for m in datasets_mod.TFDS_MODULES)
    # ... and one that is not is named before TFDS runs
    missing = "jaxrobust_test_module_that_is_not_installed"
    monkeypatch.setattr(datasets_mod, "TFDS_MODULES", (*datasets_mod.TFDS_MODULES, missing))
    with pytest.raises(ModuleNotFoundError, match=f"needs the module.*{missing}") as err:
        load_dataset("mnist")
    assert f"pip install {missing}" in str(err.value) and "--data-dir" in str(err.value)
    assert cli.main(["run", "--dataset", "mnist"]) == 2
    assert missing in capsys.readouterr().err


def test_declared_tfds_modules_are_dependencies():
    tomllib = pytest.importorskip("tomllib")
    root = pathlib.Path(__file__).parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    declared = {d.split(">")[0].split("=")[0].split("[")[0].strip().replace("-", "_").lower()
                for d in project["dependencies"]}  # fmt: skip
    assert set(datasets_mod.TFDS_MODULES) <= declared


def test_unreachable_host_is_decided_without_retries():
    # a reserved top-level domain (RFC 2606) never resolves
    assert not datasets_mod._reachable(["https://data.invalid/x.gz", "http://other.invalid/y"])
    assert not datasets_mod._reachable(["file:///nowhere"])


def test_batch_size_above_every_workers_data_is_refused(capsys):
    labels = np.repeat(np.arange(10), 20)
    parts = partition(labels, 4, "iid", seed=0)
    largest = max(len(p) for p in parts)
    assert check_batch_size(largest, parts) == largest
    with pytest.raises(ValueError, match=rf"batch_size needs 1 <= batch_size <= {largest} "):
        check_batch_size(largest + 1, parts)
    # a skewed split: batches above the small parts are drawn with replacement, allowed
    skewed = partition(labels, 4, "dirichlet", alpha=0.1, seed=0)
    sizes = sorted(len(p) for p in skewed)
    check_batch_size(sizes[-1], skewed)
    # the digits set: about 160 examples per worker of 10
    assert cli.main(["run", "--batch-size", "100000"]) == 2
    message = capsys.readouterr().err
    assert "batch_size needs 1 <= batch_size <= 16" in message
    assert "got batch_size=100000" in message and "--batch-size" in message


def test_negative_lr_and_unknown_attack_option_from_the_cli(capsys):
    assert cli.main(["run", "--lr", "-1"]) == 2
    assert "lr needs to be >= 0.0, got lr=-1.0" in capsys.readouterr().err
    assert cli.main(["run", "--attack", "alie", "--attack-options", "{zz: 1}"]) == 2
    message = capsys.readouterr().err
    assert "unknown option(s) zz for attack 'alie'" in message and "valid options" in message
    assert "z=" in message
