import csv
import os
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from jaxrobust import cli, simulator
from jaxrobust.config import Config

SMALL = dict(
    dataset="digits",
    model="logistic_regression",
    num_honest=5,
    num_byzantine=2,
    steps=20,
    eval_every=10,
    batch_size=8,
    lr=0.5,
    max_train=400,
    max_test=200,
)


@pytest.fixture(scope="module")
def digits():
    return simulator.load_for(Config(**SMALL))


def test_vmapped_seeds_equal_separate_runs(digits):
    config = Config(**SMALL, seeds=3, attack="alie", defence=("arc", "nnm", "trimmed_mean"))
    together = simulator.simulate(config, digits)
    for seed in range(3):
        alone = simulator.simulate(config.replace(seeds=1, seed=seed), digits)
        rows = [r for r in together.rows if r["seed"] == seed]
        assert len(rows) == len(alone.rows) == 2
        for a, b in zip(rows, alone.rows, strict=True):
            for key in simulator.METRIC_COLUMNS:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5, nan_ok=True), key


def test_different_seeds_differ(digits):
    result = simulator.simulate(Config(**SMALL, seeds=2, attack="none"), digits)
    losses = [r["train_loss"] for r in result.rows if r["step"] == 20]
    assert losses[0] != losses[1]


def test_step_compiles_once_and_has_no_host_callback(digits):
    config = Config(**SMALL, attack="alie_aware", defence=("arc", "nnm", "trimmed_mean"))
    init, chunk, evaluate, _ = simulator.compiled_run(config, digits)
    seeds = np.arange(1)
    states = simulator.initial_states(config, digits, init, seeds)
    for _ in range(3):
        states, _ = chunk(states)
    assert chunk._cache_size() == 1
    hlo = chunk.lower(states).compile().as_text()
    targets = re.findall(r'custom_call_target="([^"]+)"', hlo)
    assert not [t for t in targets if "callback" in t.lower()], targets
    for op in ("outfeed(", "infeed(", " send(", " recv("):
        assert op not in hlo, op


def test_robust_defence_beats_mean_under_gaussian_attack(digits):
    base = Config(**{**SMALL, "steps": 60, "eval_every": 30, "num_byzantine": 3}, attack="gaussian")
    mean = simulator.simulate(base.replace(defence=("mean",)), digits).final().mean()
    robust = (
        simulator.simulate(base.replace(defence=("nnm", "trimmed_mean")), digits).final().mean()
    )
    assert robust > 0.8 and robust > mean + 0.2


# Each attack is one more compiled program: CI runs the ones with their own code
# path in the step (state, flipped labels, the defence, bad values); the unit
# tests in test_attacks.py cover every attack's vector.
IN_CI = ("mimic", "label_flip", "nan", "min_max", "alie_aware")
ALL_ATTACKS = (
    "sign_flip",
    "ipm",
    "alie",
    "mimic",
    "label_flip",
    "gaussian",
    "inf",
    "nan",
    "min_max",
    "min_sum",
    "alie_aware",
    "ipm_aware",
    "shift_back",
)


@pytest.mark.parametrize(
    "attack",
    [a if a in IN_CI else pytest.param(a, marks=pytest.mark.slow) for a in ALL_ATTACKS],
)
def test_every_attack_runs_and_robust_defence_stays_finite(digits, attack):
    config = Config(
        **{**SMALL, "steps": 10, "eval_every": 10},
        attack=attack,
        defence=("arc", "nnm", "trimmed_mean"),
    )
    result = simulator.simulate(config, digits)
    assert np.isfinite([r["test_loss"] for r in result.rows]).all()


def test_declared_f_may_differ_from_real_f(digits):
    config = Config(**{**SMALL, "num_byzantine": 1}, declared_f=2, defence=("trimmed_mean",))
    assert config.declared_f == 2
    assert np.isfinite(simulator.simulate(config, digits).final()).all()


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"defence": ("nnm",)}, "defence must end with an aggregator"),
        ({"defence": ("trimmed_mean", "nnm")}, "defence must end with an aggregator"),
        ({"defence": ("bogus", "mean")}, "unknown rule 'bogus'; choose one of"),
        ({"attack": "bogus"}, "unknown attack 'bogus'; choose one of"),
        ({"num_byzantine": 5, "defence": ("trimmed_mean",)}, "trimmed_mean needs n > 2f"),
        ({"steps": 25}, "steps needs to be a multiple of eval_every"),
        ({"lr_schedule": "bogus"}, "unknown lr_schedule"),
    ],
)
def test_impossible_settings_are_clear_errors(digits, changes, message):
    with pytest.raises(ValueError, match=message):
        simulator.simulate(Config(**SMALL).replace(**changes), digits)


