"""The configuration: declared ranges, nested components, YAML files, flags and sweeps."""

from __future__ import annotations

import glob
import os

import annotated_types
import pytest
import yaml

from jaxrobust import cli, sweep
from jaxrobust.config import (
    Config,
    ConfigError,
    Registered,
    coerce,
    field_types,
    vmapped_fields,
)

ROOT = os.path.join(os.path.dirname(__file__), "..")

# The defaults every configuration, results file and run id was written with.
DEFAULTS = {
    "dataset": "digits",
    "data_dir": None,
    "max_train": None,
    "max_test": None,
    "data_seed": 0,
    "validation": 0.0,
    "heterogeneity": "iid",
    "alpha": 1.0,
    "gamma": 0.5,
    "shards_per_worker": 2,
    "model": "mlp",
    "l2": 0.0,
    "num_honest": 10,
    "num_byzantine": 3,
    "declared_f": None,
    "attack": "sign_flip",
    "attack_options": {},
    "algorithm": "dsgd",
    "algorithm_options": {},
    "clients_per_round": None,
    "clipping_heuristic": None,
    "local_steps": 1,
    "local_lr": None,
    "compressor": "identity",
    "compressor_options": {},
    "defence": ["nnm", "trimmed_mean"],
    "clip_norm": 2.0,
    "bucket_size": 2,
    "cc_tau": 10.0,
    "steps": 300,
    "batch_size": 25,
    "lr": 0.1,
    "lr_schedule": "constant",
    "momentum": 0.9,
    "weight_decay": 0.0,
    "eval_every": 50,
    "seeds": 1,
    "seed": 0,
}


def test_defaults_and_flat_access_unchanged():
    config = Config()
    assert config.to_dict() == DEFAULTS
    assert list(config.to_dict()) == list(DEFAULTS)  # declaration order, as YAML writes it
    assert config.defence == ("nnm", "trimmed_mean") and isinstance(config.defence, tuple)
    assert (config.num_workers, config.defence_f, config.received_count) == (13, 3, 13)
    assert config.validate() is config
    assert Config(declared_f=1, clients_per_round=5).defence_f == 1
    assert Config(declared_f=1, clients_per_round=5).received_count == 5


def test_run_ids_of_existing_sweeps_are_unchanged():
    """A sweep resumes by run id (a hash of to_dict): the ids are those the first release
    wrote (fields added since are not written when empty)."""
    assert sweep.Unit(Config(), {}).run_id == "aab68b812dea"
    other = Config(attack="alie", attack_options={"z": 1.0}, defence="arc,nnm,trimmed_mean")
    assert sweep.Unit(other.replace(lr=0.05), {}).run_id == "f8c9e0a1b580"


def test_immutable_equal_and_replace():
    config = Config()
    with pytest.raises(ValueError, match="immutable"):
        config.lr = 0.5
    assert config == Config() and config != config.replace(lr=0.5)
    changed = config.replace(lr=0.5, defence="arc,nnm,median")
    assert (changed.lr, changed.defence, config.lr) == (0.5, ("arc", "nnm", "median"), 0.1)
    with pytest.raises(ValueError, match="unknown config field"):
        config.replace(bogus=1)
    with pytest.raises(ValueError, match="lr needs to be >= 0"):
        config.replace(lr=-0.1)
    with pytest.raises(TypeError):  # dict fields: unhashable, as before
        hash(config)


# --------------------------------------------------------------------------
# Every field's declaration, exercised
# --------------------------------------------------------------------------


def bad_value(name: str):
    """A value outside field ``name``'s declaration, derived from the declaration alone."""
    info = Config.model_fields[name]
    for item in info.metadata:
        if isinstance(item, Registered):
            return "not_a_registered_name"
        if isinstance(item, annotated_types.Ge):
            return item.ge - 1
        if isinstance(item, annotated_types.Gt):
            return item.gt - 1
        if isinstance(item, annotated_types.Lt):
            return item.lt + 1
        if isinstance(item, annotated_types.Le):
            return item.le + 1
        if isinstance(item, annotated_types.MinLen):
            return ""
    annotation = str(info.annotation)
    if "dict" in annotation:
        return [1, 2]  # not a mapping
    if "tuple" in annotation:
        return 7  # not a list of names
    if "str" in annotation:
        return 12  # not a string
    raise AssertionError(f"no bad value derivable for {name}: {info}")


