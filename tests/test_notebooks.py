"""The notebooks in notebooks/ run top to bottom and show what they promise.

Each notebook is executed with nbclient in a fresh kernel of this interpreter
(a kernelspec written to a temporary directory, so a user-level ``python3``
kernelspec pointing elsewhere cannot be picked up) after its cell tagged
``parameters`` is replaced by small settings.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL = "jaxrobust-tests"

QUICKSTART_SMALL = {
    "STEPS": 20,
    "EVAL_EVERY": 10,
    "SEEDS": 1,
    "SWEEP_SEEDS": 1,
    "LOOP_STEPS": 20,
}
ARC_SMALL = {"SNAPSHOT_STEPS": 10, "STEPS": 20, "EVAL_EVERY": 10, "SEEDS": 1}


def parameter_names(source: str) -> set[str]:
    return set(re.findall(r"^([A-Z_]+)\s*=", source, flags=re.MULTILINE))


def with_parameters(nb, values: dict[str, object]):
    """Replace the one cell tagged ``parameters`` by ``NAME = value`` lines."""
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "a notebook needs exactly one cell tagged 'parameters'"
    cell = cells[0]
    assert parameter_names(cell.source) == set(values), (
        f"the test's settings {sorted(values)} do not match the notebook's parameters "
        f"{sorted(parameter_names(cell.source))}"
    )
    cell.source = "\n".join(f"{name} = {value!r}" for name, value in values.items())
    # A first cell that records which interpreter the kernel runs.
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys\nprint('KERNEL', sys.executable)"))
    return nb


@pytest.fixture(scope="module")
def kernel_dirs(tmp_path_factory) -> list[str]:
    """A kernelspec that starts this very interpreter."""
    root = tmp_path_factory.mktemp("kernels")
    spec = root / KERNEL
    spec.mkdir()
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "jaxrobust tests", "language": "python"})
    )
    return [str(root)]


def execute(name: str, values: dict[str, object], kernel_dirs: list[str], workdir: Path):
    nb = with_parameters(nbformat.read(NOTEBOOKS / name, as_version=4), values)
    km = KernelManager(
        kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel_dirs)
    )
    client = NotebookClient(
        nb,
        km=km,
        kernel_name=KERNEL,
        timeout=300,
        startup_timeout=120,
        allow_errors=False,
        resources={"metadata": {"path": str(workdir)}},
    )
    # Compile with fewer XLA optimisations: the runs are tiny, so compiling dominates.
    # TMPDIR: the sweep's temporary directory lands in pytest's, not in /tmp.
    env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "TMPDIR": str(workdir)}
    client.execute(env=env)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    assert f"KERNEL {sys.executable}" in text_of(nb.cells[0])
    return nb


def text_of(cell) -> str:
    """Everything a code cell printed, plus its Markdown displays."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("display_data", "execute_result"):
            data = out.get("data", {})
            parts.append(data.get("text/markdown", data.get("text/plain", "")))
    return "".join(parts)


def all_text(nb) -> str:
    return "\n".join(text_of(c) for c in nb.cells if c.cell_type == "code")


def images(nb) -> int:
    return sum(
        "image/png" in out.get("data", {})
        for c in nb.cells
        if c.cell_type == "code"
        for out in c.get("outputs", [])
    )


def markdown_rows(text: str, first_header: str) -> tuple[list[str], list[list[str]]]:
    """The header and body rows of the Markdown table whose first column is ``first_header``."""
    lines = [line.strip() for line in text.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip().strip("*") for c in line.strip("|").split("|")])
    return header, rows


def test_notebooks_are_committed_without_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path.name
        source = "\n".join(c.source for c in nb.cells)
        assert "/work/" not in source and "/home/" not in source, path.name


def test_quickstart(kernel_dirs, tmp_path):
    nb = execute("quickstart.ipynb", QUICKSTART_SMALL, kernel_dirs, tmp_path)
    text = all_text(nb)

    # (a) the optax loop: the robust chain gets closer to the honest optimum than the mean.
    distances = dict(re.findall(r"^\s*(.+?): distance to the honest optimum (\S+)$", text, re.M))
    assert set(distances) == {"start", "mean", "CWTM o NNM o ARC"}, distances
    start, mean, robust = (float(distances[k]) for k in ("start", "mean", "CWTM o NNM o ARC"))
    assert robust < start
    assert not mean < start  # the mean follows the attackers (inf or NaN also count)

    # (b) and (c): the simulated runs and the plot.
    assert "final test accuracy per seed:" in text
    for label in ("mean", "CWTM o NNM", "CWTM o NNM o ARC"):
        assert re.search(rf"^\s*{re.escape(label)}: final test accuracy \d\.\d{{3}}", text, re.M)

    # (d): the sweep's worst-case table, one row per defence and alpha, lr chosen per row.
    assert "# Worst-case maximal test_accuracy" in text
    assert len(list(tmp_path.glob("jaxrobust-sweep-*/runs.csv"))) == 1
    header, rows = markdown_rows(text, "defence")
    assert header == [
        "defence",
        "alpha",
        "sign_flip",
        "inf",
        "worst case",
        "worst attack",
        "lr",
    ], header
    assert {(r[0], r[1]) for r in rows} == {
        (defence, alpha) for defence in ("mean", "arc nnm trimmed_mean") for alpha in ("0.1", "1.0")
    }
    for defence, _, sign_flip, inf, worst, worst_attack, lr in rows:
        assert float(worst) == min(float(sign_flip), float(inf))
        assert 0.0 <= float(worst) <= 1.0 and float(lr) in (0.05, 0.1)
        if defence == "mean":  # vectors of infinities break the plain mean
            assert worst_attack == "inf" and float(inf) < 0.5
    assert images(nb) >= 2  # the defences plot and the sweep's curves


@pytest.mark.slow  # about 40 s; the quickstart notebook is the real case run in CI
def test_arc_explained(kernel_dirs, tmp_path):
    nb = execute("arc_explained.ipynb", ARC_SMALL, kernel_dirs, tmp_path)
    text = all_text(nb)

    # 1. the clipped-count table is floor(2f(n-f)/n), computed independently here.
    header, rows = markdown_rows(text, "n")
    assert header[:3] == ["n", "f", "k = floor(2f(n-f)/n)"]
    table = {(int(r[0]), int(r[1])): int(r[2]) for r in rows}
    assert len(table) >= 5
    for (n, f), k in table.items():
        assert k == math.floor(2 * f * (n - f) / n), (n, f, k)
    assert table[(13, 3)] == 4 and table[(10, 0)] == 0

    # 2. norms before and after: large Byzantine vectors make exactly k = 4 clipped.
    assert re.search(r"gaussian: threshold C = \S+, 4 of 13 clipped \(k = 4\)", text)
    assert re.search(r"sign_flip: threshold C = \S+, \d+ of 13 clipped \(k = 4\)", text)

    # 3. the accuracy comparison: both defences under both attacks.
    header, rows = markdown_rows(text, "attack")
    assert {(r[0], r[1]) for r in rows} == {
        (attack, defence)
        for attack in ("sign_flip", "foe")
        for defence in ("CWTM o NNM", "CWTM o NNM o ARC")
    }
    for row in rows:
        assert 0.0 <= float(row[2]) <= 1.0 and 0.0 <= float(row[3]) <= 1.0
    assert images(nb) >= 2  # the norms bar chart and the accuracy curves
