"""Plugins: a user's module registers a rule and an attack, named from configs, sweeps and flags."""

from __future__ import annotations

import csv
import os
import sys
import uuid

import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from jaxrobust import cli
from jaxrobust.attacks import AttackInput, make_attack
from jaxrobust.config import Config, load_plugins
from jaxrobust.core import registry
from jaxrobust.defence import build_defence

PLUGIN = os.path.join(os.path.dirname(__file__), "plugin_example.py")

TINY = dict(
    dataset="digits",
    model="logistic_regression",
    max_train=300,
    max_test=100,
    num_honest=4,
    num_byzantine=1,
    steps=4,
    eval_every=2,
    batch_size=8,
)


def test_a_plugin_is_imported_before_names_are_checked(tmp_path):
    """A name its plugin registers is unknown without the plugin, and works with it."""
    name = f"attack_{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{name}_plugin.py"
    path.write_text(
        "import jaxrobust as jr\n"
        "from jaxrobust.attacks import sign_flip\n"
        f"jr.register('attack', {name!r}, description='sign flipping, again')(sign_flip)\n"
    )
    with pytest.raises(ValueError, match=f"unknown attack '{name}'"):
        Config(attack=name)
    config = Config(attack=name, plugins=[str(path)])
    assert config.attack == name and config.plugins == (str(path),)
    assert config.to_dict()["plugins"] == [str(path)]
    assert load_plugins([str(path)]) == load_plugins([str(path)])  # imported once
    with pytest.raises(ValueError, match="plugin 'no_such_plugin_module': no module named"):
        Config(plugins=["no_such_plugin_module"])
    with pytest.raises(ValueError, match="no such file"):
        Config(plugins=[str(tmp_path / "missing.py")])


def test_the_example_plugin_by_path_and_by_name_is_one_module():
    by_path = load_plugins([PLUGIN])[0]
    by_name = load_plugins(["plugin_example"])[0]  # tests/ is on the path (conftest)
    assert by_path is by_name is sys.modules["plugin_example"]
    assert "median_window_mean" in registry("aggregator") and "scaled_flip" in registry("attack")


def test_the_example_rule_and_attack_compute_what_they_say():
    load_plugins([PLUGIN])
    x = jnp.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [100.0, 50.0], [2.5, 0.0]])
    tx = build_defence(["median_window_mean"], n=5, f=1)
    out = tx.update(x, tx.init(jnp.zeros(2)))[0]
    np.testing.assert_allclose(out, [2.125, 0.0])  # the outlier is the one left out
    options = {"median_window_mean": {"keep": 3}}
    tx = build_defence(["median_window_mean"], n=5, f=1, options=options)
    np.testing.assert_allclose(tx.update(x, tx.init(jnp.zeros(2)))[0], [2.5, 0.0])
    with pytest.raises(ValueError, match="median_window_mean needs n > 2f"):
        build_defence(["median_window_mean"], n=4, f=2)
    attack = make_attack("scaled_flip", scale=3.0)
    honest = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
    bad, _ = attack.apply(AttackInput(honest, 2, None), ())
    np.testing.assert_allclose(bad["w"], [[-6.0, -9.0], [-6.0, -9.0]])


def test_cli_run_with_plugin_components_from_a_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                **TINY,
                "plugins": ["plugin_example"],
                "attack": {"name": "scaled_flip", "options": {"scale": 3.0}},
                "defence": ["nnm", {"name": "median_window_mean", "options": {"keep": 3}}],
            }
        )
    )
    out = tmp_path / "run"
    assert cli.main(["run", "--config", str(cfg), "--out", str(out)]) == 0, capsys.readouterr()
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["attack"] == "scaled_flip" and written["attack_options"] == {"scale": 3.0}
    assert written["defence"] == ["nnm", "median_window_mean"]
    assert written["defence_options"] == {"median_window_mean": {"keep": 3}}
    assert written["plugins"] == ["plugin_example"]
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert all(np.isfinite(float(r["test_accuracy"])) for r in rows)
    assert Config.from_yaml(str(out / "config.yaml")).validate() == Config.from_yaml(str(cfg))


def test_cli_plugin_flag_on_run_demo_and_sweep():
    for command in (["run"], ["demo"], ["sweep", "s.yaml", "--out", "x"]):
        args = cli.parser().parse_args([*command, "--plugin", "a", "--plugin", PLUGIN])
        assert args.plugin == ["a", PLUGIN]
    args = cli.parser().parse_args(
        ["run", "--plugin", PLUGIN, "--attack", "scaled_flip", "--defence", "median_window_mean"]
    )
    config = cli.resolve_config(args)
    assert config.plugins == (PLUGIN,) and config.defence == ("median_window_mean",)


def test_cli_list_shows_plugin_components(capsys):
    assert cli.main(["list", "--plugin", PLUGIN]) == 0
    out = capsys.readouterr().out
    assert "median_window_mean" in out and "scaled_flip" in out


def test_cli_unknown_plugin_is_a_clear_error(capsys):
    assert cli.main(["run", "--plugin", "no_such_plugin_module"]) == 2
    assert "plugin 'no_such_plugin_module'" in capsys.readouterr().err


@pytest.mark.parametrize("by", ["file", "flag"])
def test_sweep_with_plugin_components(tmp_path, by, capsys):
    spec = {
        **TINY,
        "defence": ["nnm", "median_window_mean"],
        "grid": {"attack": ["scaled_flip"], "lr": [0.05, 0.1]},
    }
    flags = ["--plugin", PLUGIN] if by == "flag" else []
    if by == "file":
        spec["plugins"] = [PLUGIN]
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "sweep"
    assert cli.main(["sweep", str(path), "--out", str(out), *flags]) == 0, capsys.readouterr()
    with open(out / "runs.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4  # two learning rates, two evaluations each
    assert {r["attack"] for r in rows} == {"scaled_flip"}
    written = yaml.safe_load((out / "sweep.yaml").read_text())
    assert written["plugins"] == [PLUGIN]
