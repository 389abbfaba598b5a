"""The ``jaxrobust`` command: ``run``, ``demo``, ``sweep``, ``report`` and ``list``."""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
import typing

import yaml

from jaxrobust.config import (
    COMPONENTS,
    Config,
    default_of,
    describe,
    load_plugins,
)
from jaxrobust.core import registry

#: Config fields without a flag of their own (``plugins``: the repeatable ``--plugin``).
NO_FLAG = ("plugins",)


def config_fields() -> list[str]:
    """The config fields that have a flag, in declaration order.

    Every field of :class:`~jaxrobust.config.Config` but those of
    :data:`NO_FLAG`; the flag of ``num_honest`` is ``--num-honest``.

    Examples
    --------
    >>> config_fields()[:3]
    ['dataset', 'data_dir', 'max_train']
    >>> "num_honest" in config_fields(), "plugins" in config_fields()
    (True, False)
    """
    return [name for name in Config.model_fields if name not in NO_FLAG]


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field (``--num-honest``), generated from its declaration.

    Values are read as the field needs (``--defence arc,nnm,trimmed_mean``,
    ``--attack-options '{points: 8}'``, ``--clients-per-round none``) when the
    configuration is built, after the plugins are imported.
    """
    fields = parser.add_argument_group(
        "config fields", "override the --config file; values are checked as in a YAML file"
    )
    for name in config_fields():
        flag = "--" + name.replace("_", "-")
        fields.add_argument(flag, dest=name, default=None, metavar=_metavar(name), help=_help(name))


def _add_plugin_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE (dotted name or path to a .py file) first, so that the components "
        "it registers can be named; repeatable",
    )


def _metavar(name: str) -> str:
    kind = describe(name).split(",")[0].replace(" or none", "")
    return {"mapping": "YAML", "list of str": "NAMES"}.get(kind, kind.upper())


def _help(name: str) -> str:
    """The flag's one-line description, then what it accepts and its default."""
    default = default_of(name)
    if isinstance(default, list):
        default = ",".join(default)
    default = "none" if default is None else default
    text = f"{Config.model_fields[name].description} [{describe(name)}; default: {default}]"
    return text.replace("%", "%%")


def _flag_value(name: str, text: str):
    """A flag's text; a component in nested form (``{name: ..., options: ...}``) read as YAML."""
    stripped = text.strip()
    nested = (name in COMPONENTS and stripped.startswith("{")) or (
        name == "defence" and stripped.startswith("[")
    )
    return yaml.safe_load(stripped) if nested else text


def resolve_config(args: argparse.Namespace) -> Config:
    """The YAML file's fields (if any), overridden by every flag given, checked.

    The ``--plugin`` modules are imported before anything is read, and are
    added to the configuration's ``plugins``. A component flag in nested form
    (``--attack '{name: alie, options: {z: 1}}'``) replaces the file's
    options of that component.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed by :func:`parser`: ``config`` (a YAML file or None),
        ``plugin`` and one attribute per config field (None: not given).

    Returns
    -------
    Config
        Validated (:meth:`~jaxrobust.config.Config.validate`).

    Raises
    ------
    ValueError
        An invalid field value or combination
        (:class:`~jaxrobust.config.ConfigError`).
    FileNotFoundError
        No file at ``--config``.

    Examples
    --------
    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "run.yaml")
    ...     with open(path, "w") as fh:
    ...         _ = fh.write("steps: 100\\nlr: 0.05\\n")
    ...     args = parser().parse_args(
    ...         ["run", "--config", path, "--lr", "0.2", "--defence", "nnm,median"]
    ...     )
    ...     config = resolve_config(args)
    >>> config.steps, config.lr, config.defence  # the flags override the file
    (100, 0.2, ('nnm', 'median'))
    >>> resolve_config(parser().parse_args(["run", "--steps", "30", "--eval-every", "20"]))
    Traceback (most recent call last):
    ...
    jaxrobust.config.ConfigError: steps needs to be a multiple of eval_every, got steps=30, ...
    """
    plugins = list(getattr(args, "plugin", None) or [])
    load_plugins(plugins)
    base = Config.from_yaml(args.config) if args.config else Config()
    changes = {
        name: _flag_value(name, getattr(args, name))
        for name in config_fields()
        if getattr(args, name, None) is not None
    }
    if plugins:
        changes["plugins"] = list(dict.fromkeys([*base.plugins, *plugins]))
    return base.replace(**changes).validate()


def _flags_given(args: argparse.Namespace) -> bool:
    return any(getattr(args, name, None) is not None for name in config_fields())


