import csv
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import yaml

from jaxrobust import simulator, sweep

BASE = dict(
    dataset="digits",
    model="logistic_regression",
    num_honest=5,
    num_byzantine=2,
    steps=20,
    eval_every=10,
    batch_size=8,
    max_train=400,
    max_test=200,
    defence=["nnm", "trimmed_mean"],
)


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_units_and_groups():
    spec = sweep.Sweep.from_dict(
        {**BASE, "seeds": 2, "grid": {"attack": ["sign_flip", "alie"], "lr": [0.1, 0.3, 1.0]}}
    )
    units = spec.units()
    assert len(units) == 2 * 3 * 2
    grouped = sweep.groups(units)
    assert [len(g) for g in grouped] == [6, 6]  # lr and seed share a program, attack does not
    assert len({u.run_id for u in units}) == len(units)


def test_bad_grid_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown grid field 'bogus'"):
        sweep.Sweep.from_dict({**BASE, "grid": {"bogus": [1]}})
    with pytest.raises(ValueError, match="needs a non-empty list"):
        sweep.Sweep.from_dict({**BASE, "grid": {"lr": 0.1}})


def test_a_rule_bound_fails_the_sweep_before_anything_runs(tmp_path):
    # 5 honest: krum needs n > 2f + 2, which f = 3 (n = 8) breaks and f = 1 does not.
    spec = sweep.Sweep.from_dict(
        {**BASE, "grid": {"num_byzantine": [1, 3], "defence": [["median"], ["krum"]]}}
    )
    with pytest.raises(ValueError, match=r"krum needs n > 2f \+ 2, got n=8, f=3.*take it out"):
        sweep.run_sweep(spec, str(tmp_path), mesh=None)
    assert not (tmp_path / "runs.csv").exists()


PARTITIONS = [
    {"heterogeneity": "dirichlet", "alpha": 0.1},
    {"heterogeneity": "dirichlet", "alpha": "1.0"},  # coerced like a plain field
    {"heterogeneity": "extreme"},
]
LINKED = {
    **BASE,
    "alpha": 0.5,
    "grid": {"partition": PARTITIONS, "attack": ["sign_flip", "alie"]},
}


def test_linked_axis_units_and_groups():
    spec = sweep.Sweep.from_dict({**LINKED, "seeds": 2})
    assert spec.fields() == ["heterogeneity", "alpha", "attack"]
    assert sweep.columns(spec)[:5] == ["run_id", "heterogeneity", "alpha", "attack", "seed"]
    units = spec.units()
    assert len(units) == 3 * 2 * 2 and len({u.run_id for u in units}) == len(units)
    points = [
        (u.config.heterogeneity, u.config.alpha, u.config.attack, u.config.seed) for u in units
    ]
    expected = [
        (h, a, attack, seed)
        for h, a in (("dirichlet", 0.1), ("dirichlet", 1.0), ("extreme", 0.5))  # base alpha
        for attack in ("sign_flip", "alie")
        for seed in (0, 1)
    ]
    assert points == expected and all(isinstance(p[1], float) for p in points)
    assert units[-1].grid_values == {"heterogeneity": "extreme", "alpha": 0.5, "attack": "alie"}
    # the partition is vmapped: one program per attack
    assert [len(g) for g in sweep.groups(units)] == [6, 6]


def test_linked_axis_errors():
    def load(grid, **base):
        return sweep.Sweep.from_dict({**BASE, **base, "grid": grid})

    with pytest.raises(ValueError, match=r"unknown field\(s\) 'bogus' in value 1; valid fields:"):
        load({"partition": [{"alpha": 0.1}, {"bogus": 1, "alpha": 1.0}]})
    for bad in ([1, 2], [{"alpha": 0.1}, 0.5], "extreme", {"alpha": 0.1}):
        with pytest.raises(ValueError, match="'partition': not a config field .* linked axis"):
            load({"partition": bad})
    with pytest.raises(ValueError, match="'alpha' is set twice, by its own grid axis and by"):
        load({"alpha": [0.1, 1.0], "partition": [{"alpha": 0.3}]})
    with pytest.raises(ValueError, match="'alpha' is set twice, by linked axis 'a' and by"):
        load({"a": [{"alpha": 0.3}], "b": [{"heterogeneity": "iid", "alpha": 1.0}]})
    with pytest.raises(ValueError, match="'partition' is an empty list"):
        load({"partition": []})
    with pytest.raises(ValueError, match="value 1 is an empty mapping"):
        load({"partition": [{"alpha": 0.1}, {}]})
    with pytest.raises(ValueError, match="config field alpha needs a float"):
        load({"partition": [{"alpha": "much"}]})


