"""The committed experiment sweep files, run small: each loads, runs and reports.

The real ones take minutes (see experiments/README.md); here every file keeps
its grid, defences and attacks and only shrinks the data, model and steps, so a
broken experiment file fails CI.
"""

from __future__ import annotations

import csv
import os

import pytest
import yaml

from jaxrobust import report, sweep

ROOT = os.path.join(os.path.dirname(__file__), "..", "experiments")

SMALL = dict(
    dataset="digits",
    data_dir=None,
    model="logistic_regression",
    steps=4,
    eval_every=2,
    max_train=300,
    max_test=100,
    seeds=1,
)

FILES = [
    ("arc", "fig1_reduced.yaml"),
    ("arc", "table_reduced.yaml"),
    ("arc", "cifar10_reduced.yaml"),
    ("partial_participation", "mnist_cnn_clipping_heuristic.yaml"),
]


def small_sweep(path: str) -> sweep.Sweep:
    """The sweep with small data, every defence, and other grid axes cut to their first value."""
    with open(path) as fh:
        values = yaml.safe_load(fh)
    values.update(SMALL)
    values["grid"] = {k: v if k == "defence" else v[:1] for k, v in values["grid"].items()}
    if values.get("num_honest", 0) > 6:
        values["num_honest"] = 6
    return sweep.Sweep.from_dict(values)


@pytest.mark.parametrize("folder, name", FILES)
def test_experiment_file_runs_small(folder, name, tmp_path):
    path = os.path.join(ROOT, folder, name)
    full = sweep.Sweep.from_yaml(path)
    units = full.units()
    sweep.check_defences(units)  # every rule's bound holds over the whole grid
    small = small_sweep(path)
    runs = sweep.run_sweep(small, str(tmp_path), mesh=None)
    with open(runs, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(small.units()) * 2  # two evaluations per run
    report.make_report(str(tmp_path), str(tmp_path / "report"))
    assert (tmp_path / "report" / "worst_case.md").exists()


@pytest.mark.parametrize("name", ["table_full.yaml", "table_full_multi_krum.yaml"])
def test_full_arc_grids_are_valid(name):
    full = sweep.Sweep.from_yaml(os.path.join(ROOT, "arc", name))
    units = full.units()
    sweep.check_defences(units)
    groups = sweep.groups(units)
    sizes = {len(g) for g in (groups.values() if isinstance(groups, dict) else groups)}
    assert sizes == {80}  # partitions x lr x momentum x seeds share a program