def command_run(args: argparse.Namespace) -> int:
    """``jaxrobust run``: one configuration, all its seeds in one program.

    Shows a progress bar on standard error and prints the final test
    accuracy over the seeds; with ``--show-partition``, first the honest
    workers x classes table; with ``--out DIR``, writes ``DIR/config.yaml``
    and streams ``DIR/metrics.csv`` (one row per seed and evaluation).

    Parameters
    ----------
    args : argparse.Namespace
        Parsed by :func:`parser` (``run``).

    Returns
    -------
    int
        0.

    Raises
    ------
    ValueError
        An invalid configuration, or a setting its algorithm or a rule
        refuses, before any data is loaded.

    Examples
    --------
    A rule's bound fails before anything runs:

    >>> args = parser().parse_args(
    ...     ["run", "--defence", "krum", "--num-honest", "3", "--num-byzantine", "1"]
    ... )
    >>> command_run(args)
    Traceback (most recent call last):
    ...
    ValueError: krum needs n > 2f + 2, got n=4, f=1

    From the shell, a short run on the offline data set::

        jaxrobust run --model logistic_regression --steps 100 --eval-every 20 --out results/run
    """
    from jaxrobust.algorithms.base import check_setting
    from jaxrobust.run import simulator

    config = resolve_config(args)
    check_setting(config)  # a rule's bound or a bad option fails before anything is shown
    if getattr(registry("algorithm")[config.algorithm], "decentralized", False):
        from jaxrobust.topology import graph_of

        print(graph_of(config).describe())  # nodes, degrees, spectral gap
    dataset = simulator.load_for(config)
    if args.show_partition:
        from jaxrobust.data import class_counts, format_class_table

        parts = simulator.partition_of(config, dataset.y_train, config.seed)
        print(f"honest workers x classes ({config.heterogeneity}, seed {config.seed}):")
        print(format_class_table(class_counts(dataset.y_train, parts, dataset.num_classes)))
    writer = None
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "config.yaml"), "w") as fh:
            fh.write(config.to_yaml())
        handle = open(os.path.join(args.out, "metrics.csv"), "w", newline="")  # noqa: SIM115
        writer = csv.DictWriter(handle, fieldnames=simulator.metric_columns([config.algorithm]))
        writer.writeheader()
        handle.flush()
    from tqdm import tqdm

    # steps done of the total, elapsed, time left (at the mean rate so far), latest accuracy;
    # redrawn at every evaluation (mininterval=0), the only time it moves
    progress = tqdm(
        total=config.steps, desc="run", unit="step", file=sys.stderr, smoothing=0, mininterval=0
    )

    def on_evaluation(step, rows):
        if writer is not None:
            writer.writerows(rows)
            handle.flush()
        accuracy = sum(r["test_accuracy"] for r in rows) / len(rows)
        progress.set_postfix_str(f"test accuracy {accuracy:.4f}", refresh=False)
        progress.update(step - progress.n)

    result = simulator.simulate(config, dataset, on_evaluation=on_evaluation)
    progress.close()
    if writer is not None:
        handle.close()
    accuracies = result.final("test_accuracy")
    print(
        f"final test accuracy over {config.seeds} seed(s): "
        f"{accuracies.mean():.4f} (min {accuracies.min():.4f}, max {accuracies.max():.4f}) "
        f"in {result.seconds:.1f} s"
    )
    return 0


DEMO_DEFENCES = {
    "mean": ("mean",),
    "CWTM o NNM": ("nnm", "trimmed_mean"),
    "CWTM o NNM o ARC": ("arc", "nnm", "trimmed_mean"),
}
DEMO_ATTACKS = ("sign_flip", "alie")


def best_of_mean_curve(rows, metric: str = "test_accuracy") -> float:
    """The maximum over steps of ``metric`` averaged over seeds (the report's default).

    Examples
    --------
    >>> rows = [{"seed": s, "step": t, "test_accuracy": a}
    ...         for s, t, a in [(0, 1, 0.9), (0, 2, 0.3), (1, 1, 0.3), (1, 2, 0.9)]]
    >>> best_of_mean_curve(rows)  # the mean curve is flat; each seed's best is 0.9
    0.6
    """
    per_step: dict = {}
    for row in rows:
        per_step.setdefault(row["step"], []).append(row[metric])
    return max(sum(values) / len(values) for values in per_step.values())