@pytest.mark.parametrize("name", list(Config.model_fields))
def test_every_field_rejects_a_value_outside_its_declaration(name):
    value = bad_value(name)
    with pytest.raises(ValueError) as info:
        Config(**{name: value})
    message = str(info.value)
    assert isinstance(info.value, ConfigError)
    assert name in message and repr(value) in message, message
    assert any(word in message for word in ("needs", "must", "unknown", "choose one of")), message


@pytest.mark.parametrize("name", list(Config.model_fields))
def test_every_field_has_a_description_and_accepts_its_default(name):
    info = Config.model_fields[name]
    assert info.description and "\n" not in info.description
    default = info.get_default(call_default_factory=True)
    assert coerce(name, default) == default


def test_bounds_are_inclusive_or_exclusive_as_declared():
    Config(validation=0.0, momentum=0.0, num_byzantine=0, lr=0.0, gamma=1.0)
    with pytest.raises(ValueError, match=r"validation needs 0.0 <= validation < 1.0"):
        Config(validation=1.0)
    with pytest.raises(ValueError, match=r"momentum needs 0.0 <= momentum < 1.0, got momentum=1"):
        Config(momentum=1)
    with pytest.raises(ValueError, match="alpha needs to be > 0.0, got alpha=0"):
        Config(alpha=0)
    with pytest.raises(ValueError, match="batch_size needs to be >= 1, got batch_size=0"):
        Config(batch_size=0)
    with pytest.raises(ValueError, match="config field steps needs a int .*got 1.5"):
        Config(steps=1.5)


def test_names_are_checked_against_their_registry():
    with pytest.raises(ValueError, match="attack='bogus': unknown attack 'bogus'; choose one of"):
        Config(attack="bogus")
    for field, kind in [
        ("algorithm", "algorithm"),
        ("compressor", "compressor"),
        ("heterogeneity", "heterogeneity"),
        ("model", "model"),
        ("lr_schedule", "lr_schedule"),
    ]:
        with pytest.raises(ValueError, match=f"unknown {kind} 'bogus'"):
            Config(**{field: "bogus"})
    Config(dataset="some_tfds_name")  # any TFDS name: only the type is checked
    with pytest.raises(ValueError, match="defence must end with an aggregator"):
        Config(defence=("mean", "nnm"))
    with pytest.raises(ValueError, match="'mean' is misplaced"):
        Config(defence=("mean", "median"))
    with pytest.raises(ValueError, match="unknown rule 'bogus'"):
        Config(defence="bogus,mean")
    with pytest.raises(ValueError, match="unknown option.* bogus for aggregator 'krum'"):
        Config(defence_options={"krum": {"bogus": 1}})
    with pytest.raises(ValueError, match="unknown aggregator 'not_a_rule'"):
        Config(defence_options={"not_a_rule": {}})


def test_validate_checks_across_fields_and_component_options():
    Config(attack_options={"alie": {"z": 1.0}, "sign_flip": {}}, compressor="top_k").replace(
        compressor_options={"k": 0.1}
    ).validate()
    cases = [
        ({"steps": 25}, "steps needs to be a multiple of eval_every"),
        ({"clients_per_round": 14}, "clients_per_round needs 1 <= clients_per_round <= n"),
        ({"local_steps": 2, "algorithm": "marina_pp"}, "local_steps > 1 is an option of"),
        ({"attack": "alie", "attack_options": {"bogus": 1}}, "bogus for attack 'alie'"),
        ({"attack_options": {"alie": {"bogus": 1}}}, "bogus for attack 'alie'"),
        ({"attack_options": {"alie": {}, "z": 1}}, "mixes per-attack entries"),
        ({"compressor": "top_k", "compressor_options": {"q": 1}}, "q for compressor 'top_k'"),
        ({"compressor_options": {"k": 1}}, "k for compressor 'identity'"),
    ]
    for changes, message in cases:
        config = Config(**changes)  # each field on its own is fine
        with pytest.raises(ConfigError, match=message):
            config.validate()