def test_linked_axis_sweep_columns_and_resume(tmp_path, monkeypatch):
    spec = sweep.Sweep.from_dict(LINKED)
    units = spec.units()
    path = sweep.run_sweep(spec, str(tmp_path), mesh=None, max_batch=6)
    rows = read_rows(path)
    assert list(rows[0])[:5] == ["run_id", "heterogeneity", "alpha", "attack", "seed"]
    assert len(rows) == 6 * 2
    cells = {(r["heterogeneity"], r["alpha"], r["attack"]) for r in rows}
    assert cells == {
        (h, a, attack)
        for h, a in (("dirichlet", "0.1"), ("dirichlet", "1.0"), ("extreme", "0.5"))
        for attack in ("sign_flip", "alie")
    }
    # sweep.yaml keeps the linked axis and loads back into the same runs
    written = yaml.safe_load((tmp_path / "sweep.yaml").read_text())
    assert written["grid"]["partition"][2] == {"heterogeneity": "extreme"}
    again = sweep.Sweep.from_yaml(str(tmp_path / "sweep.yaml"))
    assert [u.run_id for u in again.units()] == [u.run_id for u in units]
    # drop one run entirely and the last step of another (both alie): only those run again
    lost = {units[1].run_id, units[5].run_id}
    kept = [r for r in rows if r["run_id"] != units[1].run_id]
    kept = [r for r in kept if not (r["run_id"] == units[5].run_id and r["step"] == "20")]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    ran = []
    run_batch = sweep.run_batch

    def recording(batch, *args, **kwargs):
        ran.extend(u.run_id for u in batch)
        return run_batch(batch, *args, **kwargs)

    monkeypatch.setattr(sweep, "run_batch", recording)
    resumed = read_rows(sweep.run_sweep(again, str(tmp_path), mesh=None, max_batch=6))
    assert set(ran) == lost and len(ran) == 2
    assert len(resumed) == len(rows)
    key = lambda r: (r["run_id"], r["step"])  # noqa: E731
    before = {key(r): r for r in rows}
    for r in resumed:
        old = before[key(r)]
        assert {k: r[k] for k in ("heterogeneity", "alpha", "attack", "seed")} == {
            k: old[k] for k in ("heterogeneity", "alpha", "attack", "seed")
        }
        assert float(r["test_accuracy"]) == pytest.approx(float(old["test_accuracy"]), abs=1e-5)


def test_one_program_runs_equal_separate_runs(tmp_path):
    spec = sweep.Sweep.from_dict(
        {
            **BASE,
            "attack": "alie",
            "heterogeneity": "dirichlet",
            "seeds": 2,
            "grid": {"lr": [0.2, 0.5], "momentum": [0.0, 0.9], "alpha": [0.3, 3.0]},
        }
    )
    units = spec.units()
    assert len(sweep.groups(units)) == 1 and len(units) == 16
    path = sweep.run_sweep(spec, str(tmp_path))
    rows = read_rows(path)
    assert len(rows) == 16 * 2
    for unit in (units[0], units[-1], units[6]):
        alone = simulator.simulate(unit.config)
        mine = [r for r in rows if r["run_id"] == unit.run_id]
        for a, b in zip(mine, alone.rows, strict=True):
            for key in ("test_accuracy", "train_loss", "aggregate_norm"):
                assert float(a[key]) == pytest.approx(b[key], rel=1e-4, abs=1e-5)


class CountingChunk:
    """A jitted chunk that records its input shapes (one compilation each) and its lowerings."""

    def __init__(self, chunk):
        self.chunk, self.signatures, self.lowered = chunk, set(), []

    def __call__(self, states):
        self.signatures.add(str(jax.tree_util.tree_map(np.shape, states)))
        return self.chunk(states)

    def lower(self, states):
        self.lowered.append(states.indices.shape)
        return self.chunk.lower(states)