def command_demo(args: argparse.Namespace) -> int:
    """``jaxrobust demo``: best test accuracy of three defences under no attack and two attacks.

    The defences are :data:`DEMO_DEFENCES`, the attacks ``none`` (with no
    Byzantine worker) and :data:`DEMO_ATTACKS`; one :func:`~jaxrobust.run.simulator.simulate`
    per cell. Without ``--config`` or flags, the base is the default
    configuration with a Dirichlet (``alpha=0.3``) split, 200 steps, an
    evaluation every 50.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed by :func:`parser` (``demo``).

    Returns
    -------
    int
        0.

    Raises
    ------
    ValueError
        An invalid configuration.

    Examples
    --------
    >>> command_demo(parser().parse_args(["demo", "--num-honest", "0"]))
    Traceback (most recent call last):
    ...
    jaxrobust.config.ConfigError: num_honest needs to be >= 1, got num_honest=0
    """
    from jaxrobust.run import simulator

    base = resolve_config(args)
    if args.config is None and not _flags_given(args):
        base = base.replace(heterogeneity="dirichlet", alpha=0.3, steps=200, eval_every=50)
    dataset = simulator.load_for(base)
    print(
        f"{base.dataset}: {base.num_honest} honest + {base.num_byzantine} Byzantine workers, "
        f"{base.heterogeneity} (alpha={base.alpha}), {base.model}, {base.steps} steps, "
        f"{base.seeds} seed(s); best test accuracy of the curve averaged over seeds"
    )
    header = f"{'defence':20s}" + "".join(f"{a:>12s}" for a in ("no attack", *DEMO_ATTACKS))
    print(header)
    print("-" * len(header))
    start = time.perf_counter()
    for label, defence in DEMO_DEFENCES.items():
        cells = []
        for attack in ("none", *DEMO_ATTACKS):
            config = base.replace(defence=defence, attack=attack)
            if attack == "none":
                config = config.replace(num_byzantine=0, declared_f=base.defence_f)
            result = simulator.simulate(config, dataset)
            best = best_of_mean_curve(result.rows)
            cells.append(f"{best:12.3f}")
        print(f"{label:20s}" + "".join(cells), flush=True)
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


def command_sweep(args: argparse.Namespace) -> int:
    """``jaxrobust sweep FILE --out DIR``: run a grid (:func:`jaxrobust.run.sweep.run_sweep`).

    Prints the number of runs and program structures, shows a progress bar
    on standard error, and resumes a sweep already in ``DIR``.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed by :func:`parser` (``sweep``): ``sweep_file``, ``out``,
        ``max_batch``, ``plugin``.

    Returns
    -------
    int
        0.

    Raises
    ------
    ValueError
        An invalid sweep file, or a grid point a rule refuses (before any
        run).

    Examples
    --------
    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "sweep.yaml")
    ...     with open(path, "w") as fh:
    ...         _ = fh.write("num_honest: 3\\nnum_byzantine: 1\\n")
    ...         _ = fh.write("grid:\\n  defence: [median, krum]\\n")
    ...     args = parser().parse_args(["sweep", path, "--out", os.path.join(tmp, "out")])
    ...     try:
    ...         command_sweep(args)
    ...     except ValueError as err:
    ...         print(err)
    2 runs in 2 program structure(s); results stream to .../out/runs.csv
    grid point {'defence': 'krum'}: krum needs n > 2f + 2, got n=4, f=1; take it out of the grid
    """
    from jaxrobust.run import sweep

    load_plugins(args.plugin)
    spec = sweep.Sweep.from_yaml(args.sweep_file, plugins=args.plugin)
    units = spec.units()
    print(
        f"{len(units)} runs in {len(sweep.groups(units))} program structure(s); "
        f"results stream to {os.path.join(args.out, 'runs.csv')}"
    )
    path = sweep.run_sweep(
        spec, args.out, max_batch=args.max_batch, on_batch=sweep.progress_printer(sys.stderr)
    )
    print(f"done: {path}")
    return 0


def command_report(args: argparse.Namespace) -> int:
    """``jaxrobust report DIR``: the worst-case table, heatmaps and curves of a sweep.

    Writes them with :func:`jaxrobust.report.make_report`, prints the
    Markdown table and the paths written.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed by :func:`parser` (``report``): ``sweep_dir``, ``out``,
        ``metric``, ``reduce``.

    Returns
    -------
    int
        0.

    Raises
    ------
    FileNotFoundError
        ``DIR`` holds no ``runs.csv``.
    ValueError
        As :func:`jaxrobust.report.make_report`.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     command_report(parser().parse_args(["report", tmp]))
    Traceback (most recent call last):
    ...
    FileNotFoundError: no runs.csv in '...'; run `jaxrobust sweep FILE --out ...` first
    """
    from jaxrobust import report

    paths = report.make_report(
        args.sweep_dir, args.out, metric=args.metric, reduce=args.reduce.replace("-", "_")
    )
    with open(paths[1]) as fh:
        print(fh.read())
    print("wrote:")
    for path in paths:
        print(f"  {path}")
    return 0


