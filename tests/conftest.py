import os
import sys

import jax
import numpy as np
import pytest
from hypothesis import settings

sys.path.insert(0, os.path.dirname(__file__))

# Property tests run the same cases on every run and machine: derandomized, no
# example database written or read, no per-example deadline (the first example of
# a shape compiles). HYPOTHESIS_PROFILE=explore draws fresh random cases locally.
settings.register_profile("ci", derandomize=True, database=None, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run the slow end-to-end tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("JAXROBUST_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: use --runslow or JAXROBUST_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


SHAPES = {"w": (3, 4), "b": (5,)}


def make_tree(rng: np.random.Generator, n: int, shapes=SHAPES, scale=1.0, dtype=np.float32):
    """A worker-stacked pytree of random normal leaves, with its flat float64 view."""
    tree = {k: (scale * rng.standard_normal((n, *s))).astype(dtype) for k, s in shapes.items()}
    return tree


def flat(tree) -> np.ndarray:
    leaves = jax.tree_util.tree_leaves(tree)
    n = leaves[0].shape[0]
    return np.concatenate([np.asarray(leaf, np.float64).reshape(n, -1) for leaf in leaves], 1)


def flat_one(tree) -> np.ndarray:
    return np.concatenate(
        [np.asarray(leaf, np.float64).reshape(-1) for leaf in jax.tree_util.tree_leaves(tree)]
    )


@pytest.fixture
def rng():
    return np.random.default_rng(0)