def test_cli_run_writes_config_and_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**SMALL, "attack": "alie", "seeds": 2}))
    code = cli.main(
        [
            "run",
            "--config",
            str(cfg),
            "--lr",
            "0.3",
            "--defence",
            "nnm,median",
            "--out",
            str(out),
            "--show-partition",
        ]
    )
    assert code == 0
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["lr"] == 0.3 and written["defence"] == ["nnm", "median"]
    assert written["attack"] == "alie" and written["seeds"] == 2
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and set(simulator.METRIC_COLUMNS) == set(rows[0])
    printed = capsys.readouterr().out
    assert "final test accuracy" in printed and "honest workers x classes" in printed


def test_cli_errors_exit_non_zero_with_choices(capsys):
    assert cli.main(["run", "--attack", "bogus", "--steps", "10", "--eval-every", "10"]) == 2
    assert "choose one of" in capsys.readouterr().err
    assert cli.main(["run", "--num-honest", "abc"]) == 2
    assert "num_honest needs a int" in capsys.readouterr().err


def test_cli_list(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("trimmed_mean", "arc", "alie_aware", "dirichlet", "arc_cnn", "digits"):
        assert word in out


def test_config_yaml_round_trip(tmp_path):
    config = Config(**SMALL, defence=("arc", "nnm", "krum"), attack_options={"z": 1.5})
    path = os.path.join(tmp_path, "c.yaml")
    with open(path, "w") as fh:
        fh.write(config.to_yaml())
    assert Config.from_yaml(path) == config
    with pytest.raises(ValueError, match="unknown config field"):
        Config.from_dict({"bogus": 1})


MNIST_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets", "mnist")


@pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason="real MNIST not beside the project")
def test_real_mnist_small_case_learns_and_resists_sign_flip():
    base = Config(
        dataset="mnist",
        data_dir=MNIST_DIR,
        max_train=3000,
        max_test=1000,
        model="mlp",
        num_honest=10,
        num_byzantine=3,
        attack="sign_flip",
        defence=("nnm", "trimmed_mean"),
        steps=200,
        eval_every=100,
        batch_size=16,
        lr=0.1,
    )
    dataset = simulator.load_for(base)
    honest = simulator.simulate(base.replace(num_byzantine=0, attack="none"), dataset).final()
    robust = simulator.simulate(base, dataset).final()
    assert honest[0] > 0.85 and robust[0] > 0.8, (honest, robust)


@pytest.mark.slow
def test_real_mnist_arc_cnn_800_steps():
    """The closing-note run (experiments/mnist_dsgd): ~7 min on 2 CPU cores."""
    if not os.path.isdir(MNIST_DIR):
        pytest.skip("real MNIST not beside the project")
    config = Config.from_yaml(
        os.path.join(os.path.dirname(__file__), "..", "experiments", "mnist_dsgd", "honest.yaml")
    ).replace(data_dir=MNIST_DIR)
    assert simulator.simulate(config).final()[0] > 0.97


def test_users_own_flax_module_and_pure_loss(digits):
    import flax.linen as nn
    import jax.numpy as jnp

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(10)(x.reshape(x.shape[0], -1))

    config = Config(**SMALL, attack="none")
    with_module = simulator.simulate(
        config, digits, problem=simulator.problem_for(config, digits, Tiny())
    )
    assert with_module.final()[0] > 0.5

    def loss(params, batch):  # a pure least-squares loss on one-hot labels
        x, y = batch
        pred = x.reshape(x.shape[0], -1) @ params["w"]
        return jnp.mean((pred - jax.nn.one_hot(y, 10)) ** 2)

    problem = simulator.Problem(init=lambda key: {"w": jnp.zeros((64, 10))}, loss=loss)
    pure = simulator.simulate(config, digits, problem=problem)
    losses = [r["test_loss"] for r in pure.rows]
    assert losses[-1] < 0.1 and np.isnan(pure.final()).all()


def test_validation_split_is_held_out_and_evaluated(digits):
    plain = simulator.simulate(Config(**SMALL, attack="none"), digits)
    assert np.isnan([r["validation_accuracy"] for r in plain.rows]).all()
    held = simulator.simulate(Config(**SMALL, attack="none", validation=0.25), digits)
    assert np.isfinite([r["validation_accuracy"] for r in held.rows]).all()
    split = simulator.with_validation_split(Config(validation=0.25), digits)
    assert len(split.y_train) + len(split.y_validation) == len(digits.y_train)
    assert abs(len(split.y_validation) - 0.25 * len(digits.y_train)) <= 10


PP = dict(SMALL, num_honest=6, num_byzantine=4, clients_per_round=3, declared_f=1)


