"""Reports on a finished sweep: worst-case maximal accuracy, heatmaps and curves.

The metric of the ARC paper (Allouah, Guerraoui, Gupta, Jellouli, Rizk,
Stephan, "Boosting robustness by clipping gradients in distributed
learning", arXiv:2405.14432, 2024; published as "Adaptive gradient clipping
for robust federated learning", ICLR 2025), in its experiments section, and
of ByzFL's benchmark: for every attack, the best accuracy over the run of the
accuracy curve averaged over seeds; the **worst case** is the minimum of these
over the attacks.

Hyperparameters are chosen the way ByzFL chooses them: for every setting
(every grid field but the attack, the hyperparameters and the seed; the
fields of a linked grid axis, such as ``heterogeneity`` and ``alpha`` set
together, are grid fields too), each combination of hyperparameter values
is scored by its worst case over the attacks on the *validation* split, the
best-scoring combination is kept (the first one on ties) and its *test*
numbers are reported. A sweep run without a validation split
(``validation: 0``, NaN validation columns) falls back to selecting on the
reported metric itself, which is optimistic; the table says so in its notes
and in its ``selected_on`` column.

Two orders of "best over the run" and "mean over seeds" exist
(:data:`REDUCTIONS`):

- ``"mean_then_max"`` (the default): the mean curve over seeds (the mean of
  the seeds' values at every evaluation step), then its best value, the
  "maximum of the mean curve". This is the ARC authors' own definition: their
  benchmark code (ByzFL's ``evaluate_results.py``, which produced the tables
  and heatmaps of the ARC paper, Sec. 5 and App. C) averages the accuracy
  curves over seeds, then takes the maximum over steps, both to select the
  hyperparameters on validation and to report the test accuracy;
- ``"max_then_mean"``: the best value of each seed's run, then the mean over
  seeds, the "mean of per-seed maxima". It is never below the default (for a
  metric to maximise): every seed may peak at its own step.

The table's title line names the one used.

Inputs are the files of :func:`jaxrobust.run.sweep.run_sweep`: ``DIR/runs.csv``
and ``DIR/sweep.yaml``. Example::

    from jaxrobust import report
    rows, config = report.load_runs("results/sweep")
    table = report.worst_case_table(rows)
    print(report.table_markdown(table, config))
    report.make_report("results/sweep")  # worst_case.csv, .md, heatmaps, curves.png
"""

from __future__ import annotations

import dataclasses
import math
import os
import textwrap
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import yaml

from jaxrobust.config import grid_fields
from jaxrobust.core.types import METRIC_COLUMNS

#: Grid fields tuned per setting rather than reported as settings.
DEFAULT_HYPERPARAMETERS = ("lr", "momentum", "weight_decay", "lr_schedule")

#: The measurement columns a sweep writes (``step`` and the metrics). Rows read
#: from ``runs.csv`` take theirs from its header instead (see
#: :func:`measured_columns`); this list serves rows without a ``seed`` column.
MEASURED = tuple(c for c in METRIC_COLUMNS if c != "seed")
#: Columns that are neither settings, attacks nor hyperparameters.
BOOKKEEPING = ("run_id", "seed", *MEASURED)

#: The orders of "best over the run" and "mean over seeds", the default first:
#: the maximum of the mean curve (the ARC authors'), the mean of per-seed maxima.
REDUCTIONS = ("mean_then_max", "max_then_mean")

#: Each reduction's name in a table's title line and description.
REDUCTION_NAMES = {
    "mean_then_max": "max of the mean curve over seeds",
    "max_then_mean": "mean over seeds of per-seed maxima",
}

#: Grid fields preferred as heatmap axes (x then y), as in ByzFL's f x heterogeneity maps.
HEATMAP_FIELDS = ("num_byzantine", "alpha")

