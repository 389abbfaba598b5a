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
    """The config fields that have a flag, in declaration order."""
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
    """Every registry, each name with its one-line description."""
    from jaxrobust.core import REGISTRIES

    for kind, reg in REGISTRIES.items():
        print(f"{kind} ({reg.description}):")
        entries = reg.entries()
        width = max((len(e.name) for e in entries), default=0)
        for entry in entries:
            print(f"  {entry.name:<{width}}  {entry.description}")
    return 0


def parser() -> argparse.ArgumentParser:
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
    args = parser().parse_args(argv)
    try:
        load_plugins(getattr(args, "plugin", None) or [])  # before any name is read
        return args.func(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError, TypeError, MemoryError) as err:
        print(f"jaxrobust: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
