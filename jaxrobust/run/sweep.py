"""Sweeps: a grid of configurations, run as few vmapped programs as possible.

A sweep file is a YAML mapping of config fields (the base) plus ``grid:``, a
mapping from field names to lists of values; the runs are the Cartesian
product, each with ``seeds`` seeds. A grid entry whose name is not a config
field is a *linked axis*: a list of mappings from config fields to values,
each mapping one value of the axis (fields it leaves out keep the base
value), for settings that only make sense together, such as a heterogeneity
scheme and its ``alpha``. Every field of a linked axis is a column of
``runs.csv`` (with each run's own value), as plain grid fields are; the
axis's name is not. A field is set by one grid entry only.

Runs whose programs have the same structure (everything but the fields of
:data:`VMAPPED`: per-run numbers and the data partition) form a group,
compiled once; a group's runs and seeds execute together as one
``vmap``-ed program, in batches of at most ``max_batch``, their partition
tables padded to the group's widest so that every batch has the same
shapes. Rows stream to ``runs.csv`` as batches finish; a sweep started again with the same command
skips the runs already complete and drops any partial rows of the others.

With more than one local device (GPUs, or CPU devices from
``XLA_FLAGS=--xla_force_host_platform_device_count=8``), every batch runs with
its run axis split over all of them (:mod:`jaxrobust.run.distributed`): each
device runs its own runs, with no communication; the batch is padded with
copies of its last unit to a multiple of the device count and the padded
rows are dropped. The rows equal those of one device (to float32 rounding).
Sharding is over this host's devices only: on several hosts, give each its own
part of the grid.

Example::

    dataset: digits
    steps: 200
    seeds: 3
    grid:
      attack: [sign_flip, alie]
      defence: [[mean], [nnm, trimmed_mean], [arc, nnm, trimmed_mean]]
      lr: [0.05, 0.1]
      partition:                # a linked axis: 3 values, not 2 x 2
        - {heterogeneity: dirichlet, alpha: 0.1}
        - {heterogeneity: dirichlet, alpha: 1.0}
        - {heterogeneity: extreme}    # alpha: the base value
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from jax.sharding import Mesh

from jaxrobust.algorithms.base import check_setting
from jaxrobust.config import (  # noqa: F401  (grid_fields re-exported)
    Config,
    coerce,
    field_types,
    grid_fields,
    load_plugins,
    vmapped_fields,
)
from jaxrobust.data import datasets
from jaxrobust.run import distributed, simulator

#: Config fields that may differ between runs of one program, as declared on
#: :class:`~jaxrobust.config.Config` (``vmapped`` fields, :func:`jaxrobust.config.vmapped_fields`):
#: numbers in the run state, and the partition of the data over the workers (the
#: ``heterogeneity`` scheme and its parameters), which enters the program as each run's
#: padded index table (:func:`jaxrobust.run.simulator.run_tables`); nothing built from a
#: config (:func:`jaxrobust.run.simulator.build`, :mod:`jaxrobust.algorithms`) reads them.
VMAPPED = vmapped_fields()


@dataclasses.dataclass(frozen=True)
class Unit:
    """One seed of one grid point: a row group of ``runs.csv``.

    Attributes
    ----------
    config : Config
        The run's configuration, with ``seeds=1`` and the unit's ``seed``.
    grid_values : dict
        The grid's fields and this point's values (the ``runs.csv`` cells).
    run_id : str
        Twelve hex digits of a hash of ``config``: the same configuration
        has the same id in every sweep.

    Examples
    --------
    >>> unit = Unit(Config(lr=0.05), {"lr": 0.05})
    >>> len(unit.run_id), unit.run_id == Unit(Config(lr=0.05), {}).run_id
    (12, True)
    >>> unit.run_id == Unit(Config(lr=0.1), {"lr": 0.1}).run_id
    False
    """

    config: Config  # with seeds=1 and the unit's seed
    grid_values: dict[str, Any]

    @property
    def run_id(self) -> str:
        """Twelve hex digits of a SHA-1 of the configuration (see the class's attributes).

        Examples
        --------
        >>> run_id = Unit(Config(), {}).run_id
        >>> len(run_id), set(run_id) <= set("0123456789abcdef")
        (12, True)
        """
        text = json.dumps(self.config.to_dict(), sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A base config and its grid: config field -> values, or linked axis -> mappings.

    A linked axis (a name that is not a config field) holds dicts of config
    fields, each one value of the axis; :meth:`fields` are the columns the
    grid adds to ``runs.csv``.

    Attributes
    ----------
    base : Config
        The fields shared by every run.
    grid : dict
        Config field -> list of values, or linked axis -> list of dicts of
        config fields.

    Examples
    --------
    Two learning rates times two partitions (a linked axis), two seeds each:

    >>> sweep = Sweep.from_dict({
    ...     "steps": 2,
    ...     "eval_every": 1,
    ...     "seeds": 2,
    ...     "grid": {
    ...         "lr": [0.05, 0.1],
    ...         "partition": [
    ...             {"heterogeneity": "dirichlet", "alpha": 0.1},
    ...             {"heterogeneity": "extreme"},
    ...         ],
    ...     },
    ... })
    >>> sweep.fields(), sweep.linked("partition"), sweep.linked("lr")
    (['lr', 'heterogeneity', 'alpha'], True, False)
    >>> units = sweep.units()
    >>> len(units)
    8
    >>> units[0].grid_values, units[0].config.seed, units[1].config.seed
    ({'lr': 0.05, 'heterogeneity': 'dirichlet', 'alpha': 0.1}, 0, 1)
    >>> units[2].grid_values  # alpha: the base value, written as a cell too
    {'lr': 0.05, 'heterogeneity': 'extreme', 'alpha': 1.0}
    """

    base: Config
    grid: dict[str, list]

    @classmethod
    def from_yaml(cls, path: str, plugins: Sequence[str] = ()) -> Sweep:
        """The sweep of a YAML file (see :meth:`from_dict`).

        Raises
        ------
        ValueError
            A file that does not hold a mapping, or as :meth:`from_dict`.
        FileNotFoundError
            No file at ``path``.

        Examples
        --------
        >>> import os, tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = os.path.join(tmp, "sweep.yaml")
        ...     with open(path, "w") as fh:
        ...         _ = fh.write("steps: 20\\ngrid:\\n  attack: [sign_flip, alie]\\n")
        ...     sweep = Sweep.from_yaml(path)
        >>> sweep.base.steps, sweep.grid
        (20, {'attack': ['sign_flip', 'alie']})
        """
        with open(path) as fh:
            values = yaml.safe_load(fh) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a mapping of config fields and a 'grid'")
        return cls.from_dict(values, plugins)

    @classmethod
    def from_dict(cls, values: dict[str, Any], plugins: Sequence[str] = ()) -> Sweep:
        """A sweep from config fields plus ``grid``.

        ``plugins`` (modules, as the ``plugins`` field) are imported first and
        added to the base's ``plugins``, as are those the mapping lists, so that
        the names they register may appear in the base and the grid.

        Raises
        ------
        ValueError
            An invalid base field or grid value, an empty grid axis, a
            malformed linked axis, or a field set by two grid entries.

        Examples
        --------
        >>> Sweep.from_dict({"steps": 20, "grid": {"lr": ["0.1", 0.2]}}).grid  # values coerced
        {'lr': [0.1, 0.2]}
        >>> Sweep.from_dict({"grid": {"alpha": [0.1], "partition": [{"alpha": 1.0}]}})
        Traceback (most recent call last):
        ...
        ValueError: grid field 'alpha' is set twice, by its own grid axis and by linked axis ...
        """
        values = dict(values)
        if plugins:
            listed = values.get("plugins") or []
            listed = listed.replace(",", " ").split() if isinstance(listed, str) else listed
            values["plugins"] = list(dict.fromkeys([*listed, *plugins]))
            load_plugins(values["plugins"])
        grid = values.pop("grid", {}) or {}
        if not isinstance(grid, dict):
            raise ValueError("'grid' must map config fields (or linked axes) to lists of values")
        base = Config.from_dict(values)
        fields = set(field_types())  # every field, also those to_dict leaves out when empty
        valid = ", ".join(sorted(fields))
        out: dict[str, list] = {}
        owner: dict[str, str] = {}  # grid field -> the axis that sets it
        for name, options in grid.items():
            if name in fields:
                if not isinstance(options, list) or not options:
                    raise ValueError(f"grid field {name!r} needs a non-empty list of values")
                out[name] = [coerce(name, v) for v in options]
                axis_fields = [name]
            else:
                out[name] = _linked_axis(name, options, fields, valid)
                axis_fields = list(dict.fromkeys(k for m in out[name] for k in m))
            for field in axis_fields:
                if field in owner:
                    where = [
                        "its own grid axis" if a == field else f"linked axis {a!r}"
                        for a in (owner[field], name)
                    ]
                    raise ValueError(
                        f"grid field {field!r} is set twice, by {where[0]} and by {where[1]}; "
                        "set each field in one grid entry only"
                    )
                owner[field] = name
        return cls(base, out)

    def linked(self, name: str) -> bool:
        """Whether grid entry ``name`` is a linked axis (a list of field mappings).

        Examples
        --------
        >>> sweep = Sweep.from_dict({"grid": {"lr": [0.1], "split": [{"alpha": 0.1}]}})
        >>> sweep.linked("lr"), sweep.linked("split")
        (False, True)
        """
        return name not in field_types()

    def fields(self) -> list[str]:
        """The config fields the grid sets, its ``runs.csv`` columns (:func:`grid_fields`).

        Examples
        --------
        >>> Sweep.from_dict({"grid": {"lr": [0.1], "split": [{"alpha": 0.1}]}}).fields()
        ['lr', 'alpha']
        """
        return grid_fields(self.grid)

    def units(self) -> list[Unit]:
        """Every (grid point, seed), in a fixed order.

        The grid's first entry varies slowest, the seed fastest.

        Raises
        ------
        ValueError
            A grid point whose configuration is invalid
            (:meth:`jaxrobust.config.Config.validate`).

        Examples
        --------
        >>> sweep = Sweep.from_dict({"seeds": 2, "grid": {"lr": [0.1, 0.2]}})
        >>> [(unit.config.lr, unit.config.seed, unit.config.seeds) for unit in sweep.units()]
        [(0.1, 0, 1), (0.1, 1, 1), (0.2, 0, 1), (0.2, 1, 1)]
        """
        names = list(self.grid)
        fields, linked = self.fields(), {k for k in names if self.linked(k)}
        out = []
        for combo in itertools.product(*(self.grid[k] for k in names)):
            point: dict[str, Any] = {}
            for name, value in zip(names, combo, strict=True):
                point.update(value if name in linked else {name: value})
            config = self.base.replace(**point)
            config.validate()
            cells = {k: _cell(getattr(config, k)) for k in fields}  # base where a link omits k
            for s in range(config.seeds):
                unit_config = config.replace(seed=config.seed + s, seeds=1)
                out.append(Unit(unit_config, cells))
        return out


def _linked_axis(name: str, options: Any, fields: set[str], valid: str) -> list[dict[str, Any]]:
    """A linked grid axis's mappings, checked and coerced (see the module docstring)."""
    expected = (
        "a linked axis: a non-empty list of mappings from config fields to values, e.g. "
        f"{name}: [{{heterogeneity: dirichlet, alpha: 0.1}}, {{heterogeneity: extreme}}]"
    )
    if not isinstance(options, list) or not all(isinstance(m, dict) for m in options):
        raise ValueError(
            f"unknown grid field {name!r}: not a config field (valid fields: {valid}), "
            f"so it must be {expected}"
        )
    if not options:
        raise ValueError(f"grid entry {name!r} is an empty list; expected {expected}")
    out = []
    for index, mapping in enumerate(options):
        if not mapping:
            raise ValueError(
                f"linked grid axis {name!r}: value {index} is an empty mapping; give it at "
                "least one config field (leave it out to use the base config)"
            )
        unknown = [k for k in mapping if k not in fields]
        if unknown:
            raise ValueError(
                f"linked grid axis {name!r}: unknown field(s) {', '.join(map(repr, unknown))} "
                f"in value {index}; valid fields: {valid}"
            )
        out.append({k: coerce(k, v) for k, v in mapping.items()})
    return out


def check_defences(units: Sequence[Unit]) -> None:
    """Check every defence of the grid once (each algorithm's :func:`check_setting`), so
    that a rule's bound (``krum needs n > 2f + 2``) fails the sweep before anything
    runs, not when its group comes up.

    Raises
    ------
    ValueError
        The first grid point whose setting an algorithm or a rule refuses.

    Examples
    --------
    >>> sweep = Sweep.from_dict(
    ...     {"num_honest": 3, "num_byzantine": 1, "grid": {"defence": ["median", "krum"]}}
    ... )
    >>> check_defences(sweep.units())
    Traceback (most recent call last):
    ...
    ValueError: grid point {'defence': 'krum'}: krum needs n > 2f + 2, got n=4, f=1; ...
    """
    seen = set()
    for unit in units:
        c = unit.config
        key = (c.algorithm, c.defence, c.received_count, c.defence_f, repr(c.algorithm_options))
        if key in seen:
            continue
        seen.add(key)
        try:
            check_setting(c)
        except ValueError as exc:
            raise ValueError(
                f"grid point {unit.grid_values}: {exc}; take it out of the grid"
            ) from None


def _cell(value: Any) -> Any:
    return " ".join(value) if isinstance(value, tuple) else value


def structure(config: Config) -> str:
    """What decides the compiled program: every field outside :data:`VMAPPED`.

    Returns
    -------
    str
        Those fields as sorted JSON: equal strings, one program.

    Examples
    --------
    >>> structure(Config(lr=0.05, seed=3)) == structure(Config(lr=0.1))
    True
    >>> structure(Config(defence="median")) == structure(Config(defence="mean"))
    False
    """
    values = {k: v for k, v in config.to_dict().items() if k not in VMAPPED}
    return json.dumps(values, sort_keys=True, default=str)


def groups(units: Sequence[Unit]) -> list[list[Unit]]:
    """Units grouped by program structure (:func:`structure`), in first-appearance order.

    Examples
    --------
    >>> sweep = Sweep.from_dict({"grid": {"defence": ["median", "mean"], "lr": [0.05, 0.1]}})
    >>> [[unit.grid_values for unit in group] for group in groups(sweep.units())]
    [[{'defence': 'median', 'lr': 0.05}, {'defence': 'median', 'lr': 0.1}],
     [{'defence': 'mean', 'lr': 0.05}, {'defence': 'mean', 'lr': 0.1}]]
    """
    out: dict[str, list[Unit]] = {}
    for unit in units:
        out.setdefault(structure(unit.config), []).append(unit)
    return list(out.values())


# --------------------------------------------------------------------------
# Running a batch of units as one program
# --------------------------------------------------------------------------


def table_width(units: Sequence[Unit], labels) -> int:
    """Columns of the widest partition table of ``units`` (its largest worker's examples).

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.repeat(np.arange(2), 10)
    >>> sweep = Sweep.from_dict(
    ...     {"num_honest": 4, "grid": {"heterogeneity": ["iid", "extreme"]}}
    ... )
    >>> table_width(sweep.units(), labels)  # 20 examples, 5 per worker in both
    5
    """
    return max(
        int(simulator.run_tables([(u.config, u.config.seed)], labels)[0].shape[-1]) for u in units
    )


def batch_states(
    units: Sequence[Unit],
    dataset: datasets.Dataset,
    init,
    mesh: Mesh | None = None,
    width: int | None = None,
) -> simulator.RunState:
    """Start states of several units: each its own seed, partition and hyperparameters.

    With ``mesh`` (:func:`jaxrobust.run.distributed.runs_mesh`), the states are
    built on and placed over its devices, the run axis split over them: the
    number of units must then be a multiple of the device count.

    ``width``: pad the partition tables to at least this many columns (each
    row cycling through its worker's own examples, as
    :func:`jaxrobust.run.simulator.run_tables` pads), so that batches of one group
    share their shapes and compiled program. Workers sample only their first
    ``sizes`` entries, so the padding changes no result.

    Parameters
    ----------
    units : sequence of Unit
        The runs, in order.
    dataset : Dataset
        The data set; its ``y_train`` is partitioned.
    init : callable
        ``init(keys, indices, sizes, hyper)``, the first of
        :func:`jaxrobust.run.simulator.compiled_run`'s results.
    mesh : Mesh, optional
        Shard the runs over its devices.
    width : int, optional
        The partition tables' least number of columns.

    Returns
    -------
    pytree
        ``init``'s result: the states, leaves with a leading run axis.

    Examples
    --------
    With the real ``init``, the result is the algorithm's stacked state;
    any function of the same arguments shows what ``init`` is given:

    >>> from jaxrobust.data import load_dataset
    >>> def show(keys, indices, sizes, hyper):
    ...     return keys.shape, indices.shape, sizes.tolist(), hyper.lr.tolist()
    >>> dataset = load_dataset("digits", max_train=200)
    >>> units = Sweep.from_dict({"num_honest": 4, "grid": {"lr": [0.5, 0.25]}}).units()
    >>> batch_states(units, dataset, show, width=64)  # 50 examples each, padded to 64
    ((2,), (2, 4, 64), [[50, 50, 50, 50], [50, 50, 50, 50]], [0.5, 0.25])
    """
    indices, sizes = simulator.run_tables(
        [(u.config, u.config.seed) for u in units], dataset.y_train
    )
    if width is not None and width > indices.shape[-1]:
        columns = np.arange(width)[None, None] % sizes[..., None]
        indices = np.take_along_axis(indices, columns, axis=-1)
    hyper = jax.tree_util.tree_map(
        lambda *v: jnp.stack(v), *[simulator.hyper_of(u.config) for u in units]
    )
    keys = jax.vmap(jax.random.key)(jnp.asarray([u.config.seed for u in units]))
    if mesh is None:
        return init(keys, indices, sizes, hyper)
    inputs = distributed.shard_runs((keys, indices, sizes, hyper), mesh)
    states = distributed.over_runs(init, mesh)(*inputs)
    return distributed.shard_runs(states, mesh)


def default_mesh() -> Mesh | None:
    """The mesh a sweep shards its runs over: this host's devices, or None if it has one.

    Returns
    -------
    Mesh or None
        A 1-D mesh with axis ``"runs"`` (:func:`jaxrobust.run.distributed.runs_mesh`).

    Examples
    --------
    >>> import jax
    >>> mesh = default_mesh()
    >>> mesh is None if jax.local_device_count() == 1 else mesh.axis_names == ("runs",)
    True
    """
    return distributed.runs_mesh() if jax.local_device_count() > 1 else None


def resolve_mesh(mesh: Mesh | None | str) -> Mesh | None:
    """``"auto"``: :func:`default_mesh`; a mesh or None: itself.

    Raises
    ------
    ValueError
        Another string, or a mesh whose axes are not ``("runs",)``.

    Examples
    --------
    >>> import jax
    >>> resolve_mesh(None) is None
    True
    >>> mesh = resolve_mesh("auto")  # default_mesh(): None on a single device
    >>> mesh is None if jax.local_device_count() == 1 else mesh.axis_names == ("runs",)
    True
    >>> resolve_mesh("all")
    Traceback (most recent call last):
    ...
    ValueError: mesh must be a Mesh, None or 'auto', got 'all'
    """
    if isinstance(mesh, str):
        if mesh != "auto":
            raise ValueError(f"mesh must be a Mesh, None or 'auto', got {mesh!r}")
        return default_mesh()
    if mesh is not None and tuple(mesh.axis_names) != (distributed.RUNS,):
        raise ValueError(f"expected a 1-D mesh with axis 'runs', got axes {mesh.axis_names}")
    return mesh


def iterate_batch(
    units: Sequence[Unit],
    dataset: datasets.Dataset,
    compiled,
    *,
    mesh: Mesh | None | str = "auto",
    width: int | None = None,
) -> Iterator[tuple[int, list[dict[str, Any]], simulator.RunState]]:
    """Run units together, yielding ``(step, rows, states)`` at every evaluation.

    ``mesh="auto"`` shards the runs over this host's devices when it has more
    than one (:func:`default_mesh`); ``None`` keeps them on the default
    device. When sharded, the batch is padded with copies of its last unit to
    a multiple of the device count; ``states`` include the padded runs, the
    rows do not. ``width``: the partition tables' columns (see
    :func:`batch_states`).

    Parameters
    ----------
    units : sequence of Unit
        The runs; all of one program structure (:func:`groups`).
    dataset : Dataset
        The data set, with its validation split if the runs ask for one.
    compiled : tuple
        ``(init, chunk, evaluate, simulation)`` of the units' program
        (:func:`jaxrobust.run.simulator.compiled_run`).
    mesh : Mesh, None or "auto"
        Where the runs go (:func:`resolve_mesh`).
    width : int, optional
        As in :func:`batch_states`.

    Yields
    ------
    step : int
        Rounds done.
    rows : list of dict
        One per unit: ``run_id``, the grid values, ``seed``, ``step`` and
        the measurements.
    states : pytree
        The stacked states, padded runs included.

    Examples
    --------
    :func:`run_sweep` runs a real algorithm this way. A stand-in for
    :func:`jaxrobust.run.simulator.compiled_run`'s result makes the rows easy
    to follow:

    >>> import jax
    >>> from types import SimpleNamespace
    >>> from jaxrobust.algorithms.base import RoundMetrics
    >>> from jaxrobust.data import load_dataset
    >>> from jaxrobust.run.simulator import scan_chunk
    >>> def init(keys, indices, sizes, hyper):  # a run's state: its learning rate
    ...     return hyper.lr
    >>> def step(lr):  # halve the rate; report the rate before
    ...     return lr / 2, RoundMetrics(lr, lr, lr, lr)
    >>> def evaluate(params):
    ...     return {"test_accuracy": 1 - params}
    >>> sim = SimpleNamespace(params=lambda state: state)  # the parameters: the state
    >>> compiled = (init, scan_chunk(step, 1), jax.jit(evaluate), sim)
    >>> dataset = load_dataset("digits", max_train=200)
    >>> sweep = Sweep.from_dict({"steps": 2, "eval_every": 1, "grid": {"lr": [0.5, 0.25]}})
    >>> for step, rows, states in iterate_batch(sweep.units(), dataset, compiled, mesh=None):
    ...     print(step, [(row["lr"], row["train_loss"], row["test_accuracy"]) for row in rows])
    1 [(0.5, 0.5, 0.75), (0.25, 0.25, 0.875)]
    2 [(0.5, 0.25, 0.875), (0.25, 0.125, 0.9375)]
    """
    init, chunk, evaluate, sim = compiled
    mesh = resolve_mesh(mesh)
    config = units[0].config
    runs = list(units)
    if mesh is not None:
        runs = distributed.pad_to_multiple(runs, mesh.devices.size)
        chunk, evaluate = distributed.over_runs(chunk, mesh), distributed.over_runs(evaluate, mesh)
    states = batch_states(runs, dataset, init, mesh, width)
    for done in range(config.eval_every, config.steps + 1, config.eval_every):
        states, metrics = chunk(states)
        measured = simulator.measurements(metrics, evaluate(simulator.params_of(sim, states)))[
            : len(units)
        ]
        rows = []
        for unit, values in zip(units, measured, strict=True):
            row = {"run_id": unit.run_id, **unit.grid_values, "seed": unit.config.seed}
            rows.append({**row, "step": done, **values})
        yield done, rows, states


def run_batch(
    units: Sequence[Unit],
    dataset: datasets.Dataset,
    compiled,
    *,
    mesh: Mesh | None | str = "auto",
    width: int | None = None,
) -> list[dict[str, Any]]:
    """Run units together; one row per unit and evaluation (see :func:`iterate_batch`).

    Returns
    -------
    list of dict
        The rows of every evaluation, in order (the ``runs.csv`` rows).

    Examples
    --------
    With the stand-in program of :func:`iterate_batch`'s example:

    >>> import jax
    >>> from types import SimpleNamespace
    >>> from jaxrobust.algorithms.base import RoundMetrics
    >>> from jaxrobust.data import load_dataset
    >>> from jaxrobust.run.simulator import scan_chunk
    >>> def init(keys, indices, sizes, hyper):  # a run's state: its learning rate
    ...     return hyper.lr
    >>> def step(lr):  # halve the rate; report the rate before
    ...     return lr / 2, RoundMetrics(lr, lr, lr, lr)
    >>> def evaluate(params):
    ...     return {"test_accuracy": 1 - params}
    >>> sim = SimpleNamespace(params=lambda state: state)  # the parameters: the state
    >>> compiled = (init, scan_chunk(step, 1), jax.jit(evaluate), sim)
    >>> dataset = load_dataset("digits", max_train=200)
    >>> sweep = Sweep.from_dict({"steps": 2, "eval_every": 1, "grid": {"lr": [0.5, 0.25]}})
    >>> rows = run_batch(sweep.units(), dataset, compiled, mesh=None)
    >>> [(row["step"], row["seed"], row["lr"], row["train_loss"]) for row in rows]
    [(1, 0, 0.5, 0.5), (1, 0, 0.25, 0.25), (2, 0, 0.5, 0.25), (2, 0, 0.25, 0.125)]
    >>> rows[0]["run_id"] == sweep.units()[0].run_id
    True
    """
    batches = iterate_batch(units, dataset, compiled, mesh=mesh, width=width)
    return [row for _, rows, _ in batches for row in rows]


def memory_per_unit(
    compiled, units: Sequence[Unit], dataset: datasets.Dataset, width: int | None = None
) -> int:
    """Bytes one unit needs in its chunk program, from XLA's memory analysis.

    Measured on the first unit with its partition table padded to ``width``
    columns (default: the widest of ``units``, :func:`table_width`), the
    shape every batch of the group runs with.

    Returns
    -------
    int
        Temporary, argument and output bytes of one unit's chunk; 0 where
        the backend gives no memory analysis.

    Examples
    --------
    With the stand-in program of :func:`iterate_batch`'s example (a real one
    compiles the same way):

    >>> import jax
    >>> from types import SimpleNamespace
    >>> from jaxrobust.algorithms.base import RoundMetrics
    >>> from jaxrobust.data import load_dataset
    >>> from jaxrobust.run.simulator import scan_chunk
    >>> def init(keys, indices, sizes, hyper):  # a run's state: its learning rate
    ...     return hyper.lr
    >>> def step(lr):  # halve the rate; report the rate before
    ...     return lr / 2, RoundMetrics(lr, lr, lr, lr)
    >>> def evaluate(params):
    ...     return {"test_accuracy": 1 - params}
    >>> sim = SimpleNamespace(params=lambda state: state)  # the parameters: the state
    >>> compiled = (init, scan_chunk(step, 1), jax.jit(evaluate), sim)
    >>> dataset = load_dataset("digits", max_train=200)
    >>> sweep = Sweep.from_dict({"steps": 2, "eval_every": 1, "grid": {"lr": [0.5, 0.25]}})
    >>> per_unit = memory_per_unit(compiled, sweep.units(), dataset)
    >>> isinstance(per_unit, int) and per_unit >= 0
    True
    """
    init, chunk, _, _ = compiled
    if width is None:
        width = table_width(units, dataset.y_train)
    states = batch_states(units[:1], dataset, init, width=width)
    analysis = chunk.lower(states).compile().memory_analysis()
    if analysis is None:
        return 0
    return int(
        analysis.temp_size_in_bytes
        + analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
    )


def device_memory() -> int:
    """Bytes available to one program: the device's limit, or physical memory on CPU.

    On an accelerator, its memory limit less the bytes in use.

    Examples
    --------
    >>> device_memory() > 2**20
    True
    """
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def batch_over_devices(per_device: int, devices: int, platform: str | None = None) -> int:
    """Units per sharded program, from the units that fit one device.

    Accelerators each have their own memory: ``per_device * devices``. CPU
    devices share the host's memory, which :func:`device_memory` already
    counts once: ``per_device``, rounded down to a multiple of ``devices``
    (at least ``devices``) so no padding is wasted.

    Parameters
    ----------
    per_device : int
        Units that fit one device (:func:`choose_batch`).
    devices : int
        Devices the runs are split over.
    platform : str, optional
        ``"cpu"``, ``"gpu"``, ...; default: this host's first device's.

    Examples
    --------
    >>> batch_over_devices(10, 4, "gpu")
    40
    >>> batch_over_devices(10, 4, "cpu"), batch_over_devices(3, 4, "cpu")
    (8, 4)
    """
    platform = jax.local_devices()[0].platform if platform is None else platform
    if platform != "cpu":
        return per_device * devices
    return max(devices, per_device - per_device % devices)


def choose_batch(per_unit: int, available: int, max_batch: int | None, fraction=0.5) -> int:
    """Units per program: ``max_batch`` if given, else as many as fit in ``fraction`` of memory.

    Parameters
    ----------
    per_unit : int
        Bytes one unit needs (:func:`memory_per_unit`).
    available : int
        Bytes available (:func:`device_memory`).
    max_batch : int or None
        A fixed batch size, used as is.
    fraction : float
        The part of ``available`` to fill.

    Raises
    ------
    MemoryError
        One unit needs more than ``fraction`` of ``available``.

    Examples
    --------
    >>> choose_batch(2**20, 2**30, None)  # 1 MiB each, half of 1 GiB
    512
    >>> choose_batch(2**20, 2**30, 8)
    8
    >>> choose_batch(2**31, 2**31, None)
    Traceback (most recent call last):
    ...
    MemoryError: one run needs about 2.00 GiB but only 1.00 GiB is available to a program; ...
    """
    if max_batch is not None:
        return max_batch
    budget = int(available * fraction)
    if per_unit > budget:
        raise MemoryError(
            f"one run needs about {per_unit / 2**30:.2f} GiB but only {budget / 2**30:.2f} GiB "
            "is available to a program; use a smaller model, batch or fewer workers"
        )
    return max(1, budget // max(per_unit, 1))


# --------------------------------------------------------------------------
# The results file
# --------------------------------------------------------------------------


def columns(sweep: Sweep) -> list[str]:
    """``runs.csv``'s header: the run id, the grid's fields (:meth:`Sweep.fields`), the
    seed and the measurements.

    The measurements are :func:`jaxrobust.run.simulator.metric_columns` of
    the sweep's algorithms, from ``step`` on.

    Examples
    --------
    >>> columns(Sweep.from_dict({"grid": {"lr": [0.05, 0.1]}}))
    ['run_id', 'lr', 'seed', 'step', 'test_accuracy', 'test_loss', ...]
    >>> columns(Sweep.from_dict({"algorithm": "marina_pp", "grid": {"lr": [0.1]}}))[-2:]
    ['full_round', 'attacked']
    """
    algorithms = {u.config.algorithm for u in sweep.units()}
    names = [a for a in simulator.registry("algorithm") if a in algorithms]
    return ["run_id", *sweep.fields(), "seed", *simulator.metric_columns(names)[1:]]


def completed_runs(path: str, header: list[str], steps: int) -> set[str]:
    """Run ids with a row at the final step; rewrites the file without the others' rows.

    Rows of the wrong length (a line cut short by an interrupted write) are
    dropped too.

    Parameters
    ----------
    path : str
        ``runs.csv``; a missing file has no runs.
    header : list of str
        The expected header (:func:`columns`).
    steps : int
        The sweep's final step.

    Returns
    -------
    set of str
        The run ids complete.

    Raises
    ------
    ValueError
        The file's header is not ``header``.

    Examples
    --------
    >>> import os, tempfile
    >>> header = ["run_id", "seed", "step"]
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "runs.csv")
    ...     append_rows(path, header, [
    ...         {"run_id": "a", "seed": 0, "step": 1},
    ...         {"run_id": "a", "seed": 0, "step": 2},
    ...         {"run_id": "b", "seed": 0, "step": 1},  # b stopped before step 2
    ...     ])
    ...     done = completed_runs(path, header, steps=2)
    ...     with open(path) as fh:
    ...         text = fh.read()
    >>> done
    {'a'}
    >>> print(text)
    run_id,seed,step
    a,0,1
    a,0,2
    <BLANKLINE>
    """
    if not os.path.exists(path):
        return set()
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        found = next(reader, None)
        if found is None:
            return set()
        if found != header:
            raise ValueError(
                f"{path} was written by a different sweep (columns {found}, expected {header}); "
                "use another --out directory"
            )
        rows = [r for r in reader if len(r) == len(header)]
    step_col = header.index("step")
    done = set()
    for r in rows:
        try:
            if int(r[step_col]) == steps:
                done.add(r[0])
        except ValueError:
            continue
    kept = [r for r in rows if r[0] in done]
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(kept)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return done


def append_rows(path: str, header: list[str], rows: list[dict]) -> None:
    """Append ``rows`` to the CSV file ``path``, with ``header`` first if it is new.

    The file is flushed and synced, so the rows survive an interruption.

    Parameters
    ----------
    path : str
        The CSV file, created if missing.
    header : list of str
        Its columns, in order.
    rows : list of dict
        Column -> value; every key must be in ``header`` (missing ones are
        left empty).

    Examples
    --------
    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "runs.csv")
    ...     append_rows(path, ["run_id", "step"], [{"run_id": "a", "step": 1}])
    ...     append_rows(path, ["run_id", "step"], [{"run_id": "a", "step": 2}])
    ...     with open(path) as fh:
    ...         print(fh.read())
    run_id,step
    a,1
    a,2
    <BLANKLINE>
    """
    new = not os.path.exists(path)
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        if new:
            writer.writeheader()
        writer.writerows(rows)
        fh.flush()
        os.fsync(fh.fileno())


# --------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------


def run_sweep(
    sweep: Sweep,
    out: str,
    *,
    max_batch: int | None = None,
    dataset: datasets.Dataset | None = None,
    on_batch: Callable[[int, int, int, float], None] | None = None,
    mesh: Mesh | None | str = "auto",
) -> str:
    """Run every missing unit of ``sweep``; rows go to ``out/runs.csv``. Returns its path.

    ``on_batch(done, total, ran_now, seconds)`` is called after every batch:
    units complete in all, in the sweep, run by this call, and its seconds.

    ``mesh``: with ``"auto"`` (default) and more than one local device, every
    batch runs with its runs split over all local devices (see
    :func:`iterate_batch`); ``None`` runs on the default device only. Without
    ``max_batch``, the batch then holds as many units as fit on every device.

    Also writes ``out/sweep.yaml``: the base's fields and the grid (what
    :mod:`jaxrobust.report` reads).

    Parameters
    ----------
    sweep : Sweep
        The grid.
    out : str
        The output directory, created if needed; a ``runs.csv`` already
        there is resumed (:func:`completed_runs`).
    max_batch : int, optional
        Units per program; default: as many as fit in half the memory
        (:func:`memory_per_unit`, :func:`choose_batch`).
    dataset : Dataset, optional
        One data set for every run; default: each run's own
        (:func:`jaxrobust.run.simulator.load_for`).
    on_batch : callable, optional
        ``on_batch(done, total, ran_now, seconds)``, e.g. :func:`progress_printer`.
    mesh : Mesh, None or "auto"
        Where the runs go (:func:`resolve_mesh`).

    Returns
    -------
    str
        The path of ``runs.csv``.

    Raises
    ------
    ValueError
        A grid with a configuration twice, a setting a rule refuses
        (:func:`check_defences`), or a ``runs.csv`` of another sweep.
    MemoryError
        One run does not fit (:func:`choose_batch`).

    Examples
    --------
    Two learning rates, run as one batch; started again, the sweep finds
    them done and runs nothing:

    >>> import csv, os, tempfile
    >>> sweep = Sweep.from_dict({
    ...     "model": "logistic_regression", "max_train": 200, "num_honest": 4,
    ...     "num_byzantine": 1, "steps": 2, "eval_every": 1, "grid": {"lr": [0.05, 0.1]},
    ... })
    >>> def on_batch(done, total, ran, seconds):
    ...     print(f"{done}/{total} runs done, {ran} by this call")
    >>> with tempfile.TemporaryDirectory() as out:
    ...     path = run_sweep(sweep, out, max_batch=2, mesh=None, on_batch=on_batch)
    ...     with open(path) as fh:
    ...         rows = list(csv.DictReader(fh))
    ...     _ = run_sweep(sweep, out, max_batch=2, mesh=None, on_batch=on_batch)
    ...     print(sorted(os.listdir(out)))
    2/2 runs done, 2 by this call
    ['runs.csv', 'sweep.yaml']
    >>> [(row["lr"], row["step"]) for row in rows]
    [('0.05', '1'), ('0.1', '1'), ('0.05', '2'), ('0.1', '2')]
    """
    mesh = resolve_mesh(mesh)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "runs.csv")
    units = sweep.units()
    if len({u.run_id for u in units}) != len(units):
        raise ValueError("the grid holds the same configuration twice")
    check_defences(units)
    header = columns(sweep)
    with open(os.path.join(out, "sweep.yaml"), "w") as fh:
        yaml.safe_dump(
            {
                **sweep.base.to_dict(),
                "grid": {k: [_plain(v) for v in vs] for k, vs in sweep.grid.items()},
            },
            fh,
            sort_keys=False,
        )
    done = completed_runs(path, header, sweep.base.steps)
    todo = [u for u in units if u.run_id not in done]
    finished, ran, start = len(units) - len(todo), 0, time.perf_counter()
    loaded: dict[tuple, datasets.Dataset] = {}
    for group in groups(todo):
        config = group[0].config
        data_key = (
            config.dataset,
            config.data_dir,
            config.max_train,
            config.max_test,
            config.data_seed,
            config.validation,
        )
        if dataset is not None:
            data = simulator.with_validation_split(config, dataset)
        else:
            if data_key not in loaded:
                loaded[data_key] = simulator.load_for(config)
            data = loaded[data_key]
        compiled = simulator.compiled_run(config, data)
        width = table_width(group, data.y_train)  # every batch of the group: one shape
        size = max_batch
        if size is None:
            per_unit = memory_per_unit(compiled, group, data, width)
            size = choose_batch(per_unit, device_memory(), None)
            if mesh is not None:
                size = batch_over_devices(size, mesh.devices.size)
        for lo in range(0, len(group), size):
            batch = group[lo : lo + size]  # a smaller last batch compiles once more
            rows = run_batch(batch, data, compiled, mesh=mesh, width=width)
            append_rows(path, header, rows)
            finished, ran = finished + len(batch), ran + len(batch)
            if on_batch is not None:
                on_batch(finished, len(units), ran, time.perf_counter() - start)
    return path


def _plain(value):
    """A grid value as YAML writes it: tuples as lists, a linked axis's mappings field by field."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return list(value) if isinstance(value, tuple) else value


def progress_printer(stream=None) -> Callable[[int, int, int, float], None]:
    """An ``on_batch`` for :func:`run_sweep`: a progress bar of the runs on ``stream``.

    It shows the runs done of the sweep's total (runs found done on resuming
    included), the elapsed time, the rate and the time left, both from the
    runs this call has run so far.

    Parameters
    ----------
    stream : file-like, optional
        Where the bar is written (default: standard error).

    Returns
    -------
    callable
        ``show(done, total, ran, seconds)``, as ``run_sweep`` calls ``on_batch``.

    Examples
    --------
    >>> import io
    >>> stream = io.StringIO()
    >>> show = progress_printer(stream)
    >>> show(2, 4, 2, 1.0)  # the first batch: 2 of 4 runs, after 1 s
    >>> show(4, 4, 4, 2.0)  # the last: the bar closes
    >>> stream.getvalue().split("\\r")[-1]
    'sweep: 100%|...| 4/4 [00:0...run/s]\\n'
    """
    from tqdm import tqdm

    bar = None

    def show(done: int, total: int, ran: int, seconds: float) -> None:
        nonlocal bar
        if bar is None:
            # started at the first batch's end: count the runs found done as already
            # there and date the start back to the sweep's, so that rate = ran / seconds
            bar = tqdm(
                total=total,
                initial=done - ran,
                desc="sweep",
                unit="run",
                file=sys.stderr if stream is None else stream,
                smoothing=0,
                mininterval=0,  # redrawn after every batch
            )
            bar.start_t -= seconds
            bar.last_print_t -= seconds
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return show
