"""The typed configuration of a simulated run, readable from YAML and flags."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import yaml


@dataclasses.dataclass(frozen=True)
class Config:
    """One simulated configuration of Robust D-SGD with worker momentum.

    ``defence`` lists rules in the order they are applied to the received
    vectors: ``["arc", "nnm", "trimmed_mean"]`` is ``CWTM o NNM o ARC``.
    ``declared_f`` is the ``f`` the defence is told (``None``: the real number
    of Byzantine workers).
    """

    # data
    dataset: str = "digits"
    data_dir: str | None = None
    max_train: int | None = None
    max_test: int | None = None
    data_seed: int = 0  # held-out split and subsampling; the same for every run seed
    validation: float = 0.0  # fraction of the training set held out for validation
    heterogeneity: str = "iid"
    alpha: float = 1.0
    gamma: float = 0.5
    shards_per_worker: int = 2
    # model
    model: str = "mlp"
    l2: float = 0.0
    # workers and attack
    num_honest: int = 10
    num_byzantine: int = 3
    declared_f: int | None = None
    attack: str = "sign_flip"
    attack_options: dict = dataclasses.field(default_factory=dict)
    # algorithm (dsgd: Robust D-SGD with worker momentum; others in jaxrobust.algorithms)
    algorithm: str = "dsgd"
    algorithm_options: dict = dataclasses.field(default_factory=dict)
    clients_per_round: int | None = None  # partial participation: clients sampled per round
    clipping_heuristic: float | None = None  # lambda of the PP clipping heuristic (dsgd)
    local_steps: int = 1  # FedAvg-style local SGD steps per round (dsgd)
    local_lr: float | None = None  # the clients' learning rate (None: lr)
    compressor: str = "identity"
    compressor_options: dict = dataclasses.field(default_factory=dict)
    # defence
    defence: tuple[str, ...] = ("nnm", "trimmed_mean")
    clip_norm: float = 2.0
    bucket_size: int = 2
    cc_tau: float = 10.0
    defence_options: dict = dataclasses.field(default_factory=dict)  # {rule: {option: value}}
    # optimisation
    steps: int = 300
    batch_size: int = 25
    lr: float = 0.1
    lr_schedule: str = "constant"
    momentum: float = 0.9
    weight_decay: float = 0.0
    # bookkeeping
    eval_every: int = 50
    seeds: int = 1
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.defence, str):
            object.__setattr__(self, "defence", tuple(self.defence.replace(",", " ").split()))
        else:
            object.__setattr__(self, "defence", tuple(self.defence))

    @property
    def defence_f(self) -> int:
        """The ``f`` the defence is built with: ``declared_f``, else the real number."""
        return self.num_byzantine if self.declared_f is None else self.declared_f

    @property
    def num_workers(self) -> int:
        return self.num_honest + self.num_byzantine

    @property
    def received_count(self) -> int:
        """Vectors the server receives per round: ``clients_per_round``, else every worker."""
        return self.num_workers if self.clients_per_round is None else self.clients_per_round

    def validate(self) -> Config:
        """Raise ``ValueError`` naming the bound for impossible settings."""
        positive = ("num_honest", "steps", "batch_size", "eval_every", "seeds")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} needs to be >= 1, got {name}={getattr(self, name)}")
        for name in ("num_byzantine", "defence_f"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} needs to be >= 0, got {name}={getattr(self, name)}")
        if self.steps % self.eval_every:
            raise ValueError(
                f"steps needs to be a multiple of eval_every, got steps={self.steps}, "
                f"eval_every={self.eval_every}"
            )
        if self.clients_per_round is not None and not 1 <= self.clients_per_round <= (
            self.num_workers
        ):
            raise ValueError(
                f"clients_per_round needs 1 <= clients_per_round <= n, got "
                f"clients_per_round={self.clients_per_round}, n={self.num_workers}"
            )
        if self.local_steps < 1:
            raise ValueError(f"local_steps needs to be >= 1, got local_steps={self.local_steps}")
        if self.local_steps > 1 and self.algorithm != "dsgd":
            raise ValueError(
                f"local_steps > 1 is an option of algorithm dsgd, got algorithm={self.algorithm!r}"
            )
        if self.local_lr is not None and not self.local_lr > 0:
            raise ValueError(f"local_lr needs to be > 0, got local_lr={self.local_lr}")
        if not 0 <= self.validation < 1:
            raise ValueError(
                f"validation needs 0 <= validation < 1, got validation={self.validation}"
            )
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum needs 0 <= momentum < 1, got momentum={self.momentum}")
        return self

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["defence"] = list(self.defence)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(
                f"unknown config field(s) {', '.join(unknown)}; "
                f"valid fields: {', '.join(sorted(names))}"
            )
        return cls(**{k: coerce(k, v) for k, v in values.items()})

    @classmethod
    def from_yaml(cls, path: str) -> Config:
        with open(path) as fh:
            values = yaml.safe_load(fh) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a mapping of config fields")
        return cls.from_dict(values)


def field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def coerce(name: str, value: Any) -> Any:
    """Convert a YAML or command-line value to the field's type."""
    kind = field_types()[name]
    if value is None:
        return None
    if isinstance(value, str) and value.lower() in ("none", "null") and "None" in str(kind):
        return None
    origin = typing.get_origin(kind)
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    base = (
        args[0]
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None))
        else kind
    )
    if base is dict or typing.get_origin(base) is dict:
        return yaml.safe_load(value) if isinstance(value, str) else dict(value)
    if base is tuple or typing.get_origin(base) is tuple:
        if isinstance(value, str):
            return tuple(value.replace(",", " ").split())
        return tuple(value)
    if base is bool:
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    try:
        return base(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config field {name} needs a {base.__name__}, got {value!r}") from err