# --------------------------------------------------------------------------
# Nested components and values from flags
# --------------------------------------------------------------------------


def test_nested_components_map_onto_the_flat_fields():
    nested = Config.from_dict(
        {
            "attack": {"name": "alie", "options": {"z": 1.0}},
            "compressor": {"name": "top_k", "options": {"k": 0.1}},
            "algorithm": {"name": "byz_ef21", "options": {"init": "zeros"}},
            "defence": ["arc", {"name": "nnm"}, {"name": "krum", "options": {}}],
        }
    )
    flat = Config(
        attack="alie",
        attack_options={"z": 1.0},
        compressor="top_k",
        compressor_options={"k": 0.1},
        algorithm="byz_ef21",
        algorithm_options={"init": "zeros"},
        defence=("arc", "nnm", "krum"),
        defence_options={"krum": {}},
    )
    assert nested == flat and nested.to_dict() == flat.to_dict()
    assert Config(attack={"name": "ipm"}).attack_options == {}
    with pytest.raises(ValueError, match="give them once"):
        Config(attack={"name": "alie", "options": {"z": 1}}, attack_options={"z": 2})
    with pytest.raises(ValueError, match="give them once"):
        Config(defence=[{"name": "krum", "options": {}}], defence_options={"krum": {}})
    with pytest.raises(ValueError, match=r"nested form needs \{name"):
        Config(compressor={"kind": "top_k"})
    with pytest.raises(ValueError, match="unknown option.* q for aggregator 'median'"):
        Config(defence=[{"name": "median", "options": {"q": 1}}])


def test_replace_with_a_nested_component_replaces_its_options():
    config = Config(attack="alie", attack_options={"z": 1.0}, defence_options={"krum": {}})
    assert config.replace(attack={"name": "ipm", "options": {"epsilon": 0.5}}).attack_options == {
        "epsilon": 0.5
    }
    assert config.replace(attack={"name": "ipm"}).attack_options == {}
    assert config.replace(attack="alie").attack_options == {"z": 1.0}  # flat: options stay
    assert config.replace(defence=["nnm", {"name": "krum"}]).defence_options == {}


def test_text_values_read_as_flags_write_them():
    config = Config.from_dict(
        {
            "defence": "arc,nnm,trimmed_mean",
            "attack_options": "{points: 8}",
            "clients_per_round": "none",
            "declared_f": "null",
            "alpha": "0.5",
            "num_honest": "7",
            "defence_options": "{krum: {}}",
        }
    )
    assert config.defence == ("arc", "nnm", "trimmed_mean")
    assert config.attack_options == {"points": 8}
    assert config.clients_per_round is None and config.declared_f is None
    assert (config.alpha, config.num_honest) == (0.5, 7)
    assert config.defence_options == {"krum": {}}
    assert coerce("alpha", "1.0") == 1.0 and coerce("defence", "nnm median") == ("nnm", "median")
    with pytest.raises(ValueError, match="config field alpha needs a float"):
        coerce("alpha", "abc")
    with pytest.raises(ValueError, match="unknown config field"):
        coerce("bogus", 1)


def test_yaml_round_trip(tmp_path):
    config = Config(
        attack={"name": "alie", "options": {"z": 1.0}},
        defence=["arc", "nnm", {"name": "krum", "options": {}}],
        clients_per_round=6,
    )
    path = tmp_path / "c.yaml"
    path.write_text(config.to_yaml())
    assert Config.from_yaml(str(path)) == config
    assert yaml.safe_load(config.to_yaml())["defence"] == ["arc", "nnm", "krum"]
    assert set(field_types()) == set(Config.model_fields)