CONSTANTS_SHOWN = (
    "dataset",
    "model",
    "num_honest",
    "num_byzantine",
    "declared_f",
    "heterogeneity",
    "alpha",
    "attack",
    "defence",
    "steps",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "seeds",
    "validation",
)


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def _parse(text: str | None) -> Any:
    """A ``runs.csv`` cell: int, float, None or the string itself."""
    if text is None:
        return None
    text = text.strip()
    if text in ("", "None", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _number(text: Any) -> float:
    if text is None or text == "":
        return math.nan
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def measured_columns(columns: Iterable[str]) -> list[str]:
    """The measurement columns among ``columns``, a ``runs.csv`` header or a row's keys.

    A sweep's ``runs.csv`` holds ``run_id``, the grid fields, ``seed``, then
    ``step`` and the metrics, so every column after ``seed`` is a measurement.
    Without a ``seed`` column, the columns named in :data:`MEASURED` are.

    Parameters
    ----------
    columns : iterable of str
        Column names in file order.

    Returns
    -------
    list of str
        The measurement columns, ``step`` included, in file order.

    Examples
    --------
    >>> measured_columns(["run_id", "attack", "lr", "seed", "step", "test_accuracy", "bits"])
    ['step', 'test_accuracy', 'bits']
    >>> measured_columns(["attack", "step", "test_accuracy", "bits"])
    ['step', 'test_accuracy']
    """
    columns = list(columns)
    if "seed" in columns:
        return columns[columns.index("seed") + 1 :]
    return [c for c in columns if c in MEASURED]


def _objects(values: Iterable[Any], index: pd.Index) -> pd.Series:
    """A column of Python objects, kept as they are (no int-to-float or None-to-NaN casts)."""
    return pd.Series(list(values), index=index, dtype=object)


def load_runs(
    directory: str | os.PathLike, *, complete_only: bool = True
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows of ``DIR/runs.csv`` (typed) and the sweep's config (``DIR/sweep.yaml``).

    Grid cells become ints, floats or strings (a defence stays a space-joined
    string such as ``"arc nnm trimmed_mean"``); ``seed`` and ``step`` are
    ints and the measurements (the columns after ``seed``, see
    :func:`measured_columns`) floats (NaN where empty). If the attack is not a
    grid field, every row gets the sweep's constant ``attack`` (as a grid
    column, before ``seed``) so that tables still have an attack column.
    ``sweep_config`` is ``{}`` without a ``sweep.yaml``. With
    ``complete_only``, runs that have not reached the sweep's ``steps`` are
    left out (with a warning): their best accuracy so far is not comparable.

    Parameters
    ----------
    directory : str or os.PathLike
        The sweep's output directory, holding ``runs.csv`` and optionally
        ``sweep.yaml``.
    complete_only : bool, default True
        Leave out the runs whose last ``step`` is below the config's
        ``steps`` (only when ``steps`` is an int in ``sweep.yaml``).

    Returns
    -------
    rows : list of dict
        One dict per line of ``runs.csv``, column -> value: ``run_id`` a str,
        grid cells int, float, str or None, ``seed`` and ``step`` int, the
        measurements float.
    sweep_config : dict
        The parsed ``sweep.yaml``, or ``{}`` without one.

    Raises
    ------
    FileNotFoundError
        If ``directory`` does not exist, or holds no ``runs.csv``.
    ValueError
        If ``sweep.yaml`` does not hold a mapping (``"... must hold a mapping
        of config fields"``), ``runs.csv`` lacks ``seed``, ``step`` or
        ``test_accuracy`` (``"... lacks the column(s) ...; not a sweep
        file"``), holds no rows (``"... holds no rows yet"``), or, with
        ``complete_only``, no complete run (``"... holds no complete run
        yet"``).

    Warns
    -----
    UserWarning
        When ``complete_only`` leaves out incomplete runs.

    Examples
    --------
    A sweep of one setting: two attacks, two learning rates, one seed,
    evaluations at steps 10 and 20 (a ``runs.csv`` and ``sweep.yaml`` as
    :func:`jaxrobust.run.sweep.run_sweep` writes them):

    >>> import os, tempfile
    >>> directory = tempfile.mkdtemp()
    >>> with open(os.path.join(directory, "runs.csv"), "w") as fh:
    ...     _ = fh.write(
    ...         "run_id,attack,lr,seed,step,test_accuracy,validation_accuracy\\n"
    ...         "a,sign_flip,0.1,0,10,0.5,0.8\\n"
    ...         "a,sign_flip,0.1,0,20,0.7,0.8\\n"
    ...         "b,alie,0.1,0,10,0.4,0.7\\n"
    ...         "b,alie,0.1,0,20,0.6,0.7\\n"
    ...         "c,sign_flip,0.5,0,10,0.9,0.95\\n"
    ...         "c,sign_flip,0.5,0,20,0.9,0.95\\n"
    ...         "d,alie,0.5,0,10,0.85,0.6\\n"
    ...         "d,alie,0.5,0,20,0.85,0.6\\n"
    ...     )
    >>> with open(os.path.join(directory, "sweep.yaml"), "w") as fh:
    ...     _ = fh.write("dataset: digits\\nsteps: 20\\ndefence: median\\n"
    ...                  "grid: {attack: [sign_flip, alie], lr: [0.1, 0.5]}\\n")
    >>> rows, config = load_runs(directory)
    >>> len(rows), config["steps"]
    (8, 20)
    >>> rows[0]
    {'run_id': 'a', 'attack': 'sign_flip', 'lr': 0.1, 'seed': 0, 'step': 10,
     'test_accuracy': 0.5, 'validation_accuracy': 0.8}
    >>> load_runs(os.path.join(directory, "missing"))
    Traceback (most recent call last):
        ...
    FileNotFoundError: no sweep directory '...missing'
    """
    directory = os.fspath(directory)
    path = os.path.join(directory, "runs.csv")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no sweep directory {directory!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no runs.csv in {directory!r}; run `jaxrobust sweep FILE --out {directory}` first"
        )
    sweep_config: dict[str, Any] = {}
    yaml_path = os.path.join(directory, "sweep.yaml")
    if os.path.exists(yaml_path):
        with open(yaml_path) as fh:
            sweep_config = yaml.safe_load(fh) or {}
        if not isinstance(sweep_config, dict):
            raise ValueError(f"{yaml_path} must hold a mapping of config fields")
    try:
        # Every cell as text ("" where empty); the python engine skips a line with too
        # many cells or an unclosed quote, and leaves NaN in the cells a short line lacks.
        frame = pd.read_csv(
            path, dtype=str, keep_default_na=False, engine="python", on_bad_lines="skip"
        )
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame()
    header = [str(c) for c in frame.columns]
    missing = [c for c in ("seed", "step", "test_accuracy") if c not in header]
    if missing:
        raise ValueError(f"{path} lacks the column(s) {', '.join(missing)}; not a sweep file")
    frame = frame.dropna(how="any")  # a truncated last line of a sweep that was killed
    if frame.empty:
        raise ValueError(f"{path} holds no rows yet")
    measured = measured_columns(header)
    for name in header:
        if name in ("seed", "step"):
            frame[name] = pd.to_numeric(frame[name]).astype(np.int64)
        elif name in measured:
            frame[name] = pd.to_numeric(frame[name].str.strip(), errors="coerce").astype(float)
        elif name != "run_id":
            frame[name] = _objects(map(_parse, frame[name]), frame.index)
    steps = sweep_config.get("steps")
    if complete_only and isinstance(steps, int):
        last = frame.groupby("run_id", sort=False)["step"].max()
        partial = last.index[last < steps]
        if len(partial):
            warnings.warn(
                f"{path}: left out {len(partial)} run(s) that have not reached step {steps} "
                "(a sweep still running or stopped)",
                stacklevel=2,
            )
            frame = frame[~frame["run_id"].isin(partial)]
            if frame.empty:
                raise ValueError(f"{path} holds no complete run yet")
    if "attack" not in header:
        attack = sweep_config.get("attack", "attack")
        frame.insert(header.index("seed"), "attack", _objects([attack] * len(frame), frame.index))
    return frame.to_dict("records"), sweep_config


# --------------------------------------------------------------------------
# The worst-case table
# --------------------------------------------------------------------------


@dataclasses.dataclass
class SettingResult:
    """One row of the table: one setting at its chosen hyperparameters.

    Attributes
    ----------
    setting : dict
        Setting field -> value (``{}`` when the grid has no setting field).
    per_attack : dict of str to float
        Attack -> ``metric``, best over the run then mean over seeds (or the
        other order, see ``WorstCaseTable.reduce``); NaN if it has no runs.
    worst_case : float
        The worst of ``per_attack`` (lowest, or highest for a loss); NaN if
        an attack has no value.
    worst_attack : str or None
        The attack achieving ``worst_case``; None where it is NaN.
    hyperparameters : dict
        The chosen combination, field -> value (``{}`` if none is in the grid).
    selection_score : float
        The chosen combination's worst case on the selection column.
    num_seeds : int
        Fewest seeds of any attack at the chosen combination.
    candidates : int
        Number of hyperparameter combinations compared.

    Examples
    --------
    >>> rows = [{"attack": a, "lr": lr, "seed": 0, "step": 1, "test_accuracy": acc}
    ...         for a, lr, acc in [("alie", 0.1, 0.6), ("alie", 0.5, 0.8),
    ...                            ("ipm", 0.1, 0.7), ("ipm", 0.5, 0.5)]]
    >>> (result,) = worst_case_table(rows).rows
    >>> result.hyperparameters, result.per_attack, result.worst_case, result.worst_attack
    ({'lr': 0.1}, {'alie': 0.6, 'ipm': 0.7}, 0.6, 'alie')
    >>> result.selection_score, result.num_seeds, result.candidates
    (0.6, 1, 2)
    """

    setting: dict[str, Any]  # setting field -> value
    per_attack: dict[str, float]  # attack -> best metric over the run, mean over seeds
    worst_case: float  # the worst of per_attack (NaN if an attack has no runs)
    worst_attack: str | None
    hyperparameters: dict[str, Any]  # the chosen combination ({} if none is in the grid)
    selection_score: float  # the chosen combination's worst case on ``selected_on``
    num_seeds: int  # fewest seeds of any attack at the chosen combination
    candidates: int  # hyperparameter combinations compared


@dataclasses.dataclass
class WorstCaseTable:
    """The worst-case table of a sweep: one :class:`SettingResult` per setting.

    Built by :func:`worst_case_table`; written by :func:`write_table_csv`,
    :func:`table_markdown` and :func:`plot_heatmap`.

    Attributes
    ----------
    metric : str
        The reported column, e.g. ``"test_accuracy"``.
    selected_on : str
        The column the hyperparameters were chosen on (``metric`` itself when
        there was no validation column to select on).
    reduce : str
        ``"mean_then_max"`` or ``"max_then_mean"`` (see :data:`REDUCTIONS`).
    setting_fields : list of str
        The grid fields that define a setting.
    attacks : list of str
        The attacks, one column each, in grid order.
    hyperparameter_fields : list of str
        The grid fields tuned per setting.
    rows : list of SettingResult
        One per setting, in the order of the settings' values.
    notes : list of str
        Caveats to show with the table (e.g. selection on the test metric).
    attack_field : str, default "attack"
        The column holding the attack.

    Examples
    --------
    >>> rows = [
    ...     {"num_byzantine": f, "alpha": alpha, "attack": attack, "seed": 0, "step": 10,
    ...      "test_accuracy": 1.0 - 0.2 * f - (0.1 if attack == "alie" else 0.0) - 0.1 * alpha}
    ...     for f in (1, 2) for alpha in (0.5, 1.0) for attack in ("sign_flip", "alie")
    ... ]
    >>> table = worst_case_table(rows)
    >>> table.setting_fields, table.attacks, table.hyperparameter_fields
    (['num_byzantine', 'alpha'], ['sign_flip', 'alie'], [])
    >>> [round(r.worst_case, 3) for r in table.rows]
    [0.65, 0.6, 0.45, 0.4]
    >>> table.selected_on, len(table.notes)
    ('test_accuracy', 1)
    """

    metric: str
    selected_on: str  # the column the hyperparameters were chosen on
    reduce: str
    setting_fields: list[str]
    attacks: list[str]
    hyperparameter_fields: list[str]
    rows: list[SettingResult]
    notes: list[str]
    attack_field: str = "attack"

    def varying_settings(self) -> list[str]:
        """Setting fields with more than one value in the table.

        Returns
        -------
        list of str
            The fields of :attr:`setting_fields` that vary across
            :attr:`rows`, in their order (``1`` and ``1.0`` count as one value).

        Examples
        --------
        >>> rows = [{"dataset": "digits", "num_byzantine": f, "attack": "alie", "seed": 0,
        ...          "step": 1, "test_accuracy": 0.9 - 0.1 * f} for f in (1, 2)]
        >>> table = worst_case_table(rows)
        >>> table.setting_fields, table.varying_settings()
        (['dataset', 'num_byzantine'], ['num_byzantine'])
        """
        return [f for f in self.setting_fields if len({_key(r.setting[f]) for r in self.rows}) > 1]

    def records(self) -> list[dict[str, Any]]:
        """Flat dicts, one per setting: the CSV's rows.

        Returns
        -------
        list of dict
            Per row: its setting fields, one key per attack (NaN where it
            has no value), ``worst_case``, ``worst_attack``, the chosen
            hyperparameters, ``selected_on``, ``selection_worst_case`` and
            ``num_seeds``.

        Examples
        --------
        >>> rows = [{"attack": a, "lr": 0.1, "seed": 0, "step": 1, "test_accuracy": acc}
        ...         for a, acc in [("alie", 0.6), ("ipm", 0.7)]]
        >>> worst_case_table(rows).records()
        [{'alie': 0.6, 'ipm': 0.7, 'worst_case': 0.6, 'worst_attack': 'alie', 'lr': 0.1,
          'selected_on': 'test_accuracy', 'selection_worst_case': 0.6, 'num_seeds': 1}]
        """
        out = []
        for r in self.rows:
            record = dict(r.setting)
            record.update({a: r.per_attack.get(a, math.nan) for a in self.attacks})
            record["worst_case"] = r.worst_case
            record["worst_attack"] = r.worst_attack
            record.update(r.hyperparameters)
            record["selected_on"] = self.selected_on
            record["selection_worst_case"] = r.selection_score
            record["num_seeds"] = r.num_seeds
            out.append(record)
        return out


def _lower_is_better(column: str) -> bool:
    return "loss" in column or "norm" in column or "distance" in column


def _key(value: Any) -> tuple:
    """A sort and grouping key that treats 1 and 1.0 alike and mixes types safely."""
    if value is None:
        return (0, 0.0, "")
    if isinstance(value, (int, float, np.integer, np.floating)):
        return (1, float(value), "")
    return (2, 0.0, str(value))


def _ranks(values: Iterable[Any]) -> tuple[list[Any], np.ndarray]:
    """A field's distinct values (numbers ascending, strings in order of appearance;
    1 and 1.0 are one value, the first seen) and the index of every value among them."""
    values = list(values)
    first: dict[tuple, Any] = {}
    for value in values:
        first.setdefault(_key(value), value)
    distinct = list(first)
    if all(k[0] < 2 for k in distinct):
        distinct.sort()
    rank = {k: i for i, k in enumerate(distinct)}
    return [first[k] for k in distinct], np.array([rank[_key(v)] for v in values], dtype=int)


def _ordered_values(rows: Sequence[dict], field: str) -> list[Any]:
    """A field's distinct values: numbers ascending, strings in order of appearance."""
    return _ranks(row.get(field) for row in rows)[0]


def _reduce(
    work: pd.DataFrame, keys: list[str], values: pd.Series, reduce: str, lower: bool
) -> tuple[pd.Series, pd.Series]:
    """Best of ``values`` over each run and mean over seeds, per group of ``keys``.

    Returns the reduced value and the number of seeds of every group.
    """
    data = work[[*keys, "seed", "step"]].assign(value=values)
    # one value per seed and step (a row written twice counts once, the last one)
    data = data.drop_duplicates([*keys, "seed", "step"], keep="last")
    best = "min" if lower else "max"
    if reduce == "max_then_mean":
        per_seed = data.groupby([*keys, "seed"], dropna=False)["value"].agg(best)
        value = per_seed.groupby(level=keys).mean()
    else:
        per_step = data.groupby([*keys, "step"])["value"].mean()
        value = per_step.groupby(level=keys).agg(best)
    seeds = data.groupby(keys)["seed"].nunique(dropna=False)
    return value, seeds


def _worst(per_attack: dict[str, float], lower: bool) -> tuple[float, str | None]:
    if not per_attack or any(math.isnan(v) for v in per_attack.values()):
        return math.nan, None
    pick = max if lower else min
    attack = pick(per_attack, key=per_attack.get)
    return per_attack[attack], attack


def worst_case_table(
    rows: Sequence[dict[str, Any]],
    *,
    attack_field: str = "attack",
    metric: str = "test_accuracy",
    select_on: str | None = "validation_accuracy",
    hyperparameters: Sequence[str] = DEFAULT_HYPERPARAMETERS,
    reduce: str = "mean_then_max",
) -> WorstCaseTable:
    """The worst-case maximal ``metric`` of every setting, hyperparameters chosen as in ByzFL.

    A setting is a combination of the rows' grid fields other than
    ``attack_field``, ``hyperparameters`` and the seed (the grid fields: the
    columns that are neither ``run_id``, ``seed`` nor measurements, see
    :func:`measured_columns`). For each setting and
    hyperparameter combination, the best ``select_on`` over each run (mean
    over seeds, see ``reduce``) is taken per attack, and the combination
    whose worst case over the attacks is best is chosen; the table reports
    that combination's ``metric``. ``select_on=None``, or a ``select_on``
    column that is NaN in every row, selects on ``metric`` itself (noted in
    ``table.notes``). Pass ``hyperparameters=()`` to keep every combination as
    its own setting. Columns with ``loss``, ``norm`` or ``distance`` in their
    name are minimised: for them "best" is the lowest, the worst case the highest.

    Parameters
    ----------
    rows : sequence of dict
        Rows as :func:`load_runs` returns them (column -> value), all with
        the keys of the first, which must hold ``step`` and ``metric``.
    attack_field : str, default "attack"
        The column holding the attack.
    metric : str, default "test_accuracy"
        The measurement column to report.
    select_on : str or None, default "validation_accuracy"
        The measurement column to choose the hyperparameters on.
    hyperparameters : sequence of str, default :data:`DEFAULT_HYPERPARAMETERS`
        The grid fields tuned per setting (those absent from the rows are
        ignored).
    reduce : {"mean_then_max", "max_then_mean"}, default "mean_then_max"
        The order of "best over the run" and "mean over seeds": the maximum
        of the mean curve (the ARC authors' definition, as ByzFL's
        ``evaluate_results.py`` computes it) or the mean of per-seed maxima
        (see the module's docstring). It applies to the selection column and
        to the reported metric alike.

    Returns
    -------
    WorstCaseTable
        One :class:`SettingResult` per setting, in the order of the
        settings' values (numbers ascending, strings as they appear).

    Raises
    ------
    ValueError
        If ``reduce`` is not one of :data:`REDUCTIONS` (``"reduce must be
        one of mean_then_max, max_then_mean, got ..."``), ``rows`` is empty
        (``"no rows to report on"``) or ``metric`` is not a column
        (``"unknown metric ...; runs.csv has ..."``).

    Examples
    --------
    A sweep of one setting: two attacks, two learning rates, one seed,
    evaluations at steps 10 and 20 (a ``runs.csv`` and ``sweep.yaml`` as
    :func:`jaxrobust.run.sweep.run_sweep` writes them):

    >>> import os, tempfile
    >>> directory = tempfile.mkdtemp()
    >>> with open(os.path.join(directory, "runs.csv"), "w") as fh:
    ...     _ = fh.write(
    ...         "run_id,attack,lr,seed,step,test_accuracy,validation_accuracy\\n"
    ...         "a,sign_flip,0.1,0,10,0.5,0.8\\n"
    ...         "a,sign_flip,0.1,0,20,0.7,0.8\\n"
    ...         "b,alie,0.1,0,10,0.4,0.7\\n"
    ...         "b,alie,0.1,0,20,0.6,0.7\\n"
    ...         "c,sign_flip,0.5,0,10,0.9,0.95\\n"
    ...         "c,sign_flip,0.5,0,20,0.9,0.95\\n"
    ...         "d,alie,0.5,0,10,0.85,0.6\\n"
    ...         "d,alie,0.5,0,20,0.85,0.6\\n"
    ...     )
    >>> with open(os.path.join(directory, "sweep.yaml"), "w") as fh:
    ...     _ = fh.write("dataset: digits\\nsteps: 20\\ndefence: median\\n"
    ...                  "grid: {attack: [sign_flip, alie], lr: [0.1, 0.5]}\\n")
    >>> rows, _ = load_runs(directory)

    ``lr=0.1`` has the better worst case on validation (0.7 against 0.6), so
    its test accuracies are reported, although ``lr=0.5`` is better on test:

    >>> (result,) = worst_case_table(rows).rows
    >>> result.hyperparameters, result.per_attack, result.worst_case, result.worst_attack
    ({'lr': 0.1}, {'sign_flip': 0.7, 'alie': 0.6}, 0.6, 'alie')

    Selecting on the test metric itself picks ``lr=0.5`` (optimistic, noted):

    >>> table = worst_case_table(rows, select_on=None)
    >>> table.rows[0].hyperparameters, table.rows[0].worst_case, table.notes
    ({'lr': 0.5}, 0.85, ['hyperparameters were selected on test_accuracy itself (optimistic)'])

    Every combination as its own setting:

    >>> [(r.setting, r.worst_case) for r in worst_case_table(rows, hyperparameters=()).rows]
    [({'lr': 0.1}, 0.6), ({'lr': 0.5}, 0.85)]
    >>> worst_case_table(rows, metric="accuracy")
    Traceback (most recent call last):
        ...
    ValueError: unknown metric 'accuracy'; runs.csv has test_accuracy, validation_accuracy
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
    if not rows:
        raise ValueError("no rows to report on")
    measured = measured_columns(rows[0])
    if metric not in rows[0]:
        known = [c for c in measured if c != "step"]
        raise ValueError(f"unknown metric {metric!r}; runs.csv has {', '.join(known)}")
    frame = pd.DataFrame(list(rows), dtype=object)

    def numbers(column: str) -> pd.Series:
        return pd.to_numeric(frame[column], errors="coerce").astype(float)

    notes: list[str] = []
    if select_on is None:
        selected_on = metric
        notes.append(f"hyperparameters were selected on {metric} itself (optimistic)")
    elif select_on not in rows[0] or numbers(select_on).isna().all():
        selected_on = metric
        notes.append(
            f"{select_on} is NaN in every run (the sweep has no validation split, "
            f"`validation: 0`): hyperparameters were selected on {metric} itself, "
            "which is optimistic; set `validation` in the sweep to select on held-out data"
        )
    else:
        selected_on = select_on
    lower, select_lower = _lower_is_better(metric), _lower_is_better(selected_on)

    bookkeeping = {"run_id", "seed", *measured}
    fields = [k for k in rows[0] if k not in bookkeeping and k != attack_field]
    hyper_fields = [f for f in fields if f in hyperparameters]
    setting_fields = [f for f in fields if f not in hyper_fields]
    attack_values = frame[attack_field] if attack_field in frame else [None] * len(frame)
    attacks = [str(a) for a in _ranks(attack_values)[0]]

    # Every grid field as the rank of its value, so that groups come out in rank order;
    # "all" is one group holding everything (the table may have no setting field).
    setting_keys = ["all", *(f"s{i}" for i in range(len(setting_fields)))]
    combo_keys = [*setting_keys, *(f"h{i}" for i in range(len(hyper_fields)))]
    keys = [*combo_keys, "attack"]
    work = pd.DataFrame({"all": np.zeros(len(frame), dtype=int)}, index=frame.index)
    for key, field in zip(combo_keys[1:], [*setting_fields, *hyper_fields], strict=True):
        work[key] = _ranks(frame[field])[1]
    attack_index = {a: i for i, a in enumerate(attacks)}
    work["attack"] = [attack_index[str(a)] for a in attack_values]
    work["seed"] = frame["seed"] if "seed" in frame else 0
    work["step"] = frame["step"]

    def per_attack(column: str, lower_: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The reduced ``column`` and the number of seeds, one row per setting and
        hyperparameter combination, one column per attack (NaN and 0 where it has no run)."""
        value, seeds = _reduce(work, keys, numbers(column), reduce, lower_)
        attack_codes = range(len(attacks))
        value = value.unstack("attack").reindex(columns=attack_codes)
        seeds = seeds.unstack("attack").reindex(columns=attack_codes).fillna(0).astype(int)
        return value, seeds

    selection, _ = per_attack(selected_on, select_lower)
    # a combination's worst case over the attacks: NaN where an attack has no value
    scores = (
        selection.max(axis=1, skipna=False) if select_lower else selection.min(axis=1, skipna=False)
    )
    values, seeds = per_attack(metric, lower)
    # the rows' position of each combination's first row: the values shown
    first_row = work.reset_index(drop=False).drop_duplicates(combo_keys).set_index(combo_keys)
    first_row = first_row.iloc[:, 0]
    results = []
    for _, combos in scores.groupby(level=setting_keys, sort=True):
        complete = combos.dropna()
        if complete.empty:
            chosen, best_score = combos.index[0], math.nan
        else:
            # idxmax/idxmin: the first of equal combinations wins, as in ByzFL
            chosen = complete.idxmin() if select_lower else complete.idxmax()
            best_score = float(complete[chosen])
        result = {attacks[i]: float(v) for i, v in values.loc[chosen].items()}
        worst, worst_attack = _worst(result, lower)
        sample = rows[int(first_row.loc[chosen])]
        results.append(
            SettingResult(
                setting={f: sample.get(f) for f in setting_fields},
                per_attack=result,
                worst_case=worst,
                worst_attack=worst_attack,
                hyperparameters={f: sample.get(f) for f in hyper_fields},
                selection_score=best_score,
                num_seeds=int(seeds.loc[chosen].min()),
                candidates=len(combos),
            )
        )
    incomplete = int(scores.isna().sum())
    if incomplete:
        notes.append(
            f"{incomplete} setting/hyperparameter combination(s) have no {selected_on} for "
            "some attack (runs missing, e.g. a sweep still running, or NaN); they were not "
            "selected where a complete combination existed"
        )
    return WorstCaseTable(
        metric=metric,
        selected_on=selected_on,
        reduce=reduce,
        setting_fields=setting_fields,
        attacks=attacks,
        hyperparameter_fields=hyper_fields,
        rows=results,
        notes=notes,
        attack_field=attack_field,
    )


# --------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------


def _show(value: Any) -> str:
    """A setting or hyperparameter value as written in the sweep (``0.1``, ``10.0``)."""
    return "-" if value is None else str(value)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "-"
        return f"{value:.{digits}f}"
    return str(value)


def write_table_csv(table: WorstCaseTable, path: str | os.PathLike) -> str:
    """One row per setting: setting fields, one column per attack, ``worst_case``,
    ``worst_attack``, the chosen hyperparameters, ``selected_on``,
    ``selection_worst_case`` and ``num_seeds``.

    Parameters
    ----------
    table : WorstCaseTable
        The table of :func:`worst_case_table`.
    path : str or os.PathLike
        The CSV file to write (overwritten).

    Returns
    -------
    str
        ``path``. Cells are empty for None and ``nan`` for a NaN number;
        lines end in ``\\r\\n``, as the csv module writes them.

    Examples
    --------
    >>> import os, tempfile
    >>> rows = [{"attack": a, "lr": 0.1, "seed": 0, "step": 1, "test_accuracy": acc}
    ...         for a, acc in [("alie", 0.6), ("ipm", 0.7)]]
    >>> path = write_table_csv(worst_case_table(rows), os.path.join(tempfile.mkdtemp(), "t.csv"))
    >>> print(open(path).read())
    alie,ipm,worst_case,worst_attack,lr,selected_on,selection_worst_case,num_seeds
    0.6,0.7,0.6,alie,0.1,test_accuracy,0.6,1
    <BLANKLINE>
    """
    header = [
        *table.setting_fields,
        *table.attacks,
        "worst_case",
        "worst_attack",
        *table.hyperparameter_fields,
        "selected_on",
        "selection_worst_case",
        "num_seeds",
    ]
    records = [{k: record.get(k) for k in header} for record in table.records()]
    frame = pd.DataFrame(records, columns=header, dtype=object)
    # an empty cell for None (no worst attack, an unset field), "nan" for a NaN number
    frame = frame.map(lambda value: "" if value is None else value)
    frame.to_csv(path, index=False, na_rep="nan", lineterminator="\r\n")
    return os.fspath(path)


def _description(table: WorstCaseTable) -> str:
    best = "lowest" if _lower_is_better(table.metric) else "best"
    order = (
        f"{best} over the evaluation steps of each run, then the mean over seeds"
        if table.reduce == "max_then_mean"
        else f"mean over seeds at each evaluation step, then the {best} step (as ByzFL)"
    )
    worst = "highest" if _lower_is_better(table.metric) else "lowest"
    text = f"Each attack column: {table.metric}, {order}. Worst case: the {worst} over the attacks."
    if table.hyperparameter_fields:
        text += (
            f" Hyperparameters ({', '.join(table.hyperparameter_fields)}) chosen per setting "
            f"for the best worst-case {table.selected_on}."
        )
    return text


def _markdown_rows(frame: pd.DataFrame) -> list[str]:
    """``| a | b |`` lines, one per row of a frame of cell texts."""
    return ("| " + frame.agg(" | ".join, axis=1) + " |").tolist() if len(frame) else []


def title(table: WorstCaseTable) -> str:
    """The table's title line: the metric and the reduction over steps and seeds.

    Parameters
    ----------
    table : WorstCaseTable
        The table of :func:`worst_case_table`.

    Returns
    -------
    str
        A Markdown header line naming ``table.metric`` and ``table.reduce``
        (its wording in :data:`REDUCTION_NAMES`).

    Examples
    --------
    >>> rows = [{"attack": "alie", "seed": s, "step": t, "test_accuracy": 0.5}
    ...         for s in (0, 1) for t in (1, 2)]
    >>> title(worst_case_table(rows))
    '# Worst-case maximal test_accuracy: max of the mean curve over seeds (mean_then_max)'
    >>> title(worst_case_table(rows, reduce="max_then_mean"))
    '# Worst-case maximal test_accuracy: mean over seeds of per-seed maxima (max_then_mean)'
    """
    return f"# Worst-case maximal {table.metric}: {REDUCTION_NAMES[table.reduce]} ({table.reduce})"


def table_markdown(table: WorstCaseTable, sweep_config: dict[str, Any] | None = None) -> str:
    """The table as Markdown: one row per setting, the worst case in bold.

    Parameters
    ----------
    table : WorstCaseTable
        The table of :func:`worst_case_table`.
    sweep_config : dict, optional
        The sweep's config (``sweep.yaml``): its fields the grid leaves fixed
        are listed under the table.

    Returns
    -------
    str
        A title, the table's description, the table (the varying setting
        fields, one column per attack, the worst case and its attack, the
        chosen hyperparameters), the fixed fields, the seeds per cell and the
        table's notes.

    Examples
    --------
    A sweep of one setting: two attacks, two learning rates, one seed,
    evaluations at steps 10 and 20 (a ``runs.csv`` and ``sweep.yaml`` as
    :func:`jaxrobust.run.sweep.run_sweep` writes them):

    >>> import os, tempfile
    >>> directory = tempfile.mkdtemp()
    >>> with open(os.path.join(directory, "runs.csv"), "w") as fh:
    ...     _ = fh.write(
    ...         "run_id,attack,lr,seed,step,test_accuracy,validation_accuracy\\n"
    ...         "a,sign_flip,0.1,0,10,0.5,0.8\\n"
    ...         "a,sign_flip,0.1,0,20,0.7,0.8\\n"
    ...         "b,alie,0.1,0,10,0.4,0.7\\n"
    ...         "b,alie,0.1,0,20,0.6,0.7\\n"
    ...         "c,sign_flip,0.5,0,10,0.9,0.95\\n"
    ...         "c,sign_flip,0.5,0,20,0.9,0.95\\n"
    ...         "d,alie,0.5,0,10,0.85,0.6\\n"
    ...         "d,alie,0.5,0,20,0.85,0.6\\n"
    ...     )
    >>> with open(os.path.join(directory, "sweep.yaml"), "w") as fh:
    ...     _ = fh.write("dataset: digits\\nsteps: 20\\ndefence: median\\n"
    ...                  "grid: {attack: [sign_flip, alie], lr: [0.1, 0.5]}\\n")
    >>> rows, config = load_runs(directory)
    >>> print(table_markdown(worst_case_table(rows), config))
    # Worst-case maximal test_accuracy: max of the mean curve over seeds (mean_then_max)
    <BLANKLINE>
    Each attack column: test_accuracy, mean over seeds at each evaluation step, then the
    best step (as ByzFL). Worst case: the lowest over the attacks. Hyperparameters (lr)
    chosen per setting for the best worst-case validation_accuracy.
    <BLANKLINE>
    | sign_flip | alie | worst case | worst attack | lr |
    | ---: | ---: | ---: | --- | ---: |
    | 0.7000 | 0.6000 | **0.6000** | alie | 0.1 |
    <BLANKLINE>
    Fixed: dataset=digits, defence=median, steps=20
    <BLANKLINE>
    Seeds per cell: 1.
    <BLANKLINE>
    """
    varying = table.varying_settings()
    fixed = [f for f in table.setting_fields if f not in varying]
    header = [*varying, *table.attacks, "worst case", "worst attack", *table.hyperparameter_fields]
    align = [
        "---:" if all(_key(r.setting[f])[0] == 1 for r in table.rows) else "---" for f in varying
    ]
    align += ["---:"] * (len(table.attacks) + 1) + ["---"]
    align += ["---:"] * len(table.hyperparameter_fields)
    settings = pd.DataFrame([r.setting for r in table.rows], columns=varying, dtype=object)
    results = pd.DataFrame([r.per_attack for r in table.rows], columns=table.attacks, dtype=object)
    results["worst case"] = [r.worst_case for r in table.rows]
    results["worst attack"] = [r.worst_attack for r in table.rows]
    results = results.map(_fmt)
    results["worst case"] = results["worst case"].where(
        results["worst case"] == "-", "**" + results["worst case"] + "**"
    )
    hyper = pd.DataFrame(
        [r.hyperparameters for r in table.rows], columns=table.hyperparameter_fields, dtype=object
    )
    cells = pd.concat([settings.map(_show), results, hyper.map(_show)], axis=1)
    lines = [
        title(table),
        "",
        _description(table),
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(align) + " |",
        *_markdown_rows(cells),
        "",
    ]
    constants = {f: table.rows[0].setting[f] for f in fixed} if table.rows else {}
    if sweep_config:
        # runs.csv's own columns: plain grid fields and the fields of linked axes
        grid = sweep_config.get("grid") or {}
        columns = {*grid, *grid_fields(grid), *table.setting_fields}
        columns.update(table.hyperparameter_fields)
        for name in CONSTANTS_SHOWN:
            if name in sweep_config and name not in columns and name not in constants:
                value = sweep_config[name]
                constants[name] = " ".join(value) if isinstance(value, list) else value
    if constants:
        lines.append("Fixed: " + ", ".join(f"{k}={_show(v)}" for k, v in constants.items()))
        lines.append("")
    seeds = sorted({r.num_seeds for r in table.rows})
    lines.append(f"Seeds per cell: {', '.join(map(str, seeds))}.")
    for note in table.notes:
        lines.append("")
        lines.append(f"Note: {note}.")
    return "\n".join(lines) + "\n"


def write_table_markdown(
    table: WorstCaseTable, path: str | os.PathLike, sweep_config: dict[str, Any] | None = None
) -> str:
    """Write :func:`table_markdown` of ``table`` to ``path``.

    Parameters
    ----------
    table : WorstCaseTable
        The table of :func:`worst_case_table`.
    path : str or os.PathLike
        The Markdown file to write (overwritten).
    sweep_config : dict, optional
        The sweep's config, for the fixed fields (see :func:`table_markdown`).

    Returns
    -------
    str
        ``path``.

    Examples
    --------
    >>> import os, tempfile
    >>> rows = [{"attack": "alie", "seed": 0, "step": 1, "test_accuracy": 0.6}]
    >>> path = os.path.join(tempfile.mkdtemp(), "t.md")
    >>> path = write_table_markdown(worst_case_table(rows), path)
    >>> print(open(path).read())
    # Worst-case maximal test_accuracy: max of the mean curve over seeds (mean_then_max)
    ...
    | alie | worst case | worst attack |
    | ---: | ---: | --- |
    | 0.6000 | **0.6000** | alie |
    ...
    """
    with open(path, "w") as fh:
        fh.write(table_markdown(table, sweep_config))
    return os.fspath(path)


# --------------------------------------------------------------------------
# Plots (matplotlib's Agg canvas; pyplot and its global state are never used)
# --------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _label(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_show(v)}" for k, v in values.items())


def plot_heatmap(table: WorstCaseTable, x_field: str, y_field: str, path: str | os.PathLike) -> str:
    """Worst-case ``table.metric`` over ``x_field`` x ``y_field``, annotated cells.

    One panel per combination of the other varying setting fields (e.g. per
    defence), all on one colour scale; each cell shows the worst case and,
    below it, the attack that achieved it. Writes a PNG to ``path``.

    Parameters
    ----------
    table : WorstCaseTable
        The table of :func:`worst_case_table`.
    x_field, y_field : str
        Setting fields of ``table`` for the columns and rows of each panel
        (see :func:`heatmap_fields` for a default).
    path : str or os.PathLike
        The PNG file to write (overwritten).

    Returns
    -------
    str
        ``path``.

    Raises
    ------
    ValueError
        If ``x_field`` or ``y_field`` is not in ``table.setting_fields``
        (``"... is not a setting field of the table; choose from ..."``).

    Examples
    --------
    >>> import os, tempfile
    >>> rows = [
    ...     {"num_byzantine": f, "alpha": alpha, "attack": attack, "seed": 0, "step": 10,
    ...      "test_accuracy": 1.0 - 0.2 * f - (0.1 if attack == "alie" else 0.0) - 0.1 * alpha}
    ...     for f in (1, 2) for alpha in (0.5, 1.0) for attack in ("sign_flip", "alie")
    ... ]
    >>> table = worst_case_table(rows)
    >>> path = os.path.join(tempfile.mkdtemp(), "h.png")
    >>> path = plot_heatmap(table, "num_byzantine", "alpha", path)
    >>> open(path, "rb").read(4)
    b'\\x89PNG'
    >>> plot_heatmap(table, "num_byzantine", "lr", path)
    Traceback (most recent call last):
        ...
    ValueError: 'lr' is not a setting field of the table; choose from num_byzantine, alpha
    """
    for field in (x_field, y_field):
        if field not in table.setting_fields:
            raise ValueError(
                f"{field!r} is not a setting field of the table; "
                f"choose from {', '.join(table.setting_fields)}"
            )
    others = [f for f in table.varying_settings() if f not in (x_field, y_field)]
    xs = _ordered_values([r.setting for r in table.rows], x_field)
    ys = _ordered_values([r.setting for r in table.rows], y_field)
    panels: dict[tuple, list[SettingResult]] = {}
    for r in table.rows:
        panels.setdefault(tuple(_key(r.setting[f]) for f in others), []).append(r)
    count = len(panels)
    cols = min(count, 3)
    rows_ = math.ceil(count / cols)
    width = max(3.0, 0.9 * len(xs) + 1.8)
    height = max(2.6, 0.6 * len(ys) + 1.6)
    fig = _figure(cols * width + 1.2, rows_ * height)
    values = [r.worst_case for r in table.rows if not math.isnan(r.worst_case)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.05, hi + 0.05
    cmap = "viridis_r" if _lower_is_better(table.metric) else "viridis"
    image = None
    for index, (_, members) in enumerate(panels.items()):
        ax = fig.add_subplot(rows_, cols, index + 1)
        grid = np.full((len(ys), len(xs)), np.nan)
        attack = np.full((len(ys), len(xs)), "", dtype=object)
        xi = {_key(v): i for i, v in enumerate(xs)}
        yi = {_key(v): i for i, v in enumerate(ys)}
        for r in members:
            i, j = yi[_key(r.setting[y_field])], xi[_key(r.setting[x_field])]
            grid[i, j], attack[i, j] = r.worst_case, r.worst_attack or ""
        image = ax.imshow(grid, origin="lower", cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
        for i in range(len(ys)):
            for j in range(len(xs)):
                value = grid[i, j]
                if math.isnan(value):
                    ax.text(j, i, "-", ha="center", va="center", fontsize=9)
                    continue
                dark = (value - lo) / (hi - lo) < 0.5
                if _lower_is_better(table.metric):
                    dark = not dark
                colour = "white" if dark else "black"
                ax.text(
                    j, i + 0.08, f"{value:.3f}", ha="center", va="center", color=colour, fontsize=9
                )
                ax.text(
                    j, i - 0.22, attack[i, j], ha="center", va="center", color=colour, fontsize=6
                )
        ax.set_xticks(range(len(xs)), [_show(v) for v in xs])
        ax.set_yticks(range(len(ys)), [_show(v) for v in ys])
        ax.set_xlabel(x_field)
        ax.set_ylabel(y_field)
        title = _label({f: members[0].setting[f] for f in others})
        ax.set_title(title or f"worst-case {table.metric}", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=fig.axes, shrink=0.8, label=f"worst-case {table.metric}")
    fig.suptitle(
        f"Worst-case maximal {table.metric}, {REDUCTION_NAMES[table.reduce]} "
        f"(hyperparameters on {table.selected_on})"
    )
    fig.savefig(path)
    return os.fspath(path)


def plot_curves(
    rows: Sequence[dict[str, Any]],
    path: str | os.PathLike,
    *,
    metric: str = "test_accuracy",
    table: WorstCaseTable | None = None,
    attack_field: str = "attack",
) -> str:
    """``metric`` against step: mean over seeds with a min-max band, one line per attack.

    One panel per setting. With ``table``, each setting shows only its chosen
    hyperparameters (and the table's setting and hyperparameter fields are
    used); without it, every hyperparameter combination is its own panel.

    Parameters
    ----------
    rows : sequence of dict
        Rows as :func:`load_runs` returns them, with ``step`` and ``metric``.
    path : str or os.PathLike
        The PNG file to write (overwritten).
    metric : str, default "test_accuracy"
        The column to plot (the y axis is [0, 1] for an accuracy).
    table : WorstCaseTable, optional
        The table of :func:`worst_case_table` on ``rows``: plot only each
        setting's chosen hyperparameters.
    attack_field : str, default "attack"
        The column holding the attack (``table.attack_field`` with a table).

    Returns
    -------
    str
        ``path``.

    Raises
    ------
    ValueError
        If ``rows`` is empty (``"no rows to plot"``).

    Examples
    --------
    >>> import os, tempfile
    >>> rows = [{"attack": a, "seed": s, "step": step, "test_accuracy": 0.1 * step + 0.05 * s}
    ...         for a in ("alie", "ipm") for s in (0, 1) for step in (1, 2, 3)]
    >>> path = plot_curves(rows, os.path.join(tempfile.mkdtemp(), "curves.png"))
    >>> open(path, "rb").read(4)
    b'\\x89PNG'
    >>> plot_curves([], path)
    Traceback (most recent call last):
        ...
    ValueError: no rows to plot
    """
    if not rows:
        raise ValueError("no rows to plot")
    if table is not None:
        attack_field = table.attack_field
        settings, hyper = table.setting_fields, table.hyperparameter_fields
        chosen = {
            tuple(_key(r.setting[f]) for f in settings): tuple(
                _key(r.hyperparameters[f]) for f in hyper
            )
            for r in table.rows
        }
    else:
        settings = [k for k in rows[0] if k not in BOOKKEEPING and k != attack_field]
        hyper, chosen = [], None
    varying = [f for f in settings if len(_ordered_values(rows, f)) > 1]
    attacks = [str(a) for a in _ordered_values(rows, attack_field)]
    curves: dict[tuple, dict[str, dict[int, list[float]]]] = {}
    labels: dict[tuple, str] = {}
    for row in rows:
        setting = tuple(_key(row.get(f)) for f in settings)
        if chosen is not None:
            if chosen.get(setting) != tuple(_key(row.get(f)) for f in hyper):
                continue
        label = textwrap.fill(_label({f: row.get(f) for f in varying}), 48)
        if hyper:
            label += ("\n" if label else "") + _label({f: row.get(f) for f in hyper})
        labels[setting] = label
        per_step = curves.setdefault(setting, {}).setdefault(str(row.get(attack_field)), {})
        per_step.setdefault(row["step"], []).append(_number(row.get(metric)))
    order = {f: {_key(v): i for i, v in enumerate(_ordered_values(rows, f))} for f in settings}
    keys = sorted(
        curves, key=lambda k: tuple(order[f][v] for f, v in zip(settings, k, strict=True))
    )
    count = len(keys)
    cols = min(count, 4)
    rows_ = math.ceil(count / cols)
    fig = _figure(4.0 * cols, 3.0 * rows_ + 0.8)
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    colours = {a: palette(i % 10) for i, a in enumerate(attacks)}
    handles = {}
    for index, key in enumerate(keys):
        ax = fig.add_subplot(rows_, cols, index + 1)
        for attack in attacks:
            per_step = curves[key].get(attack)
            if not per_step:
                continue
            steps = sorted(per_step)
            values = [np.array(per_step[s], float) for s in steps]
            with np.errstate(all="ignore"):
                mean = [np.nanmean(v) if not np.all(np.isnan(v)) else np.nan for v in values]
                low = [np.nanmin(v) if not np.all(np.isnan(v)) else np.nan for v in values]
                high = [np.nanmax(v) if not np.all(np.isnan(v)) else np.nan for v in values]
            (line,) = ax.plot(steps, mean, marker="o", markersize=3, color=colours[attack])
            ax.fill_between(steps, low, high, color=colours[attack], alpha=0.2, linewidth=0)
            handles[attack] = line
        ax.set_title(labels[key] or metric, fontsize=8)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if "accuracy" in metric:
            ax.set_ylim(0, 1)
    if handles:
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="outside upper center",
            ncol=min(len(handles), 6),
            title=f"{attack_field} (mean over seeds, band: min-max)",
            fontsize=8,
        )
    fig.savefig(path)
    return os.fspath(path)


def heatmap_fields(table: WorstCaseTable) -> tuple[str, str] | None:
    """Default heatmap axes: ``num_byzantine`` and ``alpha`` when they vary, else the
    first two numeric setting fields with more than one value; ``None`` if fewer exist.

    Parameters
    ----------
    table : WorstCaseTable
        The table of :func:`worst_case_table`.

    Returns
    -------
    tuple of (str, str) or None
        ``(x_field, y_field)`` for :func:`plot_heatmap`, or ``None``.

    Examples
    --------
    >>> rows = [
    ...     {"num_byzantine": f, "alpha": alpha, "attack": attack, "seed": 0, "step": 10,
    ...      "test_accuracy": 1.0 - 0.2 * f - (0.1 if attack == "alie" else 0.0) - 0.1 * alpha}
    ...     for f in (1, 2) for alpha in (0.5, 1.0) for attack in ("sign_flip", "alie")
    ... ]
    >>> table = worst_case_table(rows)
    >>> heatmap_fields(table)
    ('num_byzantine', 'alpha')
    >>> heatmap_fields(worst_case_table([r for r in rows if r["alpha"] == 0.5])) is None
    True
    """
    numeric = [
        f for f in table.varying_settings() if all(_key(r.setting[f])[0] == 1 for r in table.rows)
    ]
    preferred = [f for f in HEATMAP_FIELDS if f in numeric]
    ranked = preferred + [f for f in numeric if f not in preferred]
    return (ranked[0], ranked[1]) if len(ranked) >= 2 else None


# --------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------


def make_report(
    directory: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    metric: str = "test_accuracy",
    select_on: str | None = "validation_accuracy",
    hyperparameters: Sequence[str] = DEFAULT_HYPERPARAMETERS,
    reduce: str = "mean_then_max",
) -> list[str]:
    """Write ``worst_case.csv``, ``worst_case.md``, a heatmap (when two numeric setting
    fields vary, see :func:`heatmap_fields`) and ``curves.png`` into ``out`` (default:
    the sweep directory). Returns the paths written, the Markdown table second.

    Parameters
    ----------
    directory : str or os.PathLike
        The sweep's output directory (``runs.csv``, ``sweep.yaml``), read
        with :func:`load_runs` (complete runs only).
    out : str or os.PathLike, optional
        Where to write (created if needed); default ``directory``.
    metric, select_on, hyperparameters, reduce
        As in :func:`worst_case_table`.

    Returns
    -------
    list of str
        ``worst_case.csv``, ``worst_case.md``, then
        ``heatmap_X_Y.png`` if :func:`heatmap_fields` finds two fields, then
        ``curves.png``, each joined to ``out``.

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`load_runs` and :func:`worst_case_table` raise them.

    Examples
    --------
    A sweep of one setting: two attacks, two learning rates, one seed,
    evaluations at steps 10 and 20 (a ``runs.csv`` and ``sweep.yaml`` as
    :func:`jaxrobust.run.sweep.run_sweep` writes them):

    >>> import os, tempfile
    >>> directory = tempfile.mkdtemp()
    >>> with open(os.path.join(directory, "runs.csv"), "w") as fh:
    ...     _ = fh.write(
    ...         "run_id,attack,lr,seed,step,test_accuracy,validation_accuracy\\n"
    ...         "a,sign_flip,0.1,0,10,0.5,0.8\\n"
    ...         "a,sign_flip,0.1,0,20,0.7,0.8\\n"
    ...         "b,alie,0.1,0,10,0.4,0.7\\n"
    ...         "b,alie,0.1,0,20,0.6,0.7\\n"
    ...         "c,sign_flip,0.5,0,10,0.9,0.95\\n"
    ...         "c,sign_flip,0.5,0,20,0.9,0.95\\n"
    ...         "d,alie,0.5,0,10,0.85,0.6\\n"
    ...         "d,alie,0.5,0,20,0.85,0.6\\n"
    ...     )
    >>> with open(os.path.join(directory, "sweep.yaml"), "w") as fh:
    ...     _ = fh.write("dataset: digits\\nsteps: 20\\ndefence: median\\n"
    ...                  "grid: {attack: [sign_flip, alie], lr: [0.1, 0.5]}\\n")
    >>> paths = make_report(directory, os.path.join(directory, "report"))
    >>> [os.path.basename(p) for p in paths]
    ['worst_case.csv', 'worst_case.md', 'curves.png']
    >>> print(open(paths[0]).read())
    sign_flip,alie,worst_case,worst_attack,lr,selected_on,selection_worst_case,num_seeds
    0.7,0.6,0.6,alie,0.1,validation_accuracy,0.7,1
    <BLANKLINE>
    """
    rows, sweep_config = load_runs(directory)
    table = worst_case_table(
        rows, metric=metric, select_on=select_on, hyperparameters=hyperparameters, reduce=reduce
    )
    out = os.fspath(directory if out is None else out)
    os.makedirs(out, exist_ok=True)
    paths = [
        write_table_csv(table, os.path.join(out, "worst_case.csv")),
        write_table_markdown(table, os.path.join(out, "worst_case.md"), sweep_config),
    ]
    axes = heatmap_fields(table)
    if axes is not None:
        x_field, y_field = axes
        name = f"heatmap_{x_field}_{y_field}.png"
        paths.append(plot_heatmap(table, x_field, y_field, os.path.join(out, name)))
    paths.append(plot_curves(rows, os.path.join(out, "curves.png"), metric=metric, table=table))
    return paths
