"""The ``jaxrobust`` command: ``run``, ``demo`` and ``list``."""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
import typing

from jaxrobust.config import Config, coerce, field_types


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    for name, kind in field_types().items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, default=None, metavar=_metavar(kind), help=_help(name))


def _metavar(kind) -> str:
    text = str(kind).replace("typing.", "")
    return {"int": "INT", "float": "FLOAT", "str": "STR"}.get(getattr(kind, "__name__", ""), text)


def _help(name: str) -> str:
    return f"(default: {Config().to_dict()[name]})"


def resolve_config(args: argparse.Namespace) -> Config:
    """The YAML file's fields (if any), overridden by every flag given."""
    values = {}
    if args.config:
        values = Config.from_yaml(args.config).to_dict()
    for name in field_types():
        flag_value = getattr(args, name, None)
        if flag_value is not None:
            values[name] = coerce(name, flag_value)
    return Config.from_dict(values).validate()


def command_run(args: argparse.Namespace) -> int:
    from jaxrobust import simulator

    config = resolve_config(args)
    dataset = simulator.load_for(config)
    if args.show_partition:
        from jaxrobust.data import class_counts, format_class_table, partition

        parts = partition(
            dataset.y_train,
            config.num_honest,
            config.heterogeneity,
            alpha=config.alpha,
            gamma=config.gamma,
            shards_per_worker=config.shards_per_worker,
            seed=config.seed,
        )
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


def command_demo(args: argparse.Namespace) -> int:
    from jaxrobust import simulator

    base = resolve_config(args)
    if args.config is None and all(getattr(args, n, None) is None for n in field_types()):
        base = base.replace(heterogeneity="dirichlet", alpha=0.3, steps=200, eval_every=50)
    dataset = simulator.load_for(base)
    print(
        f"{base.dataset}: {base.num_honest} honest + {base.num_byzantine} Byzantine workers, "
        f"{base.heterogeneity} (alpha={base.alpha}), {base.model}, {base.steps} steps, "
        f"{base.seeds} seed(s); best test accuracy over the run"
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
            best = max(r["test_accuracy"] for r in result.rows)
            cells.append(f"{best:12.3f}")
        print(f"{label:20s}" + "".join(cells), flush=True)
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


def command_sweep(args: argparse.Namespace) -> int:
    from jaxrobust import sweep

    spec = sweep.Sweep.from_yaml(args.sweep_file)
    units = spec.units()
    print(
        f"{len(units)} runs in {len(sweep.groups(units))} program structure(s); "
        f"results stream to {os.path.join(args.out, 'runs.csv')}"
    )
    path = sweep.run_sweep(
        spec, args.out, max_batch=args.max_batch, on_batch=sweep.progress_printer()
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
    _add_config_flags(run)
    run.set_defaults(func=command_run)
    demo = sub.add_parser("demo", help="accuracy table: defences x attacks on the offline default")
    demo.add_argument("--config", help="YAML file of config fields; flags override it")
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
    sw.set_defaults(func=command_sweep)
    rep = sub.add_parser("report", help="worst-case accuracy table, heatmaps, curves of a sweep")
    rep.add_argument("sweep_dir", help="a sweep's --out directory (runs.csv, sweep.yaml)")
    rep.add_argument("--out", default=None, help="directory for the report (default: sweep_dir)")
    rep.add_argument("--metric", default="test_accuracy", help="column to report")
    rep.add_argument(
        "--reduce",
        choices=("max-then-mean", "mean-then-max"),
        default="max-then-mean",
        help="best over each run then mean over seeds, or best of the mean curve (ByzFL)",
    )
    rep.set_defaults(func=command_report)
    lst = sub.add_parser("list", help="list every registry: rules, attacks, algorithms, data, ...")
    lst.set_defaults(func=command_list)
    return top


def main(argv: typing.Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, TypeError, MemoryError) as err:
        print(f"jaxrobust: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
