"""The typed configuration of a simulated run, readable from YAML, flags and sweeps.

:class:`Config` is a frozen pydantic model. Every field declares what it
accepts (a range, a registry of names, a type), and the command-line flags
(:mod:`jaxrobust.cli`) and the fields a sweep may vary inside one compiled
program (:data:`jaxrobust.run.sweep.VMAPPED`) are generated from these
declarations.

Checks happen in two stages:

- at construction (``Config(...)``, :meth:`Config.from_dict`,
  :meth:`Config.replace`), each field on its own: its type, its range and,
  for component names, that the name is registered
  (:func:`jaxrobust.core.registry`);
- in :meth:`Config.validate`, the settings that depend on each other:
  ``steps`` a multiple of ``eval_every``, ``clients_per_round <= n``,
  ``local_steps > 1`` only for ``dsgd``, and component options against the
  component they configure (``attack_options`` for ``attack``,
  ``compressor_options`` for ``compressor``). A sweep's base may leave these
  to its grid points.

Both raise a ``ValueError`` (:class:`ConfigError`) naming the field, the value
given and what is allowed.

Components can be given flat (``attack: alie`` and ``attack_options: {z: 1}``)
or nested, each as ``{name, options}``::

    attack: {name: alie, options: {z: 1.0}}
    compressor: {name: top_k, options: {k: 0.1}}
    algorithm: {name: marina_pp, options: {clip_alpha: 1.0}}
    defence: [arc, {name: nnm}, {name: trimmed_mean, options: {}}]

The nested forms are stored as the flat fields (``defence``'s options go to
``defence_options``), which :meth:`Config.to_dict` writes.

``plugins`` lists modules (dotted names, or paths to ``.py`` files, relative
to the working directory) imported before any name is checked, so that
components they register with :func:`jaxrobust.register` can be named like
built-ins.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import os
import sys
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

import annotated_types
import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic_core import core_schema

from jaxrobust.core import check_defence, registry

__all__ = [
    "COMPONENTS",
    "Config",
    "ConfigError",
    "Registered",
    "Rules",
    "coerce",
    "describe",
    "field_types",
    "load_plugins",
    "grid_fields",
    "vmapped_fields",
]

#: Components that take ``{name, options}`` in nested form: field -> its options field.
COMPONENTS = {
    "attack": "attack_options",
    "compressor": "compressor_options",
    "algorithm": "algorithm_options",
    "heterogeneity": "heterogeneity_options",
}

#: Fields written by :meth:`Config.to_dict` only when not empty (added after the
#: first release; sweeps' run ids hash the written fields).
OMITTED_WHEN_EMPTY = (
    "plugins",
    "defence_options",
    "heterogeneity_options",
    "topology",
    "topology_options",
    "byzantine_placement",
    "gossip_weights",
)


class ConfigError(ValueError):
    """An impossible configuration; the message names the field, the value and what is allowed."""


# --------------------------------------------------------------------------
# Declarations: registered names and defence chains
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Registered:
    """Field metadata: the value is a name registered in the registry of ``kind``.

    Used as ``Annotated[str, Registered("attack")]``; the check runs after the
    type check, against the registry as it is then (built-ins plus whatever
    :func:`jaxrobust.register` added, e.g. from ``plugins``).
    """

    kind: str

    def check(self, name: str) -> str:
        registry(self.kind).entry(name)  # ValueError listing the names if unknown
        return name

    def allowed(self) -> str:
        return f"a registered {self.kind} name (see `jaxrobust list`)"

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        return core_schema.no_info_after_validator_function(self.check, handler(source))


@dataclasses.dataclass(frozen=True)
class Rules(Registered):
    """Field metadata: a defence chain, registered pre-aggregators first and one aggregator last."""

    kind: str = "aggregator"

    def check(self, names: tuple[str, ...]) -> tuple[str, ...]:
        return check_defence(names)

    def allowed(self) -> str:
        return "registered pre-aggregators, then one aggregator (see `jaxrobust list`)"


def _check_rule_options(value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    aggregators, pre = registry("aggregator"), registry("preaggregator")
    for rule, options in value.items():
        kind = pre if rule in pre else aggregators
        kind.check_options(rule, options)  # unknown rule or option: ValueError
    return value


class _RuleOptions:
    """Field metadata of ``defence_options``: rule names and their options, checked."""

    @staticmethod
    def allowed() -> str:
        return "a mapping from rule names to their options"

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        return core_schema.no_info_after_validator_function(_check_rule_options, handler(source))


@dataclasses.dataclass(frozen=True)
class _Topology(Registered):
    """Field metadata of ``topology``: a registered topology or a path to an existing file."""

    kind: str = "topology"

    def check(self, name: str | None) -> str | None:
        if name is not None and not os.path.isfile(name):
            registry("topology").entry(name)  # ValueError listing the names if unknown
        return name

    def allowed(self) -> str:
        return "a registered topology (see `jaxrobust list`) or a path to an adjacency matrix"


@dataclasses.dataclass(frozen=True)
class _Choice(Registered):
    """Field metadata: one of a fixed set of words (``kind`` names the field)."""

    choices: tuple[str, ...] = ()

    def check(self, value: str | None) -> str | None:
        if value is not None and value not in self.choices:
            raise ValueError(
                f"unknown {self.kind} {value!r}; choose one of: {', '.join(self.choices)}"
            )
        return value

    def allowed(self) -> str:
        return "one of " + ", ".join(self.choices)


def _vmapped(description: str) -> dict[str, Any]:
    return {"description": description, "json_schema_extra": {"vmapped": True}}


# --------------------------------------------------------------------------
# The configuration
# --------------------------------------------------------------------------


class Config(BaseModel):
    """One simulated configuration of Robust D-SGD with worker momentum (or another algorithm).

    Every field is read as a flat attribute (``config.attack``,
    ``config.defence``, ...); the configuration is immutable (derive others
    with :meth:`replace`). ``defence`` lists rules in the order they are
    applied to the received vectors: ``["arc", "nnm", "trimmed_mean"]`` is
    ``CWTM o NNM o ARC``. ``declared_f`` is the ``f`` the defence is told
    (``None``: the real number of Byzantine workers). The fields, their
    ranges and descriptions are listed by ``jaxrobust run --help``.

    Raises
    ------
    ConfigError
        (a ``ValueError``) at construction, for a value outside its field's
        declared range or an unknown name; see :meth:`validate` for the checks
        across fields.

    Examples
    --------
    >>> config = Config(attack={"name": "alie", "options": {"z": 1.0}}, defence="nnm,median")
    >>> config.attack, config.attack_options, config.defence
    ('alie', {'z': 1.0}, ('nnm', 'median'))
    >>> Config(lr=-1.0)
    Traceback (most recent call last):
    ...
    jaxrobust.config.ConfigError: lr needs to be >= 0.0, got lr=-1.0
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        protected_namespaces=(),
        validate_default=False,
    )

    # data
    dataset: str = Field(
        "digits", min_length=1, description="data set: a registered name or any TFDS name"
    )
    data_dir: str | None = Field(
        None, min_length=1, description="directory of local data files (none: download or cache)"
    )
    max_train: int | None = Field(
        None, ge=1, description="keep at most this many training examples (none: all)"
    )
    max_test: int | None = Field(
        None, ge=1, description="keep at most this many test examples (none: all)"
    )
    data_seed: int = Field(
        0, ge=0, description="seed of the held-out split and subsampling, shared by all run seeds"
    )
    validation: float = Field(
        0.0, ge=0.0, lt=1.0, description="fraction of the training set held out for validation"
    )
    heterogeneity: Annotated[str, Registered("heterogeneity")] = Field(
        "iid", **_vmapped("how the training data is split over the honest workers")
    )
    alpha: float = Field(1.0, gt=0.0, **_vmapped("Dirichlet concentration (dirichlet scheme)"))
    gamma: float = Field(
        0.5, ge=0.0, le=1.0, **_vmapped("fraction split iid (gamma_similarity scheme)")
    )
    shards_per_worker: int = Field(2, ge=1, **_vmapped("label shards per worker (shards scheme)"))
    heterogeneity_options: dict[str, Any] = Field(
        default_factory=dict,
        **_vmapped("further options of the heterogeneity scheme (e.g. a registered user scheme)"),
    )
    # model
    model: Annotated[str, Registered("model")] = Field("mlp", description="the model to train")
    l2: float = Field(0.0, ge=0.0, description="l2 penalty added to the loss")
    # workers and attack
    num_honest: int = Field(10, ge=1, description="honest workers")
    num_byzantine: int = Field(3, ge=0, description="Byzantine workers")
    declared_f: int | None = Field(
        None, ge=0, description="the f the defence is told (none: num_byzantine)"
    )
    attack: Annotated[str, Registered("attack")] = Field(
        "sign_flip", description="what the Byzantine workers send"
    )
    attack_options: dict[str, Any] = Field(
        default_factory=dict,
        description="options of the attack, or a mapping from attack names to options",
    )
    # algorithm
    algorithm: Annotated[str, Registered("algorithm")] = Field(
        "dsgd", description="training algorithm (dsgd: Robust D-SGD with worker momentum)"
    )
    algorithm_options: dict[str, Any] = Field(
        default_factory=dict, description="options of the algorithm (checked by the algorithm)"
    )
    clients_per_round: int | None = Field(
        None, ge=1, description="partial participation: clients sampled per round (none: all)"
    )
    clipping_heuristic: float | None = Field(
        None, gt=0.0, description="lambda of the partial-participation clipping heuristic (dsgd)"
    )
    local_steps: int = Field(1, ge=1, description="local SGD steps per round (dsgd)")
    local_lr: float | None = Field(
        None, gt=0.0, description="the clients' learning rate of local steps (none: lr)"
    )
    # decentralized algorithms (the communication graph)
    topology: Annotated[str | None, _Topology()] = Field(
        None,
        description="graph of a decentralized algorithm: a registered topology or a path to "
        "an adjacency matrix (none: complete)",
    )
    topology_options: dict[str, Any] = Field(
        default_factory=dict, description="options of the topology, e.g. {p: 0.3}"
    )
    byzantine_placement: Annotated[
        str | None, _Choice("byzantine_placement", ("random", "highest_degree"))
    ] = Field(None, description="which nodes are Byzantine (none: random, seeded by data_seed)")
    gossip_weights: Annotated[str | None, _Choice("gossip_weights", ("metropolis", "uniform"))] = (
        Field(None, description="gossip weights of the graph (none: metropolis)")
    )
    compressor: Annotated[str, Registered("compressor")] = Field(
        "identity", description="compression of the worker messages"
    )
    compressor_options: dict[str, Any] = Field(
        default_factory=dict, description="options of the compressor"
    )
    # defence
    defence: Annotated[tuple[str, ...], Rules()] = Field(
        ("nnm", "trimmed_mean"),
        description="rules in the order applied, e.g. arc,nnm,trimmed_mean",
    )
    clip_norm: float | None = Field(
        2.0, gt=0.0, description="clipping norm of the clip rule (none: the median norm)"
    )
    bucket_size: int = Field(2, ge=1, description="bucket size of the bucketing rule")
    cc_tau: float | None = Field(
        10.0, gt=0.0, description="radius of centered_clipping (none: the median distance)"
    )
    defence_options: Annotated[dict[str, dict[str, Any]], _RuleOptions()] = Field(
        default_factory=dict, description="per rule, its options: {rule: {option: value}}"
    )
    # optimisation
    steps: int = Field(300, ge=1, description="rounds of training")
    batch_size: int = Field(25, ge=1, description="examples per worker and step")
    lr: float = Field(0.1, ge=0.0, **_vmapped("server learning rate (0 keeps the model fixed)"))
    lr_schedule: Annotated[str, Registered("lr_schedule")] = Field(
        "constant", description="learning-rate schedule (a factor of lr)"
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0, **_vmapped("worker momentum"))
    weight_decay: float = Field(0.0, ge=0.0, **_vmapped("weight decay of the server update"))
    # bookkeeping
    eval_every: int = Field(50, ge=1, description="steps between evaluations")
    seeds: int = Field(1, ge=1, **_vmapped("independent seeds, run as one vmapped program"))
    seed: int = Field(0, ge=0, **_vmapped("first seed (seeds seed, seed + 1, ...)"))
    plugins: tuple[str, ...] = Field(
        (),
        description="modules (dotted names or .py paths) imported first, to register components",
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as err:
            raise ConfigError(explain(err)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise ConfigError(f"a Config is immutable; use config.replace({name}=...)")

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, values: Any) -> Any:
        """Import plugins, flatten nested components and read strings from flags or YAML."""
        if not isinstance(values, Mapping):
            return values
        values = dict(values)
        if "plugins" in values:
            values["plugins"] = _plugin_list(values["plugins"])
            load_plugins(values["plugins"])
        for name in values:
            if name in cls.model_fields:
                values[name] = _from_text(name, values[name])
        for name, options_field in COMPONENTS.items():
            if isinstance(values.get(name), Mapping):
                component, options = _nested(name, values[name])
                values[name] = component
                if options is not None:
                    if values.get(options_field):
                        raise ValueError(
                            f"{name} {component!r} has options in both its nested form and "
                            f"{options_field}; give them once"
                        )
                    values[options_field] = options
        if isinstance(values.get("defence"), list | tuple):
            names, per_rule = [], dict(values.get("defence_options") or {})
            for item in values["defence"]:
                if not isinstance(item, Mapping):
                    names.append(item)
                    continue
                rule, options = _nested("defence", item)
                names.append(rule)
                if options is not None:
                    if rule in per_rule:
                        raise ValueError(
                            f"rule {rule!r} has options in both its nested form and "
                            "defence_options; give them once"
                        )
                    per_rule[rule] = options
            values["defence"] = tuple(names)
            if per_rule:
                values["defence_options"] = per_rule
        return values

    # -- derived numbers -----------------------------------------------------
    @property
    def defence_f(self) -> int:
        """The ``f`` the defence is built with: ``declared_f``, else the real number."""
        return self.num_byzantine if self.declared_f is None else self.declared_f

    @property
    def num_workers(self) -> int:
        """Workers in all: honest and Byzantine."""
        return self.num_honest + self.num_byzantine

    @property
    def received_count(self) -> int:
        """Vectors the server receives per round: ``clients_per_round``, else every worker."""
        return self.num_workers if self.clients_per_round is None else self.clients_per_round

    # -- checks across fields --------------------------------------------------
    def validate(self) -> Config:  # type: ignore[override]
        """Check the settings that depend on each other; return ``self``.

        Raises
        ------
        ConfigError
            (a ``ValueError``) naming the fields and the bound: ``steps`` not a
            multiple of ``eval_every``, ``clients_per_round`` above the number
            of workers, ``local_steps > 1`` with an algorithm other than
            ``dsgd``, options a component does not take, or an ``(n, f)`` the
            attack's defaults cannot take
            (:func:`jaxrobust.attacks.check_config_bounds`). Graph fields
            (``topology``, ``topology_options``, ``byzantine_placement``,
            ``gossip_weights``) or a per-edge attack with a server algorithm;
            for a decentralized algorithm, its check (the graph is built, and
            a rule or attack bound failing in a node's neighbourhood names the
            node and its degree). A server rule's bound is checked when the
            defence is built, before anything runs.
        """
        if self.steps % self.eval_every:
            fit = max(
                d for d in range(1, min(self.eval_every, self.steps) + 1) if not self.steps % d
            )
            raise ConfigError(
                f"steps needs to be a multiple of eval_every, got steps={self.steps}, "
                f"eval_every={self.eval_every} (set eval_every too, e.g. eval_every={fit}: "
                f"--eval-every {fit})"
            )
        if self.clients_per_round is not None and self.clients_per_round > self.num_workers:
            raise ConfigError(
                f"clients_per_round needs 1 <= clients_per_round <= n, got "
                f"clients_per_round={self.clients_per_round}, n={self.num_workers}"
            )
        local = [n for n, f in registry("algorithm").items() if getattr(f, "local_steps", False)]
        if self.local_steps > 1 and self.algorithm not in local:
            raise ConfigError(
                f"local_steps > 1 is an option of algorithm {', '.join(local)}, "
                f"got algorithm={self.algorithm!r}"
            )
        checks = {
            "attack_options": self._check_attack_options,
            "compressor_options": lambda: registry("compressor").check_options(
                self.compressor, self.compressor_options
            ),
            "algorithm_options": lambda: registry("algorithm").check_options(
                self.algorithm, self.algorithm_options
            ),
            "heterogeneity_options": lambda: registry("heterogeneity").check_options(
                self.heterogeneity, self.heterogeneity_options
            ),
        }
        for field, check in checks.items():
            try:
                check()
            except ValueError as err:  # named: the field, its value, then what is allowed
                raise ConfigError(f"{field}={getattr(self, field)!r}: {err}") from None
        try:
            importlib.import_module("jaxrobust.attacks").check_config_bounds(self)
            self._check_decentralized()
        except ValueError as err:
            raise ConfigError(str(err)) from None
        return self

    def _check_decentralized(self) -> None:
        """Graph fields only with a decentralized algorithm, whose check builds the graph."""
        factory = registry("algorithm").entry(self.algorithm).factory
        attack = registry("attack").entry(self.attack).factory
        graph_fields = [
            f"{name}={getattr(self, name)!r}"
            for name in ("topology", "topology_options", "byzantine_placement", "gossip_weights")
            if getattr(self, name)
        ]
        decentralized = [
            n for n, f in registry("algorithm").items() if getattr(f, "decentralized", False)
        ]
        if not getattr(factory, "decentralized", False):
            if graph_fields:
                raise ValueError(
                    f"{', '.join(graph_fields)} configure decentralized algorithms "
                    f"({', '.join(decentralized)}), got algorithm={self.algorithm!r}"
                )
            if getattr(attack, "per_edge", False) and self.num_byzantine > 0:
                raise ValueError(
                    f"attack {self.attack!r} is sent per edge of a graph: it needs a "
                    f"decentralized algorithm ({', '.join(decentralized)}), "
                    f"got algorithm={self.algorithm!r}"
                )
            return
        factory.check(self)  # builds the graph; a rule's bound names the node and its degree

    def _check_attack_options(self) -> None:
        attacks = registry("attack")
        options = self.attack_options
        per_attack = [k for k, v in options.items() if k in attacks and isinstance(v, Mapping)]
        if not per_attack:
            attacks.check_options(self.attack, options)
            return
        if len(per_attack) != len(options):
            raise ValueError(
                "attack_options mixes per-attack entries "
                f"({', '.join(per_attack)}) with plain arguments "
                f"({', '.join(k for k in options if k not in per_attack)}); use one form"
            )
        for name in per_attack:
            attacks.check_options(name, options[name])

    # -- copies and serialisation ------------------------------------------------
    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` (flat or nested component forms), checked like a new config.

        A component given in nested form replaces that component's options
        (``replace(attack={"name": "ipm"})`` drops the old ``attack_options``).
        """
        unknown = sorted(set(changes) - set(type(self).model_fields))
        if unknown:
            raise ConfigError(_unknown_fields(unknown))
        values = self._stored()
        for name, options_field in COMPONENTS.items():
            if isinstance(changes.get(name), Mapping) and options_field not in changes:
                values[options_field] = {}
        if isinstance(changes.get("defence"), list | tuple) and "defence_options" not in changes:
            nested = {item.get("name") for item in changes["defence"] if isinstance(item, Mapping)}
            values["defence_options"] = {
                k: v for k, v in values["defence_options"].items() if k not in nested
            }
        return type(self)(**{**values, **changes})

    def _stored(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in type(self).model_fields}

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain YAML-ready values (tuples as lists), in declaration order.

        The fields added since the first release (:data:`OMITTED_WHEN_EMPTY`:
        ``plugins``, ``defence_options``, ``heterogeneity_options``) are left out
        when empty, so that configurations without them write (and hash, for a
        sweep's run ids) as before the fields existed.
        """
        out = self.model_dump()
        out["defence"] = list(self.defence)
        for name in OMITTED_WHEN_EMPTY:
            if out[name]:
                out[name] = list(out[name]) if name == "plugins" else out[name]
            else:
                del out[name]
        return out

    def to_yaml(self) -> str:
        """:meth:`to_dict` as YAML."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Config:
        """A configuration from a mapping of fields (flat or nested forms, strings from flags).

        Raises
        ------
        ConfigError
            For unknown fields (the message lists the valid ones) or bad values.
        """
        if not isinstance(values, Mapping):
            raise ConfigError(f"a config must be a mapping of fields, got {values!r}")
        unknown = sorted(set(values) - set(cls.model_fields))
        if unknown:
            raise ConfigError(_unknown_fields(unknown))
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str) -> Config:
        """A configuration from a YAML file of fields (see :meth:`from_dict`)."""
        with open(path) as fh:
            values = yaml.safe_load(fh) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path} must hold a mapping of config fields")
        return cls.from_dict(values)


# --------------------------------------------------------------------------
# Reading values
# --------------------------------------------------------------------------


def _nested(field: str, value: Mapping[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    """``(name, options)`` of a component in nested form ``{name, options}``."""
    extra = sorted(set(value) - {"name", "options"})
    if "name" not in value or extra:
        raise ValueError(
            f"{field} in nested form needs {{name: ..., options: {{...}}}} (options optional), "
            f"got {dict(value)!r}"
        )
    options = value.get("options")
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"options of {field} {value['name']!r} need a mapping, got {options!r}")
    return value["name"], None if options is None else dict(options)


def _allows_none(name: str) -> bool:
    annotation = Config.model_fields[name].annotation
    return type(None) in typing.get_args(annotation)


def _base_type(name: str) -> Any:
    annotation = Config.model_fields[name].annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return args[0] if union and args else annotation


def _from_text(name: str, value: Any) -> Any:
    """Read a string from a flag (or a plain YAML string) as the field's type needs."""
    if not isinstance(value, str):
        if value is None and typing.get_origin(_base_type(name)) is dict:
            return {}
        return value
    base = _base_type(name)
    origin = typing.get_origin(base) or base
    text = value.strip()
    if text.lower() in ("none", "null") and _allows_none(name):
        return None
    if origin is dict or (name in COMPONENTS and text.startswith("{")):
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"config field {name} needs a YAML mapping, got {value!r}") from err
        return {} if loaded is None and origin is dict else loaded
    if origin is tuple:
        if text.startswith("["):
            return yaml.safe_load(text)
        return tuple(text.replace(",", " ").split())
    if origin in (int, float):
        try:
            return origin(text)
        except ValueError:
            return value  # rejected by the type check, which names the field
    return value


def _plugin_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.replace(",", " ").split())
    if isinstance(value, Iterable) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"plugins needs a list of module names or .py paths, got {value!r}")


_PLUGINS: dict[str, types.ModuleType] = {}


def load_plugins(plugins: Iterable[str]) -> list[types.ModuleType]:
    """Import the modules ``plugins`` (dotted names, or paths to ``.py`` files), once each.

    A plugin registers its components with :func:`jaxrobust.register` when
    imported. Dotted names are looked up on the Python path and, last, in the
    working directory (as ``python -m`` would). A file is imported under its
    own name when that name would import the same file (so that ``import
    plugin`` elsewhere does not register everything twice), else under a
    private name.

    Raises
    ------
    ValueError
        If a module cannot be found.
    """
    out = []
    for plugin in plugins:
        if plugin not in _PLUGINS:
            is_path = plugin.endswith(".py") or os.sep in plugin or "/" in plugin
            _PLUGINS[plugin] = _import_file(plugin) if is_path else _import_module(plugin)
        out.append(_PLUGINS[plugin])
    return out


def _import_module(name: str) -> types.ModuleType:
    # As ``python -m`` does, the working directory is on the path: ``--plugin my_plugins``
    # finds ./my_plugins.py from the installed ``jaxrobust`` command too.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is not None and name.startswith(err.name):
            raise ValueError(
                f"plugin {name!r}: no module named {err.name!r} (give a dotted module name on "
                "the Python path, or a path to a .py file)"
            ) from None
        raise


def _import_file(path: str) -> types.ModuleType:
    full = os.path.realpath(path)
    if not os.path.isfile(full):
        raise ValueError(f"plugin {path!r}: no such file (from {os.getcwd()})")
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and os.path.realpath(file) == full:
            return module
    stem = os.path.splitext(os.path.basename(full))[0]
    name = f"jaxrobust_plugin_{stem}_{hashlib.sha1(full.encode()).hexdigest()[:8]}"
    if stem.isidentifier() and stem not in sys.modules:
        try:
            found = importlib.util.find_spec(stem)
        except (ImportError, ValueError):
            found = None
        if found is not None and found.origin and os.path.realpath(found.origin) == full:
            name = stem
    spec = importlib.util.spec_from_file_location(name, full)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


# --------------------------------------------------------------------------
# Declarations as text, errors as sentences
# --------------------------------------------------------------------------


def _bounds(name: str) -> dict[str, Any]:
    out = {}
    for item in Config.model_fields[name].metadata:
        for key in ("ge", "gt", "le", "lt", "min_length"):
            if isinstance(item, annotated_types.BaseMetadata) and hasattr(item, key):
                out[key] = getattr(item, key)
    return out


def _range(name: str) -> str | None:
    """``"lr >= 0"``-like text of a field's bounds, or None."""
    b = _bounds(name)
    low = (f"{b['ge']} <= ", ">= ", b["ge"]) if "ge" in b else None
    low = (f"{b['gt']} < ", "> ", b["gt"]) if "gt" in b else low
    high = (f" <= {b['le']}", "<= ", b["le"]) if "le" in b else None
    high = (f" < {b['lt']}", "< ", b["lt"]) if "lt" in b else high
    if low and high:
        return f"{low[0]}{name}{high[0]}"
    if low or high:
        op, bound = (low or high)[1:]
        return f"{name} {op}{bound}"
    return None


def type_name(name: str) -> str:
    """The field's type in words: ``int``, ``float or none``, ``list of str``, ``mapping``."""
    base = _base_type(name)
    origin = typing.get_origin(base) or base
    text = {dict: "mapping", tuple: "list of str"}.get(origin, getattr(origin, "__name__", "value"))
    return f"{text} or none" if _allows_none(name) else text


def describe(name: str) -> str:
    """What field ``name`` accepts, in words: its type, then its range or registry."""
    info = Config.model_fields[name]
    for item in info.metadata:
        if isinstance(item, Registered | _RuleOptions):
            return f"{type_name(name)}, {item.allowed()}"
    bounds = _range(name)
    return f"{type_name(name)}, {bounds}" if bounds else type_name(name)


def default_of(name: str) -> Any:
    """The field's default as :meth:`Config.to_dict` writes it."""
    info = Config.model_fields[name]
    value = info.get_default(call_default_factory=True)
    return list(value) if isinstance(value, tuple) else value


def field_types() -> dict[str, Any]:
    """Every field's type annotation, in declaration order."""
    return {name: info.annotation for name, info in Config.model_fields.items()}


def grid_fields(grid: dict[str, Any]) -> list[str]:
    """Config fields a grid sets, in grid order: plain axes, and every field of a
    linked axis (in order of first appearance in its mappings).

    Works on a :class:`jaxrobust.run.sweep.Sweep`'s grid and on the ``grid`` of a ``sweep.yaml`` as
    written to a sweep's directory (what :mod:`jaxrobust.report` reads).

    Examples
    --------
    >>> grid_fields({
    ...     "lr": [0.05, 0.1],
    ...     "partition": [
    ...         {"heterogeneity": "dirichlet", "alpha": 0.1},
    ...         {"heterogeneity": "extreme"},
    ...     ],
    ... })
    ['lr', 'heterogeneity', 'alpha']
    """
    names = set(field_types())
    out: list[str] = []
    for name, options in grid.items():
        if name in names or not isinstance(options, list):
            out.append(name)
        else:
            out.extend(k for mapping in options if isinstance(mapping, dict) for k in mapping)
    return list(dict.fromkeys(out))


def vmapped_fields() -> tuple[str, ...]:
    """Fields declared ``vmapped``: those that may differ between runs of one compiled program.

    They are numbers in the run state (seeds, learning rate, momentum, weight
    decay) and the partition of the data over the workers (the scheme and its
    parameters), which enters the program as each run's index table; nothing
    built from a configuration reads them.
    """
    return tuple(
        name
        for name, info in Config.model_fields.items()
        if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("vmapped")
    )


def _adapter(name: str) -> TypeAdapter:
    info = Config.model_fields[name]
    if name not in _ADAPTERS:
        kind = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        _ADAPTERS[name] = TypeAdapter(kind)
    return _ADAPTERS[name]


_ADAPTERS: dict[str, TypeAdapter] = {}


def coerce(name: str, value: Any) -> Any:
    """One field's value from YAML or a flag, checked against its declaration.

    Raises
    ------
    ConfigError
        For an unknown field or a value it does not accept.
    """
    if name not in Config.model_fields:
        raise ConfigError(_unknown_fields([name]))
    try:
        return _adapter(name).validate_python(_from_text(name, value))
    except ValidationError as err:
        raise ConfigError(explain(err, field=name)) from None
    except ValueError as err:
        raise ConfigError(f"{name}={value!r}: {err}") from None


def _unknown_fields(names: Iterable[str]) -> str:
    return (
        f"unknown config field(s) {', '.join(names)}; "
        f"valid fields: {', '.join(sorted(Config.model_fields))}"
    )


_TYPE_ERRORS = ("_type", "_parsing", "int_from_float", "finite_number")
_BOUND_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def explain(err: ValidationError, field: str | None = None) -> str:
    """A pydantic ``ValidationError`` as sentences naming field, value and what is allowed."""
    parts = []
    for error in err.errors(include_url=False):
        loc = tuple(error.get("loc", ()))
        name = field if field is not None else (str(loc[0]) if loc else None)
        where = name if name is not None else "config"
        where += "".join(f"[{p!r}]" for p in loc[1 if field is None else 0 :])
        value, kind = error.get("input"), error["type"]
        known = name in Config.model_fields
        if kind == "extra_forbidden":
            parts.append(_unknown_fields([where]))
        elif kind in _BOUND_ERRORS and known and len(loc) <= (0 if field else 1):
            parts.append(f"{where} needs {_needs(name)}, got {where}={value!r}")
        elif kind == "string_too_short" and known:
            parts.append(f"config field {where} needs a non-empty str, got {value!r}")
        elif kind.endswith(_TYPE_ERRORS) and known and len(loc) <= (0 if field else 1):
            extra = describe(name)
            extra = "" if extra == type_name(name) else f" ({extra.split(', ', 1)[-1]})"
            parts.append(f"config field {where} needs a {type_name(name)}{extra}, got {value!r}")
        elif kind == "value_error":
            message = str(error.get("ctx", {}).get("error", error["msg"]))
            parts.append(f"{where}={value!r}: {message}" if name else message)
        else:
            parts.append(f"{where}={value!r}: {error['msg']}")
    return "; ".join(parts)


def _needs(name: str) -> str:
    text = _range(name) or ""
    if text.startswith(name + " "):  # one bound: "needs to be >= 1"
        return "to be " + text[len(name) + 1 :]
    return text
