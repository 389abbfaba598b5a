"""The one registry type: every catalogue, unknown names and options, user entries."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrobust as jr
from jaxrobust import cli
from jaxrobust.config import Config
from jaxrobust.core import REGISTRIES, Registry
from jaxrobust.defence import make_defence

KINDS = (
    "aggregator",
    "preaggregator",
    "attack",
    "algorithm",
    "heterogeneity",
    "compressor",
    "dataset",
    "model",
    "lr_schedule",
    "topology",
)


def test_every_catalogue_is_a_registry_with_its_builtins():
    assert tuple(REGISTRIES) == KINDS
    expected = {
        "aggregator": {"mean", "median", "trimmed_mean", "krum", "centered_clipping", "dnc"},
        "preaggregator": {"arc", "clip", "nnm", "bucketing"},
        "attack": {"none", "sign_flip", "alie", "alie_aware", "shift_back"},
        "algorithm": {"dsgd", "marina_pp", "byz_ef21_sgdm", "byz_ef21", "br_csgd"},
        "heterogeneity": {"iid", "dirichlet", "gamma_similarity", "extreme", "shards"},
        "compressor": {"identity", "rand_k", "top_k"},
        "dataset": {"digits", "mnist", "cifar10", "a9a"},
        "model": {"logistic_regression", "mlp", "arc_cnn", "resnet18"},
        "lr_schedule": {"constant", "cosine", "step"},
        "topology": {"complete", "ring", "torus", "erdos_renyi", "exponential"},
    }
    for kind, names in expected.items():
        reg = jr.registry(kind)
        assert isinstance(reg, Registry)
        assert names <= set(reg), kind
        for entry in reg.entries():
            assert entry.description, (kind, entry.name)


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_names_list_the_valid_ones(kind):
    reg = jr.registry(kind)
    with pytest.raises(ValueError, match=f"unknown {kind} 'bogus'; choose one of: ") as err:
        reg.entry("bogus")
    assert all(name in str(err.value) for name in reg)


def test_unknown_kind_and_options_are_refused():
    with pytest.raises(ValueError, match="unknown registry kind 'rules'; choose one of: aggre"):
        jr.registry("rules")
    with pytest.raises(ValueError, match=r"unknown option\(s\) zz for attack 'alie'.*\bz=None"):
        jr.registry("attack").build("alie", zz=1)
    with pytest.raises(ValueError, match=r"unknown option\(s\) bogus for aggregator 'krum'"):
        make_defence(Config(defence=("krum",), defence_options={"krum": {"bogus": 1}}))


def test_names_are_not_silently_replaced():
    reg = Registry("thing")
    reg.register("a", lambda: 1)
    with pytest.raises(ValueError, match="thing 'a' is already registered"):
        reg.register("a", lambda: 2)
    reg.register("a", lambda: 3, replace=True)
    assert reg.build("a") == 3
    with pytest.raises(ValueError, match="non-empty word"):
        reg.register("a b", lambda: 4)


def test_rule_factories_share_one_form():
    """Every registered rule builds as ``factory(f, n=n)`` and reduces (or keeps) the axis."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(7, 3)), jnp.float32)
    for kind in ("aggregator", "preaggregator"):
        for name in jr.registry(kind):
            tx = jr.registry(kind).build(name, 1, n=7)
            out = tx.update(x, tx.init(jnp.zeros(3)), jnp.zeros(3))[0]
            assert out.shape[-1] == 3 and np.isfinite(np.asarray(out)).all(), name


def test_user_rule_and_options_reach_the_defence():
    @jr.register("aggregator", "test_scaled_mean", replace=True)
    def scaled_mean(f, *, n=None, scale=1.0):
        """The mean times ``scale``."""
        del f, n

        def update(updates, state, params=None):
            return jnp.mean(updates, axis=0) * scale, state

        return optax.GradientTransformation(lambda p: optax.EmptyState(), update)

    config = Config(
        num_honest=3,
        num_byzantine=0,
        defence=("nnm", "test_scaled_mean"),
        defence_options={"test_scaled_mean": {"scale": 2.0}},
    )
    try:
        tx = make_defence(config)
        x = jnp.array([[1.0], [2.0], [3.0]])
        assert float(tx.update(x, tx.init(jnp.zeros(1)))[0][0]) == pytest.approx(4.0)
    finally:
        jr.registry("aggregator").unregister("test_scaled_mean")


