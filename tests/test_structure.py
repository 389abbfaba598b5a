"""The package's structure: no import circle, one protocol every algorithm follows."""

from __future__ import annotations

import ast
import pathlib

import jax
import pytest

import jaxrobust
from jaxrobust import simulator
from jaxrobust.algorithms import Algorithm, Setup
from jaxrobust.config import Config
from jaxrobust.core import registry
from jaxrobust.data import load_dataset

ROOT = pathlib.Path(jaxrobust.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every ``jaxrobust`` module and the ``jaxrobust`` modules it imports, anywhere in it."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                # A module's own ancestor packages are imported before it anyway.
                if target.startswith("jaxrobust") and not name.startswith(target):
                    edges.add(target)
        graph[name] = edges
    return graph


def test_import_graph_is_read_whole():
    graph = import_graph()
    assert "jaxrobust.algorithms.dsgd" in graph
    assert "jaxrobust.algorithms.base" in graph["jaxrobust.algorithms.dsgd"]


def test_no_import_circle():
    graph = import_graph()
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append([*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _code_strings(path: pathlib.Path) -> set[str]:
    """The string constants of a module's code (docstrings and their examples left out)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            docstrings.add(id(body[0].value))
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    }


def test_the_run_never_names_an_algorithm():
    for module in ("simulator.py", "sweep.py", "distributed.py"):
        strings = _code_strings(ROOT / module)
        for name in registry("algorithm"):
            assert name not in strings, (module, name)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.mark.parametrize("name", ["dsgd", "byz_ef21_sgdm", "byz_ef21", "br_csgd", "marina_pp"])
def test_every_algorithm_follows_the_protocol(digits, name):
    config = Config(
        algorithm=name,
        num_honest=4,
        num_byzantine=1,
        defence=("median",),
        momentum=0.0 if name == "marina_pp" else 0.9,
        steps=2,
        eval_every=1,
    )
    problem = simulator.problem_for(config, digits)
    algorithm = registry("algorithm").entry(name).factory(Setup(config, digits, problem))
    assert isinstance(algorithm, Algorithm)
    indices, sizes = simulator.worker_tables(config, digits.y_train, [0])
    state = algorithm.init(jax.random.key(0), indices[0], sizes[0], simulator.hyper_of(config))
    state, metrics = jax.jit(algorithm.step)(state)
    fields = simulator.metric_columns([name])
    assert set(metrics._fields) <= set(fields), "every reported field has a column"
    evaluation = algorithm.evaluate(algorithm.params(state))
    assert {"test_accuracy", "test_loss"} <= set(evaluation)


def test_user_algorithm_runs_like_a_builtin(digits, tmp_path):
    """An algorithm registered from a user's module runs through simulate and the CLI."""
    import plugin_algorithm  # noqa: F401  (registers test_plain_sgd)

    from jaxrobust import cli

    config = Config(algorithm="test_plain_sgd", steps=4, eval_every=2, seeds=2)
    result = simulator.simulate(config, digits)
    assert [r["extra_metric"] for r in result.rows] == [1.0] * 4
    assert result.rows[-1]["test_accuracy"] > 0.2
    out = tmp_path / "run"
    code = cli.main(
        [
            "run",
            "--algorithm",
            "test_plain_sgd",
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[-1] == "extra_metric"


def test_worker_momentum_is_optax_ema():
    import jax.numpy as jnp
    import numpy as np
    import optax

    from jaxrobust.transforms import per_worker
    from jaxrobust.workers import momentum_update

    rng = np.random.default_rng(0)
    m = {"w": jnp.asarray(rng.normal(size=(5, 3, 2)), jnp.float32)}
    g = {"w": jnp.asarray(rng.normal(size=(5, 3, 2)), jnp.float32)}
    tx = per_worker(optax.ema(0.9, debias=False), n=5)
    state = tx.init({"w": jnp.zeros((3, 2))})
    state = state._replace(inner=state.inner._replace(ema=m))
    expected, _ = tx.update(g, state)
    got = momentum_update(jnp.float32(0.9), m, g)
    np.testing.assert_allclose(got["w"], expected["w"], rtol=1e-6, atol=1e-7)
    # client sampling: worker 3's vector lands in row 1; row 5 (a Byzantine slot) drops
    rows, workers = jnp.array([1, 5]), jnp.array([3, 0])
    two = {"w": g["w"][:2]}
    out = momentum_update(jnp.float32(0.9), m, two, rows, workers)
    np.testing.assert_allclose(out["w"][1], 0.9 * m["w"][3] + 0.1 * g["w"][0], rtol=1e-6)
    np.testing.assert_array_equal(np.delete(np.asarray(out["w"]), 1, 0), np.delete(m["w"], 1, 0))


@pytest.mark.parametrize(
    "old, new",
    [
        ("aggregators", "rules.aggregators"),
        ("preaggregators", "rules.preaggregators"),
        ("defence", "rules.defence"),
        ("transforms", "rules.base"),
        ("simulator", "run.simulator"),
        ("sweep", "run.sweep"),
        ("distributed", "run.distributed"),
    ],
)
def test_former_module_paths_are_aliases_of_the_moved_modules(old, new):
    """Old imports keep working and see the same module (private names, monkeypatching)."""
    import importlib

    former = importlib.import_module(f"jaxrobust.{old}")
    assert former is importlib.import_module(f"jaxrobust.{new}")
    assert getattr(jaxrobust, old) is former


def test_functional_namespace_is_the_family_modules_functions():
    from jaxrobust import functional
    from jaxrobust.rules import clipping, coordinatewise, distance, geometric, mixing, spectral

    families = (clipping, coordinatewise, distance, geometric, mixing, spectral)
    for name in functional.__all__:
        homes = [m for m in families if getattr(m, name, None) is getattr(functional, name)]
        assert len(homes) == 1, name
        assert getattr(functional, name).__module__ == homes[0].__name__, name