# --------------------------------------------------------------------------
# The experiments, the sweep's program groups and the CLI
# --------------------------------------------------------------------------


def experiment_files() -> list[str]:
    found = glob.glob(os.path.join(ROOT, "experiments", "**", "*.yaml"), recursive=True)
    return sorted(os.path.relpath(p, ROOT) for p in found)


def test_there_are_experiment_files():
    files = experiment_files()
    assert len(files) > 20
    assert any("sweep.yaml" in f for f in files) and any("config.yaml" in f for f in files)


@pytest.mark.parametrize("path", experiment_files())
def test_every_experiment_file_loads_unchanged(path):
    """A config loads and validates; a sweep file's base loads and every grid point validates."""
    full = os.path.join(ROOT, path)
    with open(full) as fh:
        values = yaml.safe_load(fh)
    if "grid" in values:
        spec = sweep.Sweep.from_yaml(full)
        base = {k: v for k, v in values.items() if k != "grid"}
        assert Config.from_dict(base) == spec.base
        assert spec.units()  # each unit is validated (Config.validate) as it is made
    else:
        config = Config.from_yaml(full).validate()
        for name, value in values.items():  # as written, field by field
            assert config.to_dict()[name] == value, name


def test_vmapped_fields_come_from_the_declarations():
    assert sweep.VMAPPED == vmapped_fields()
    assert set(sweep.VMAPPED) == {
        "seed",
        "seeds",
        "lr",
        "momentum",
        "weight_decay",
        "heterogeneity",
        "alpha",
        "gamma",
        "shards_per_worker",
        "heterogeneity_options",
    }
    config = Config()
    assert sweep.structure(config) == sweep.structure(config.replace(lr=0.5, alpha=0.2, seed=3))
    assert sweep.structure(config) != sweep.structure(config.replace(batch_size=5))


def test_help_lists_every_field_with_type_default_and_description(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, info in Config.model_fields.items():
        if name == "plugins":
            assert "--plugin MODULE" in text
            continue
        flag = "--" + name.replace("_", "-")
        assert flag in text, flag
        assert " ".join(info.description.split()) in text, name
    assert "--lr FLOAT server learning rate" in text and "float, lr >= 0.0; default: 0.1]" in text
    assert "--defence NAMES" in text and "default: nnm,trimmed_mean]" in text
    assert "--clients-per-round INT" in text and "int or none, clients_per_round >= 1" in text


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {"attack": {"name": "alie", "options": {"z": 1.0}}, "lr": 0.3, "clients_per_round": 5}
        )
    )
    parse = cli.parser().parse_args
    config = cli.resolve_config(
        parse(
            [
                "run",
                "--config",
                str(path),
                "--defence",
                "arc,nnm,trimmed_mean",
                "--clients-per-round",
                "none",
                "--num-honest",
                "6",
            ]
        )
    )
    assert config.defence == ("arc", "nnm", "trimmed_mean") and config.clients_per_round is None
    assert (config.attack, config.attack_options, config.lr) == ("alie", {"z": 1.0}, 0.3)
    assert config.num_honest == 6
    config = cli.resolve_config(
        parse(["run", "--config", str(path), "--attack", "{name: ipm, options: {epsilon: 0.5}}"])
    )
    assert (config.attack, config.attack_options) == ("ipm", {"epsilon": 0.5})
    config = cli.resolve_config(
        parse(["demo", "--attack", "alie_aware", "--attack-options", "{points: 8}"])
    )
    assert config.attack_options == {"points": 8}
    with pytest.raises(ValueError, match="needs to be a multiple of eval_every"):
        cli.resolve_config(parse(["run", "--steps", "25"]))


def test_cli_reports_bad_values_with_the_field(capsys):
    assert cli.main(["run", "--momentum", "1.5"]) == 2
    assert "momentum needs 0.0 <= momentum < 1.0, got momentum=1.5" in capsys.readouterr().err
    assert cli.main(["run", "--defence", "nnm"]) == 2
    assert "defence must end with an aggregator" in capsys.readouterr().err
