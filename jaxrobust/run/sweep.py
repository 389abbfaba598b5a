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
from jaxrobust.config import Config, coerce, field_types, load_plugins, vmapped_fields
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
    """One seed of one grid point: a row group of ``runs.csv``."""

    config: Config  # with seeds=1 and the unit's seed
    grid_values: dict[str, Any]

    @property
    def run_id(self) -> str:
        text = json.dumps(self.config.to_dict(), sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A base config and its grid: config field -> values, or linked axis -> mappings.

    A linked axis (a name that is not a config field) holds dicts of config
    fields, each one value of the axis; :meth:`fields` are the columns the
    grid adds to ``runs.csv``.
    """

    base: Config
    grid: dict[str, list]

    @classmethod
    def from_yaml(cls, path: str, plugins: Sequence[str] = ()) -> Sweep:
        """The sweep of a YAML file (see :meth:`from_dict`)."""
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
        fields = set(base.to_dict())
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
        """Whether grid entry ``name`` is a linked axis (a list of field mappings)."""
        return name not in field_types()

    def fields(self) -> list[str]:
        """The config fields the grid sets, its ``runs.csv`` columns (:func:`grid_fields`)."""
        return grid_fields(self.grid)

    def units(self) -> list[Unit]:
        """Every (grid point, seed), in a fixed order."""
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


def grid_fields(grid: dict[str, Any]) -> list[str]:
    """Config fields a grid sets, in grid order: plain axes, and every field of a
    linked axis (in order of first appearance in its mappings).

    Works on a :class:`Sweep`'s grid and on the ``grid`` of a ``sweep.yaml`` as
    written to a sweep's directory (what :mod:`jaxrobust.report` reads).
    """
    names = set(field_types())
    out: list[str] = []
    for name, options in grid.items():
        if name in names or not isinstance(options, list):
            out.append(name)
        else:
            out.extend(k for mapping in options if isinstance(mapping, dict) for k in mapping)
    return list(dict.fromkeys(out))


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
    runs, not when its group comes up."""
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
    """What decides the compiled program: every field outside :data:`VMAPPED`."""
    values = {k: v for k, v in config.to_dict().items() if k not in VMAPPED}
    return json.dumps(values, sort_keys=True, default=str)


def groups(units: Sequence[Unit]) -> list[list[Unit]]:
    """Units grouped by program structure, in first-appearance order."""
    out: dict[str, list[Unit]] = {}
    for unit in units:
        out.setdefault(structure(unit.config), []).append(unit)
    return list(out.values())


# --------------------------------------------------------------------------
# Running a batch of units as one program
# --------------------------------------------------------------------------


def table_width(units: Sequence[Unit], labels) -> int:
    """Columns of the widest partition table of ``units`` (its largest worker's examples)."""
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
    """The mesh a sweep shards its runs over: this host's devices, or None if it has one."""
    return distributed.runs_mesh() if jax.local_device_count() > 1 else None


def resolve_mesh(mesh: Mesh | None | str) -> Mesh | None:
    """``"auto"``: :func:`default_mesh`; a mesh or None: itself."""
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
    """Run units together; one row per unit and evaluation (see :func:`iterate_batch`)."""
    batches = iterate_batch(units, dataset, compiled, mesh=mesh, width=width)
    return [row for _, rows, _ in batches for row in rows]


def memory_per_unit(
    compiled, units: Sequence[Unit], dataset: datasets.Dataset, width: int | None = None
) -> int:
    """Bytes one unit needs in its chunk program, from XLA's memory analysis.

    Measured on the first unit with its partition table padded to ``width``
    columns (default: the widest of ``units``, :func:`table_width`), the
    shape every batch of the group runs with.
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
    """Bytes available to one program: the device's limit, or physical memory on CPU."""
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
    """
    platform = jax.local_devices()[0].platform if platform is None else platform
    if platform != "cpu":
        return per_device * devices
    return max(devices, per_device - per_device % devices)


def choose_batch(per_unit: int, available: int, max_batch: int | None, fraction=0.5) -> int:
    """Units per program: ``max_batch`` if given, else as many as fit in ``fraction`` of memory."""
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
    seed and the measurements."""
    algorithms = {u.config.algorithm for u in sweep.units()}
    names = [a for a in simulator.registry("algorithm") if a in algorithms]
    return ["run_id", *sweep.fields(), "seed", *simulator.metric_columns(names)[1:]]


def completed_runs(path: str, header: list[str], steps: int) -> set[str]:
    """Run ids with a row at the final step; rewrites the file without the others' rows."""
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
