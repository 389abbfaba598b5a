"""The prepared GPU suite runs end to end at tiny sizes (``--quick``), so it never rots."""

import gzip
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def write_idx(path: Path, array: np.ndarray) -> None:
    magic = 2051 if array.ndim == 3 else 2049
    header = struct.pack(">i", magic) + b"".join(struct.pack(">i", s) for s in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture
def mnist_dir(tmp_path):
    """A small MNIST-shaped IDX folder (random pixels): the suite reads files, never TFDS."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    for split, count in (("train", 1200), ("t10k", 200)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28)))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, count))
    return folder


def finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_precision_section_writes_both_files(tmp_path, monkeypatch):
    # The entry point, the report and one section, in the default (fast) suite.
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu_suite

    out = tmp_path / "out"
    assert gpu_suite.main([str(out), "--quick", "--sections", "precision"]) == 0
    report = json.loads((out / "gpu_suite.json").read_text())
    assert set(report["sections"]) == {"precision"} and report["errors"] == {}
    for r in report["sections"]["precision"]["rows"]:
        assert r["centred_highest_max_rel_err"] < 1e-5 and r["kernels_max_rel_err"] < 1e-5
        assert finite_positive(r["raw_default_ms"]) and finite_positive(r["raw_highest_ms"])
    # Offset 100 against a spread of 0.01: the raw product loses what centring keeps.
    big = report["sections"]["precision"]["rows"][-1]
    assert big["raw_highest_max_rel_err"] > 100 * big["centred_highest_max_rel_err"]
    assert "## Distance products" in (out / "gpu_suite.md").read_text()


@pytest.mark.slow  # about 70 s of CPU time: it compiles some forty programs
def test_quick_suite_writes_finite_tables(tmp_path, mnist_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu_suite

    out = tmp_path / "out"
    # A generous budget: on a loaded CPU no section may be cut short here.
    argv = [str(out), "--quick", "--data-dir", str(mnist_dir), "--budget-s", "3000"]
    assert gpu_suite.main(argv) == 0
    report = json.loads((out / "gpu_suite.json").read_text())
    text = (out / "gpu_suite.md").read_text()
    assert report["errors"] == {} and report["skipped"] == {}
    sections = report["sections"]
    assert set(sections) == {"rules", "step", "sweep", "precision", "memory"}

    blocks = sections["rules"]["blocks"]
    assert [b["n"] for b in blocks] == [16, gpu_suite.QUICK["n_large"][0]]
    for block in blocks:
        assert finite_positive(block["pass_ms"])
        statuses = {r["rule"]: r["status"] for r in block["rows"]}
        assert set(statuses) == set(gpu_suite.bench.RULES)
        for row in block["rows"]:
            if row["status"] == "ok":
                assert finite_positive(row["ms"]) and finite_positive(row["passes"])
            else:  # only MDA may refuse (its subset bound), nothing may fail
                assert row["rule"] == "mda" and row["status"] == "refused", row
    assert sections["rules"]["order_statistics"]["methods"][str(blocks[1]["n"])] != "network"

    step = sections["step"]
    assert finite_positive(step["plain_data_parallel_ms"]) and finite_positive(step["robust_ms"])
    sweep = sections["sweep"]
    assert finite_positive(sweep["runs_per_minute"]) and finite_positive(sweep["warm_s"])
    assert sweep["table_runs"] == 12000 and sweep["table_programs"] == 150
    assert finite_positive(sweep["extrapolated_table_minutes"])

    rows = sections["precision"]["rows"]
    assert [r["offset"] for r in rows] == [0.0, 1.0, 100.0]
    for r in rows:
        # Centred at HIGHEST precision, the distances keep float32 accuracy under any offset.
        assert r["centred_highest_max_rel_err"] < 1e-5 and r["kernels_max_rel_err"] < 1e-5
        assert all(math.isfinite(v) for k, v in r.items() if k.endswith("_max_rel_err"))

    memory = sections["memory"]
    assert finite_positive(memory["estimate_bytes_per_run"])
    assert memory["largest_runs_per_program"] >= gpu_suite.QUICK["sweep_runs"]
    assert all(t["ok"] for t in memory["tries"])

    for title in ("## Rules", "## ARC MNIST step", "## Sweep throughput", "## Memory per run"):
        assert title in text
    assert "## Distance products" in text and "nan" not in text.lower()
    sys.modules.pop("gpu_suite", None)


@pytest.mark.slow  # about 20 s: three programs compiled
def test_many_workers_runs_at_tiny_sizes(tmp_path, monkeypatch):
    """The 1,000-worker benchmark runs end to end (8 workers, 2 rounds)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import many_workers

    out = tmp_path / "many.json"
    argv = ["--n", "8", "--models", "logistic_regression", "--steps", "2", "--repeats", "1"]
    assert many_workers.main([*argv, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["program"] for r in rows][:2] == ["CWTM o NNM o ARC, ALIE", "mean, no attack"]
    assert all(finite_positive(r["ms_per_round"]) for r in rows)


def test_cpu_threads_variants_run_and_stay_exact(monkeypatch):
    """The XLA:CPU variants that need no flag, in this process, against float64."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import cpu_threads

    for kind in ("gram", "dot", "vmap"):  # in this process: no XLA flag needed
        record = cpu_threads.child(kind, 6, 4099, 2, 1)
        assert record["status"] == "ok" and finite_positive(record["ms"])
        assert record["rel_err"] < 1e-5  # against float64 numpy
    table = cpu_threads.markdown([{"variant": "default", "flags": "", **record}], 6, 4099)
    assert "| default |" in table
