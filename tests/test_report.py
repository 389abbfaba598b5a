import csv
import itertools
import math

import numpy as np
import pytest
import yaml

from jaxrobust import cli, report

METRICS = (
    "test_accuracy",
    "test_loss",
    "validation_accuracy",
    "validation_loss",
    "train_loss",
    "aggregate_norm",
    "distance_to_honest_mean",
    "mean_honest_norm",
)
NAN = float("nan")


def write_sweep(directory, grid, rows, **base):
    """A runs.csv and sweep.yaml as run_sweep writes them; rows hold grid values and metrics."""
    directory.mkdir(parents=True, exist_ok=True)
    header = ["run_id", *grid, "seed", "step", *METRICS]
    with open(directory / "runs.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        for row in rows:
            run = repr([row.get(k) for k in (*grid, "seed")])  # one id per grid point and seed
            full = {"run_id": run, **{m: 0.0 for m in METRICS}, **row}
            writer.writerow({k: full[k] for k in header})
    config = {"dataset": "digits", "model": "mlp", "steps": 20, "seeds": 2, **base}
    config["grid"] = grid
    with open(directory / "sweep.yaml", "w") as fh:
        yaml.safe_dump(config, fh, sort_keys=False)
    return directory


# One setting, two attacks, two learning rates, two seeds, evaluations at steps 10 and 20.
# (lr, attack, seed) -> (test accuracies, validation accuracies) at steps 10, 20.
KNOWN = {
    (0.1, "sign_flip", 0): ([0.5, 0.7], [0.8, 0.8]),
    (0.1, "sign_flip", 1): ([0.8, 0.6], [0.8, 0.8]),
    (0.1, "alie", 0): ([0.4, 0.6], [0.7, 0.7]),
    (0.1, "alie", 1): ([0.7, 0.5], [0.7, 0.7]),
    # better on test (worst case 0.85) but worse on validation (worst case 0.6)
    (0.5, "sign_flip", 0): ([0.9, 0.9], [0.95, 0.95]),
    (0.5, "sign_flip", 1): ([0.9, 0.9], [0.95, 0.95]),
    (0.5, "alie", 0): ([0.85, 0.85], [0.6, 0.6]),
    (0.5, "alie", 1): ([0.85, 0.85], [0.5, 0.6]),
}


def known_rows(validation=True):
    rows = []
    for (lr, attack, seed), (test, val) in KNOWN.items():
        for step, t, v in zip((10, 20), test, val, strict=True):
            rows.append(
                {
                    "attack": attack,
                    "lr": lr,
                    "seed": seed,
                    "step": step,
                    "test_accuracy": t,
                    "validation_accuracy": v if validation else NAN,
                }
            )
    return rows


@pytest.fixture
def known_dir(tmp_path):
    grid = {"attack": ["sign_flip", "alie"], "lr": [0.1, 0.5]}
    return write_sweep(tmp_path / "known", grid, known_rows(), validation=0.2)


def test_load_runs_types(known_dir):
    rows, config = report.load_runs(known_dir)
    assert len(rows) == 16
    assert config["dataset"] == "digits" and config["grid"]["lr"] == [0.1, 0.5]
    row = rows[0]
    assert row["lr"] == 0.1 and row["attack"] == "sign_flip"
    assert isinstance(row["seed"], int) and isinstance(row["step"], int)
    assert isinstance(row["test_accuracy"], float)


def test_runs_short_of_the_last_step_are_left_out(tmp_path):
    grid = {"attack": ["sign_flip", "alie"], "lr": [0.1, 0.5]}
    partial = {"attack": "alie", "lr": 0.1, "seed": 2, "step": 10, "test_accuracy": 0.0}
    directory = write_sweep(tmp_path / "partial", grid, [*known_rows(), partial], steps=20)
    with pytest.warns(UserWarning, match="left out 1 run"):
        rows, _ = report.load_runs(directory)
    assert len(rows) == 16 and {r["seed"] for r in rows} == {0, 1}
    (result,) = report.worst_case_table(rows).rows
    assert result.worst_case == pytest.approx(0.55)  # alie's mean curve [0.55, 0.55]
    assert len(report.load_runs(directory, complete_only=False)[0]) == 17


def test_worst_case_is_max_over_steps_mean_over_seeds_min_over_attacks(known_dir):
    rows, _ = report.load_runs(known_dir)
    table = report.worst_case_table(rows, reduce="max_then_mean")
    assert table.selected_on == "validation_accuracy" and not table.notes
    assert table.hyperparameter_fields == ["lr"] and table.attacks == ["sign_flip", "alie"]
    (result,) = table.rows
    # chosen lr = 0.1: its worst validation (0.7) beats lr = 0.5's (0.6)
    assert result.hyperparameters == {"lr": 0.1}
    assert result.selection_score == pytest.approx(0.7)
    # sign_flip: seed maxima 0.7, 0.8 -> 0.75; alie: 0.6, 0.7 -> 0.65
    assert result.per_attack["sign_flip"] == pytest.approx(0.75)
    assert result.per_attack["alie"] == pytest.approx(0.65)
    assert result.worst_case == pytest.approx(0.65)
    assert result.worst_attack == "alie"
    assert result.num_seeds == 2 and result.candidates == 2


def test_mean_then_max_order_as_byzfl(known_dir):
    rows, _ = report.load_runs(known_dir)
    (result,) = report.worst_case_table(rows, reduce="mean_then_max").rows
    # mean curves: sign_flip [0.65, 0.65], alie [0.55, 0.55]
    assert result.per_attack == pytest.approx({"sign_flip": 0.65, "alie": 0.55})
    assert result.worst_case == pytest.approx(0.55)
    with pytest.raises(ValueError, match="reduce must be one of"):
        report.worst_case_table(rows, reduce="median")


def test_selection_on_test_would_choose_otherwise(known_dir):
    rows, _ = report.load_runs(known_dir)
    (on_test,) = report.worst_case_table(rows, select_on=None).rows
    assert on_test.hyperparameters == {"lr": 0.5} and on_test.worst_case == pytest.approx(0.85)
    # without selection, every lr is its own setting
    table = report.worst_case_table(rows, hyperparameters=())
    assert [r.setting["lr"] for r in table.rows] == [0.1, 0.5]
    assert [r.worst_case for r in table.rows] == pytest.approx([0.55, 0.85])


def test_nan_validation_falls_back_to_the_test_metric(tmp_path):
    grid = {"attack": ["sign_flip", "alie"], "lr": [0.1, 0.5]}
    directory = write_sweep(tmp_path / "noval", grid, known_rows(validation=False))
    rows, config = report.load_runs(directory)
    assert all(math.isnan(r["validation_accuracy"]) for r in rows)
    table = report.worst_case_table(rows)
    assert table.selected_on == "test_accuracy"
    assert any("NaN in every run" in note for note in table.notes)
    (result,) = table.rows
    assert result.hyperparameters == {"lr": 0.5} and result.worst_case == pytest.approx(0.85)
    text = report.table_markdown(table, config)
    assert "Note: validation_accuracy is NaN in every run" in text
    path = report.write_table_csv(table, tmp_path / "t.csv")
    with open(path, newline="") as fh:
        (record,) = list(csv.DictReader(fh))
    assert record["selected_on"] == "test_accuracy"


def test_loss_metric_is_minimised(known_dir):
    rows, _ = report.load_runs(known_dir)
    for row in rows:
        row["test_loss"] = 1.0 - row["test_accuracy"]
    (result,) = report.worst_case_table(rows, metric="test_loss").rows
    assert result.hyperparameters == {"lr": 0.1}  # still chosen on validation accuracy
    # the lowest point of the mean loss curves: sign_flip [0.35, 0.35], alie [0.45, 0.45]
    assert result.per_attack == pytest.approx({"sign_flip": 0.35, "alie": 0.45})
    assert result.worst_case == pytest.approx(0.45) and result.worst_attack == "alie"
    (other,) = report.worst_case_table(rows, metric="test_loss", reduce="max_then_mean").rows
    assert other.per_attack == pytest.approx({"sign_flip": 0.25, "alie": 0.35})
    with pytest.raises(ValueError, match="unknown metric"):
        report.worst_case_table(rows, metric="bogus")


def grid_rows(seed=0):
    """Two defences x f in {1, 2, 3} x alpha in {0.3, 1, 10} x two attacks x two lrs x 2 seeds."""
    rng = np.random.default_rng(seed)
    defences = ["mean", "arc nnm trimmed_mean"]
    rows = []
    product = itertools.product(
        defences, [1, 2, 3], [0.3, 1.0, 10.0], ["sign_flip", "alie"], [0.1, 0.5], [0, 1]
    )
    for defence, f, alpha, attack, lr, seed_ in product:
        strength = (0.05 if defence == "mean" else 0.02) * f / (1 + math.log10(alpha) + 1)
        top = 0.95 - strength * (2 if attack == "alie" else 1) - (0.02 if lr == 0.5 else 0)
        for step in (10, 20, 30):
            acc = top * step / 30 + 0.002 * rng.standard_normal()
            rows.append(
                {
                    "defence": defence,
                    "num_byzantine": f,
                    "alpha": alpha,
                    "attack": attack,
                    "lr": lr,
                    "seed": seed_,
                    "step": step,
                    "test_accuracy": acc,
                    "validation_accuracy": acc + 0.01,
                }
            )
    return rows


@pytest.fixture
def grid_dir(tmp_path):
    grid = {
        "defence": [["mean"], ["arc", "nnm", "trimmed_mean"]],
        "num_byzantine": [1, 2, 3],
        "alpha": [0.3, 1.0, 10.0],
        "attack": ["sign_flip", "alie"],
        "lr": [0.1, 0.5],
    }
    return write_sweep(tmp_path / "grid", grid, grid_rows(), heterogeneity="dirichlet")


def is_png(path, min_bytes=5000):
    data = open(path, "rb").read()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > min_bytes


def test_make_report_writes_parseable_tables_and_pngs(grid_dir, tmp_path):
    out = tmp_path / "out"
    paths = report.make_report(grid_dir, out)
    names = sorted(p.rsplit("/", 1)[-1] for p in paths)
    assert names == sorted(
        ["worst_case.csv", "worst_case.md", "heatmap_num_byzantine_alpha.png", "curves.png"]
    )
    with open(out / "worst_case.csv", newline="") as fh:
        records = list(csv.DictReader(fh))
    assert len(records) == 2 * 3 * 3
    first = records[0]
    assert first["defence"] == "mean" and first["num_byzantine"] == "1" and first["alpha"] == "0.3"
    for record in records:
        worst = float(record["worst_case"])
        assert worst == pytest.approx(min(float(record["sign_flip"]), float(record["alie"])))
        assert record["worst_attack"] == "alie"  # alie is built to be stronger
        assert record["lr"] == "0.1" and record["selected_on"] == "validation_accuracy"
    text = (out / "worst_case.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == [
        "defence",
        "num_byzantine",
        "alpha",
        "sign_flip",
        "alie",
        "worst case",
        "worst attack",
        "lr",
    ]
    assert len(lines) == 2 + 18 and all(line.count("|") == len(header) + 1 for line in lines)
    assert "Fixed: dataset=digits" in text and "heterogeneity=dirichlet" in text
    assert "| arc nnm trimmed_mean | 3 | 10.0 |" in text
    for name in ("heatmap_num_byzantine_alpha.png", "curves.png"):
        assert is_png(out / name), name
    # default output directory: the sweep's
    assert report.make_report(grid_dir)[0] == str(grid_dir / "worst_case.csv")


def test_heatmap_fields_and_errors(grid_dir, tmp_path):
    rows, _ = report.load_runs(grid_dir)
    table = report.worst_case_table(rows)
    assert report.heatmap_fields(table) == ("num_byzantine", "alpha")
    path = report.plot_heatmap(table, "alpha", "num_byzantine", tmp_path / "h.png")
    assert is_png(path)
    with pytest.raises(ValueError, match="not a setting field"):
        report.plot_heatmap(table, "lr", "alpha", tmp_path / "x.png")
    # a single numeric field that varies: no heatmap
    few = [r for r in rows if r["alpha"] == 1.0]
    assert report.heatmap_fields(report.worst_case_table(few)) is None
    curves = report.plot_curves(few, tmp_path / "c.png")  # without a table: every lr
    assert is_png(curves)


def test_attack_outside_the_grid(tmp_path):
    rows = [r for r in known_rows() if r["attack"] == "alie"]
    for r in rows:
        del r["attack"]
    directory = write_sweep(tmp_path / "one", {"lr": [0.1, 0.5]}, rows, attack="alie")
    loaded, _ = report.load_runs(directory)
    table = report.worst_case_table(loaded)
    assert table.attacks == ["alie"]
    (result,) = table.rows
    # validation worst: lr 0.1 -> 0.7, lr 0.5 -> 0.6 (mean curve [0.55, 0.6])
    assert result.hyperparameters == {"lr": 0.1} and result.worst_case == pytest.approx(0.55)


def test_cli_report(known_dir, tmp_path, capsys):
    out = tmp_path / "cli_out"
    assert cli.main(["report", str(known_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| sign_flip | alie | worst case | worst attack | lr |" in printed
    assert "**0.5500**" in printed  # the maximum of the mean curve, the default
    assert str(out / "worst_case.csv") in printed and (out / "curves.png").exists()
    assert cli.main(["report", str(known_dir), "--metric", "test_loss"]) == 0
    assert "Worst-case maximal test_loss" in capsys.readouterr().out


def test_cli_report_missing_directory(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no sweep directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["report", str(tmp_path / "empty")]) == 2
    assert "no runs.csv in" in capsys.readouterr().err


# A real sweep small enough for the tests: digits, logistic regression, 10 steps.
TINY_SWEEP = {
    "dataset": "digits",
    "model": "logistic_regression",
    "num_honest": 5,
    "num_byzantine": 1,
    "steps": 10,
    "eval_every": 10,
    "max_train": 300,
    "validation": 0.2,
}


def test_report_on_a_real_tiny_sweep(tmp_path):
    from jaxrobust import sweep

    spec = sweep.Sweep.from_dict(
        {
            **TINY_SWEEP,
            "attack": "sign_flip",
            "grid": {"lr": [0.1, 0.5]},
        }
    )
    sweep.run_sweep(spec, str(tmp_path))
    paths = report.make_report(tmp_path)
    assert [p.rsplit("/", 1)[-1] for p in paths] == [
        "worst_case.csv",
        "worst_case.md",
        "curves.png",
    ]
    (result,) = report.worst_case_table(report.load_runs(tmp_path)[0]).rows
    assert 0 <= result.worst_case <= 1 and result.worst_attack == "sign_flip"
    assert result.hyperparameters["lr"] in (0.1, 0.5)


def test_report_on_a_sweep_with_a_linked_axis(tmp_path):
    from jaxrobust import sweep

    spec = sweep.Sweep.from_dict(
        {
            **TINY_SWEEP,
            "alpha": 0.5,
            "grid": {
                "partition": [
                    {"heterogeneity": "dirichlet", "alpha": 0.1},
                    {"heterogeneity": "dirichlet", "alpha": 1.0},
                    {"heterogeneity": "extreme"},
                ],
                "attack": ["sign_flip", "alie"],
                "lr": [0.1, 0.5],
            },
        }
    )
    sweep.run_sweep(spec, str(tmp_path), max_batch=8)
    paths = report.make_report(tmp_path)
    rows, _ = report.load_runs(tmp_path)
    table = report.worst_case_table(rows)
    assert table.setting_fields == ["heterogeneity", "alpha"]
    assert table.hyperparameter_fields == ["lr"] and table.attacks == ["sign_flip", "alie"]
    assert [(r.setting["heterogeneity"], r.setting["alpha"]) for r in table.rows] == [
        ("dirichlet", 0.1),
        ("dirichlet", 1.0),
        ("extreme", 0.5),  # the base alpha, as the run used it
    ]
    text = open(paths[1]).read()
    assert "| heterogeneity | alpha | sign_flip | alie | worst case | worst attack | lr |" in text
    assert "| extreme | 0.5 |" in text
    fixed = next(line for line in text.splitlines() if line.startswith("Fixed:"))
    assert "heterogeneity=" not in fixed and "alpha=" not in fixed  # not the base values
    assert is_png(report.plot_heatmap(table, "alpha", "heterogeneity", tmp_path / "h.png"))


def test_report_imports_no_jax(known_dir, tmp_path):
    """``import jaxrobust.report``, ``jaxrobust report DIR`` and ``python -m jaxrobust report
    DIR`` run without importing JAX (checked in a fresh interpreter)."""
    import os
    import subprocess
    import sys

    script = f"""
import runpy, sys
import jaxrobust.report
assert "jax" not in sys.modules, "import jaxrobust.report imported jax"
from jaxrobust import cli
assert cli.main(["report", {str(known_dir)!r}, "--out", {str(tmp_path / "a")!r}]) == 0
assert "jax" not in sys.modules, "cli.main(['report', DIR]) imported jax"
sys.argv = ["jaxrobust", "report", {str(known_dir)!r}, "--out", {str(tmp_path / "b")!r}]
try:
    runpy.run_module("jaxrobust", run_name="__main__")
except SystemExit as stop:
    assert stop.code == 0, stop.code
assert "jax" not in sys.modules, "python -m jaxrobust report DIR imported jax"
print("checked", sorted(m for m in sys.modules if m.startswith("jaxrobust")))
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "checked" in done.stdout and "'jaxrobust.report'" in done.stdout
    assert (tmp_path / "a" / "worst_case.md").exists()
    assert (tmp_path / "b" / "worst_case.md").exists()


def test_measured_columns_follow_the_header(tmp_path):
    """Columns after ``seed`` are measurements, whatever their names; a metric the
    report does not know is not taken for a grid field."""
    assert report.measured_columns(["run_id", "lr", "seed", "step", "new_metric"]) == [
        "step",
        "new_metric",
    ]
    assert report.measured_columns(["lr", "step", "test_accuracy"]) == ["step", "test_accuracy"]
    directory = tmp_path / "new"
    directory.mkdir()
    header = ["run_id", "attack", "lr", "seed", "step", "test_accuracy", "new_metric"]
    with open(directory / "runs.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        for row in known_rows():
            run = repr([row["attack"], row["lr"], row["seed"]])
            new = 0.5 if row["lr"] == 0.1 else 1.5  # varies with lr, yet not a setting
            writer.writerow({"run_id": run, **row, "new_metric": new})
    loaded, _ = report.load_runs(directory)
    assert loaded[0]["new_metric"] == 0.5 and isinstance(loaded[0]["new_metric"], float)
    table = report.worst_case_table(loaded)
    assert table.setting_fields == [] and table.hyperparameter_fields == ["lr"]
    # no validation column: selected on new_metric itself, where lr 0.5 scores 1.5
    (result,) = report.worst_case_table(loaded, metric="new_metric").rows
    assert result.hyperparameters == {"lr": 0.5} and result.worst_case == pytest.approx(1.5)


def test_report_measurements_match_the_simulator():
    """report.MEASURED (kept free of JAX) names what the simulator measures."""
    from jaxrobust import simulator

    assert set(report.MEASURED) == set(simulator.METRIC_COLUMNS) - {"seed"}


def test_sweep_progress_bar_counts_runs_and_time_left():
    import io

    from jaxrobust import sweep

    stream = io.StringIO()
    show = sweep.progress_printer(stream)
    show(3, 10, 1, 6.0)  # 2 runs found done, 1 run in 6 s: 7 runs left take 42 s
    text = stream.getvalue()
    assert "sweep" in text and "3/10" in text and "[00:06<00:42" in text and "6.00s/run" in text
    show(10, 10, 8, 48.0)
    text = stream.getvalue()
    assert "10/10" in text and text.endswith("\n")  # closed at the end


def test_cli_run_progress_bar(monkeypatch, capsys):
    """The run's bar: steps done, elapsed, time left and the latest mean test accuracy."""
    import types

    from jaxrobust import simulator

    def simulate(config, dataset, on_evaluation):
        for step, accuracy in ((5, 0.25), (10, 0.5)):
            on_evaluation(step, [{"test_accuracy": accuracy}, {"test_accuracy": accuracy + 0.5}])
        final = np.array([0.5, 1.0])
        return types.SimpleNamespace(final=lambda name: final, seconds=1.0)

    monkeypatch.setattr(simulator, "load_for", lambda config: None)
    monkeypatch.setattr(simulator, "simulate", simulate)
    assert cli.main(["run", "--steps", "10", "--eval-every", "5", "--seeds", "2"]) == 0
    captured = capsys.readouterr()
    assert "final test accuracy over 2 seed(s): 0.7500" in captured.out
    err = captured.err
    assert "run:  50%" in err and "5/10" in err and "test accuracy 0.5000" in err
    assert "10/10" in err and "test accuracy 0.7500" in err and err.endswith("\n")


def test_default_is_the_max_of_the_mean_curve_as_the_arc_authors(tmp_path, capsys):
    """The ARC authors' worst case (ByzFL's evaluate_results.py): the mean accuracy curve
    over seeds, then its maximum over steps; the mean of per-seed maxima is the option
    ``--reduce max-then-mean``. Hand-made runs where the seeds peak at different steps."""
    # attack -> accuracy[seed, step]; every seed peaks at its own step
    curves = {
        "sign_flip": np.array([[0.9, 0.3, 0.3], [0.3, 0.9, 0.3], [0.3, 0.3, 0.9]]),
        "alie": np.array([[0.6, 0.7, 0.5], [0.7, 0.6, 0.5], [0.65, 0.65, 0.6]]),
    }
    steps = (10, 20, 30)
    rows = [
        {"attack": a, "seed": s, "step": t, "test_accuracy": acc[s, i]}
        for a, acc in curves.items()
        for s in range(acc.shape[0])
        for i, t in enumerate(steps)
    ]
    directory = write_sweep(
        tmp_path / "sweep", {"attack": list(curves)}, rows, steps=30, seeds=3, validation=0
    )
    # float64 references, computed here without pandas
    mean_curve = {a: float(np.max(np.mean(acc, axis=0))) for a, acc in curves.items()}
    seed_maxima = {a: float(np.mean(np.max(acc, axis=1))) for a, acc in curves.items()}
    assert mean_curve == pytest.approx({"sign_flip": 0.5, "alie": 0.65})
    assert seed_maxima == pytest.approx({"sign_flip": 0.9, "alie": 2.05 / 3})
    for flag, expected, title in (
        ([], mean_curve, "max of the mean curve over seeds (mean_then_max)"),
        (["--reduce", "mean-then-max"], mean_curve, "(mean_then_max)"),
        (["--reduce", "max-then-mean"], seed_maxima, "mean over seeds of per-seed maxima"),
    ):
        out = tmp_path / ("out" + "".join(flag))
        assert cli.main(["report", str(directory), "--out", str(out), *flag]) == 0
        printed = capsys.readouterr().out
        header = printed.splitlines()[0]
        assert header.startswith("# Worst-case maximal test_accuracy") and title in header
        with open(out / "worst_case.csv", newline="") as fh:
            (record,) = list(csv.DictReader(fh))
        for attack, value in expected.items():
            assert float(record[attack]) == pytest.approx(value, abs=1e-12)
        worst = min(expected, key=expected.get)
        assert float(record["worst_case"]) == pytest.approx(expected[worst], abs=1e-12)
        assert record["worst_attack"] == worst
    # never higher than the mean of per-seed maxima
    assert all(mean_curve[a] <= seed_maxima[a] for a in curves)