def test_heterogeneity_schemes_share_one_program(tmp_path, monkeypatch):
    spec = sweep.Sweep.from_dict(
        {
            **BASE,
            "attack": "alie",
            "alpha": 0.3,
            "seeds": 2,
            "grid": {"heterogeneity": ["iid", "dirichlet", "extreme"]},
        }
    )
    units = spec.units()
    assert len(units) == 6 and len(sweep.groups(units)) == 1
    data = simulator.load_for(units[0].config)
    widths = [sweep.table_width([u], data.y_train) for u in units]
    assert len(set(widths)) > 1  # the schemes' tables differ in shape before padding
    built, measured = [], []
    compiled_run = simulator.compiled_run

    def counting(config, dataset, problem=None):
        init, chunk, evaluate, sim = compiled_run(config, dataset, problem)
        built.append(CountingChunk(chunk))
        return init, built[-1], evaluate, sim

    def batch_of_three(per_unit, available, max_batch):
        measured.append(per_unit)
        return 3

    monkeypatch.setattr(simulator, "compiled_run", counting)
    monkeypatch.setattr(sweep, "choose_batch", batch_of_three)
    # two batches of 3 units with different partitions, padded to one shape: one program
    path = sweep.run_sweep(spec, str(tmp_path), mesh=None)
    assert len(built) == 1 and len(built[0].signatures) == 1
    # the memory probe measured one unit with the group's widest table
    assert built[0].lowered == [(1, BASE["num_honest"], max(widths))] and measured[0] > 0
    rows = read_rows(path)
    assert len(rows) == 6 * 2 and "heterogeneity" in rows[0]
    monkeypatch.setattr(simulator, "compiled_run", compiled_run)
    for scheme in ("iid", "dirichlet", "extreme"):
        mine = [u for u in units if u.config.heterogeneity == scheme]
        alone = simulator.simulate(mine[0].config.replace(seeds=2))
        ours = [r for u in mine for r in rows if r["run_id"] == u.run_id]
        assert {r["heterogeneity"] for r in ours} == {scheme}
        theirs = sorted(alone.rows, key=lambda r: (r["seed"], r["step"]))
        for a, b in zip(ours, theirs, strict=True):
            assert (int(a["seed"]), int(a["step"])) == (b["seed"], b["step"])
            for key in ("test_accuracy", "train_loss", "aggregate_norm"):
                assert float(a[key]) == pytest.approx(b[key], rel=1e-4, abs=1e-5)
    # the schemes really differ, and a second call finds every run complete
    finals = {r["heterogeneity"]: float(r["train_loss"]) for r in rows if r["step"] == "20"}
    assert len(set(finals.values())) == 3
    built.clear()
    monkeypatch.setattr(simulator, "compiled_run", counting)
    assert read_rows(sweep.run_sweep(spec, str(tmp_path), mesh=None)) == rows
    assert built == []


def test_memory_is_checked():
    with pytest.raises(MemoryError, match="one run needs about 10.00 GiB"):
        sweep.choose_batch(10 * 2**30, 4 * 2**30, None)
    assert sweep.choose_batch(2**20, 2**30, None) == 512
    assert sweep.choose_batch(2**20, 2**30, 3) == 3


def test_killed_sweep_resumes_without_lost_or_duplicated_rows(tmp_path):
    spec = {
        **BASE,
        "seeds": 2,
        "grid": {"attack": ["sign_flip", "alie", "ipm"], "lr": [0.1, 0.5]},
    }
    file = tmp_path / "sweep.yaml"
    file.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "jaxrobust",
        "sweep",
        str(file),
        "--out",
        str(out),
        "--max-batch",
        "2",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = out / "runs.csv"
    deadline = time.time() + 300
    while time.time() < deadline:
        if runs.exists() and len(read_rows(runs)) >= 4:  # at least one batch written
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = read_rows(runs)
    total_units = 3 * 2 * 2
    assert 4 <= len(before) < total_units * 2, "the kill should land mid-sweep"
    with open(runs, "a") as fh:  # a torn last line, as a kill during a write leaves
        fh.write(before[0]["run_id"] + ",sign_fl")
    done_before = {r["run_id"] for r in before if r["step"] == "20"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = read_rows(runs)
    keys = [(r["run_id"], r["step"]) for r in rows]
    assert len(keys) == len(set(keys)) == total_units * 2
    assert {r["run_id"] for r in rows} >= done_before
    # rows of runs finished before the kill are kept as they were
    old = {(r["run_id"], r["step"]): r for r in before if r["run_id"] in done_before}
    for r in rows:
        if (r["run_id"], r["step"]) in old:
            assert r == old[(r["run_id"], r["step"])]
    assert f"{total_units}/{total_units}" in result.stderr  # the progress bar reached the end
    assert np.isfinite([float(r["test_loss"]) for r in rows]).all()


def test_grid_over_a_field_left_out_of_to_dict_when_empty_is_a_plain_axis():
    """defence_options (written only when set) is still a config field, not a linked axis."""
    from jaxrobust.run.sweep import Sweep

    options = [{"nnm": {}}, {"trimmed_mean": {}}]
    sweep = Sweep.from_dict(
        {"defence": ["nnm", "trimmed_mean"], "grid": {"defence_options": options}}
    )
    assert sweep.fields() == ["defence_options"]
    assert [unit.config.defence_options for unit in sweep.units()] == options