def test_partial_participation_survives_all_byzantine_rounds(digits):
    # 2 honest of 8 clients, 2 sampled: about 2 rounds in 5 hold only Byzantine clients.
    config = Config(
        **{**PP, "num_honest": 2, "num_byzantine": 6, "clients_per_round": 2, "declared_f": 0},
        defence=("median",),
    )
    for attack, heuristic in [("shift_back", None), ("shift_back", 1.0), ("sign_flip", 1.0)]:
        result = simulator.simulate(
            config.replace(attack=attack, clipping_heuristic=heuristic), digits
        )
        assert np.isfinite([r["test_loss"] for r in result.rows]).all()


def test_shift_back_with_a_majority_keeps_the_model_at_its_start(digits):
    config = Config(
        **{**SMALL, "num_honest": 4, "num_byzantine": 6, "declared_f": 0},
        defence=("median",),
        attack="shift_back",
        momentum=0.0,
    )
    result = simulator.simulate(config, digits)
    losses = [r["test_loss"] for r in result.rows]
    assert losses[0] == losses[-1]  # every aggregate lands the model back on x_0
    assert max(r["aggregate_norm"] for r in result.rows) < 1e-6


def test_clipping_heuristic_resists_shift_back_under_partial_participation(digits):
    base = Config(
        **{**PP, "steps": 200, "eval_every": 50, "batch_size": 16, "max_train": None, "lr": 0.3},
        defence=("median",),
        attack="shift_back",
        momentum=0.0,
        seeds=2,
    )
    without = simulator.simulate(base, digits).final().mean()
    with_clipping = simulator.simulate(base.replace(clipping_heuristic=1.0), digits).final().mean()
    # Measured here: seeds (0.11, 0.83) without, (0.89, 0.83) with: seed 0 is shifted back.
    assert with_clipping > without + 0.2


def test_make_defence_uses_the_given_f():
    # n = 7: trimmed mean needs n > 2f, so f = 3 is the largest it takes.
    config = Config(**{**SMALL, "num_honest": 3, "num_byzantine": 4}, defence=("trimmed_mean",))
    assert config.defence_f == 4
    with pytest.raises(ValueError, match=r"n > 2f.*n=7, f=4"):
        simulator.make_defence(config)
    vectors = {"w": np.array([[0.0], [0.0], [0.0], [0.0], [10.0], [20.0], [100.0]], np.float32)}

    def aggregate(defence):
        return float(defence.update(vectors, defence.init({"w": np.zeros(1)}))[0]["w"][0])

    # The given f, not config.defence_f: trim 2 (mean of 0, 0, 10) or 1 (of 0, 0, 0, 10, 20).
    assert aggregate(simulator.make_defence(config, f=2)) == pytest.approx(10 / 3)
    assert aggregate(simulator.make_defence(config, 7, f=1)) == pytest.approx(6.0)
    accepted = config.replace(declared_f=1)
    assert aggregate(simulator.make_defence(accepted)) == pytest.approx(6.0)
    with pytest.raises(ValueError, match=r"n > 2f.*n=7, f=4"):
        simulator.make_defence(accepted, f=4)
    with pytest.raises(ValueError, match=r"n > 2f.*n=5, f=3"):
        simulator.make_defence(accepted, 5, f=3)
    # f counts after bucketing too: 7 vectors in buckets of 2 leave 4, so f = 2 is refused.
    bucketed = accepted.replace(defence=("bucketing", "median"), bucket_size=2)
    simulator.make_defence(bucketed, f=1)
    with pytest.raises(ValueError, match=r"median needs n > 2f.*n=4, f=2"):
        simulator.make_defence(bucketed, f=2)


def test_reduce_chunk_means_per_round_metrics_and_keeps_the_last_cumulative_value():
    assert "epochs" in simulator.LAST_VALUE_METRICS
    assert "bits_sent" not in simulator.LAST_VALUE_METRICS  # per round in every algorithm
    rounds = jnp.arange(1.0, 5.0)  # 4 rounds

    class Metrics(NamedTuple):
        train_loss: jax.Array
        bits_sent: jax.Array
        epochs: jax.Array

    reduced = simulator.reduce_chunk(Metrics(rounds, 10 * rounds, 0.25 * rounds))
    assert isinstance(reduced, Metrics)
    assert float(reduced.train_loss) == 2.5 and float(reduced.bits_sent) == 25.0
    assert float(reduced.epochs) == 1.0  # after the 4th round, not the mean 0.625
    as_dict = simulator.reduce_chunk({"epochs": 0.25 * rounds, "aggregate_norm": rounds})
    assert as_dict == {"epochs": 1.0, "aggregate_norm": 2.5}
    # Under vmap over runs (as in compiled_run), per run.
    per_run = jax.vmap(simulator.reduce_chunk)(
        Metrics(*(jnp.stack([v, 2 * v]) for v in (rounds, rounds, rounds)))
    )
    np.testing.assert_array_equal(per_run.epochs, [4.0, 8.0])
    np.testing.assert_array_equal(per_run.train_loss, [2.5, 5.0])