def command_list(args: argparse.Namespace) -> int:
    """``jaxrobust list``: every registry, each name with its one-line description.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed by :func:`parser` (``list``); its ``--plugin`` modules are
        imported by :func:`main`, so their names are listed too.

    Returns
    -------
    int
        0.

    Examples
    --------
    >>> command_list(parser().parse_args(["list"]))
    aggregator (robust aggregators (the worker axis goes away)):
      median ...
    lr_schedule (learning-rate schedules (factor of the base rate)):
      constant  A constant rate
      cosine    Cosine decay from the base rate to zero over the run
      step      x0.1 at half and again at three quarters of the run
    topology (communication graphs of decentralized algorithms (or a path to an adjacency matrix)):
      complete ...
    0
    """
    from jaxrobust.core import REGISTRIES

    for kind, reg in REGISTRIES.items():
        print(f"{kind} ({reg.description}):")
        entries = reg.entries()
        width = max((len(e.name) for e in entries), default=0)
        for entry in entries:
            print(f"  {entry.name:<{width}}  {entry.description}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The ``jaxrobust`` argument parser: one sub-command per ``command_*`` function.

    ``run`` and ``demo`` have a flag per config field (:func:`config_fields`);
    every sub-command sets ``func``, the function that runs it.

    Examples
    --------
    >>> args = parser().parse_args(["sweep", "grid.yaml", "--out", "results", "--max-batch", "8"])
    >>> args.sweep_file, args.out, args.max_batch, args.func.__name__
    ('grid.yaml', 'results', 8, 'command_sweep')
    >>> args = parser().parse_args(["run", "--num-honest", "5", "--attack", "alie"])
    >>> args.num_honest, args.attack, args.lr  # strings, checked by resolve_config
    ('5', 'alie', None)
    """
    top = argparse.ArgumentParser(
        prog="jaxrobust", description="Byzantine-robust distributed learning simulator in JAX."
    )
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one configuration (all seeds in one program)")
    run.add_argument("--config", help="YAML file of config fields; flags override it")
    run.add_argument("--out", help="write DIR/config.yaml and DIR/metrics.csv as the run goes")
    run.add_argument(
        "--show-partition", action="store_true", help="print the workers x classes table first"
    )
    _add_plugin_flag(run)
    _add_config_flags(run)
    run.set_defaults(func=command_run)
    demo = sub.add_parser("demo", help="accuracy table: defences x attacks on the offline default")
    demo.add_argument("--config", help="YAML file of config fields; flags override it")
    _add_plugin_flag(demo)
    _add_config_flags(demo)
    demo.set_defaults(func=command_demo)
    sw = sub.add_parser("sweep", help="run a grid of configurations, resumable")
    sw.add_argument(
        "sweep_file",
        help="YAML: config fields plus 'grid: {field: [values], axis: [{field: value, ...}]}'",
    )
    sw.add_argument("--out", required=True, help="directory for runs.csv (resumes if present)")
    sw.add_argument(
        "--max-batch", type=int, default=None, help="most runs per program (default: by memory)"
    )
    _add_plugin_flag(sw)
    sw.set_defaults(func=command_sweep)
    rep = sub.add_parser("report", help="worst-case accuracy table, heatmaps, curves of a sweep")
    rep.add_argument("sweep_dir", help="a sweep's --out directory (runs.csv, sweep.yaml)")
    rep.add_argument("--out", default=None, help="directory for the report (default: sweep_dir)")
    rep.add_argument("--metric", default="test_accuracy", help="column to report")
    rep.add_argument(
        "--reduce",
        choices=("mean-then-max", "max-then-mean"),
        default="mean-then-max",
        help="mean-then-max (default): the best step of the accuracy curve averaged over "
        "seeds, as the ARC authors (ByzFL's evaluate_results.py); max-then-mean: the mean "
        "over seeds of each run's best step (never lower)",
    )
    rep.set_defaults(func=command_report)
    lst = sub.add_parser("list", help="list every registry: rules, attacks, algorithms, data, ...")
    _add_plugin_flag(lst)
    lst.set_defaults(func=command_list)
    return top


def main(argv: typing.Sequence[str] | None = None) -> int:
    """The ``jaxrobust`` command: parse ``argv``, import the plugins, run the sub-command.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments; default: ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status: the sub-command's (0), or 2 after printing
        ``jaxrobust: error: ...`` to standard error for a ``ValueError``,
        ``FileNotFoundError``, ``TypeError`` or ``MemoryError``.

    Examples
    --------
    >>> main(["list"])
    aggregator (robust aggregators (the worker axis goes away)):
    ...
    0
    >>> import contextlib, sys
    >>> with contextlib.redirect_stderr(sys.stdout):  # to show the message here
    ...     main(["run", "--steps", "30", "--eval-every", "20"])
    jaxrobust: error: steps needs to be a multiple of eval_every, got steps=30, eval_every=20 ...
    2
    """
    args = parser().parse_args(argv)
    try:
        load_plugins(getattr(args, "plugin", None) or [])  # before any name is read
        return args.func(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError, TypeError, MemoryError) as err:
        print(f"jaxrobust: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