def test_bucketing_shrinks_the_count_the_next_rule_is_built_for():
    config = Config(num_honest=6, num_byzantine=1, defence=("bucketing", "krum"), bucket_size=2)
    with pytest.raises(ValueError, match="krum needs n > 2f \\+ 2"):
        make_defence(config, f=1)  # 7 vectors -> 4 buckets; Krum needs 4 > 4
    make_defence(config.replace(num_honest=8), f=1)  # 9 -> 5 buckets


def test_list_walks_every_registry(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for kind, reg in REGISTRIES.items():
        assert f"{kind} (" in out
        for name in reg:
            assert f"  {name} " in out


def test_algorithm_options_are_checked_against_the_declared_ones():
    unknown = r"unknown option\(s\) {} for algorithm '{}'"
    with pytest.raises(ValueError, match=unknown.format("q", "marina_pp") + ".*clip_alpha"):
        Config(algorithm="marina_pp", momentum=0.0, algorithm_options={"q": 1}).validate()
    with pytest.raises(ValueError, match=unknown.format("beta", "byz_ef21_sgdm")):
        Config(algorithm="byz_ef21_sgdm", algorithm_options={"beta": 0.5}).validate()
    with pytest.raises(ValueError, match=unknown.format("p", "dsgd") + "; valid .*none"):
        Config(algorithm_options={"p": 0.5}).validate()
    Config(algorithm="marina_pp", momentum=0.0, algorithm_options={"plus": True}).validate()


def test_committed_sweep_keeps_its_run_ids():
    """Fields added later are not written when empty, so run ids (and resuming) hold."""
    import csv
    import pathlib

    from jaxrobust import sweep

    folder = pathlib.Path(__file__).parent.parent / "experiments/arc/results/table_reduced"
    spec = sweep.Sweep.from_yaml(str(folder / "sweep.yaml"))
    with open(folder / "runs.csv") as fh:
        written = {row["run_id"] for row in csv.DictReader(fh)}
    assert {unit.run_id for unit in spec.units()} == written


def test_user_heterogeneity_scheme_with_its_own_option():
    from jaxrobust import simulator

    @jr.register("heterogeneity", "test_first_half", replace=True)
    def first_half(labels, num_workers, rng, share=0.5):
        """Worker 0 gets the first ``share`` of a shuffle, the rest split evenly."""
        order = rng.permutation(len(labels))
        cut = int(share * len(labels))
        return [order[:cut], *np.array_split(order[cut:], num_workers - 1)]

    try:
        labels = np.repeat(np.arange(4), 25)
        config = Config(
            num_honest=3, heterogeneity="test_first_half", heterogeneity_options={"share": 0.6}
        ).validate()
        parts = simulator.partition_of(config, labels, seed=0)
        assert [len(p) for p in parts] == [60, 20, 20]
        assert sorted(np.concatenate(parts).tolist()) == list(range(100))
        with pytest.raises(ValueError, match=r"unknown option\(s\) bogus for heterogeneity"):
            config.replace(heterogeneity_options={"bogus": 1}).validate()
        nested = Config(heterogeneity={"name": "test_first_half", "options": {"share": 0.6}})
        assert nested.heterogeneity_options == {"share": 0.6}
    finally:
        jr.registry("heterogeneity").unregister("test_first_half")
    assert "test_first_half" not in jr.registry("heterogeneity")


def test_a_plugin_may_replace_a_builtin_before_any_lookup():
    """Registering over a built-in name in a fresh interpreter (as --plugin does) works."""
    import subprocess
    import sys

    code = """
import jaxrobust as jr
import optax
@jr.register("aggregator", "mean", replace=True)
def my_mean(f, *, n=None):
    '''My mean.'''
    return optax.identity()
reg = jr.registry("aggregator")
assert reg["mean"] is my_mean and "centered_clipping" in reg and "median" in reg
import jaxrobust.aggregators
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
