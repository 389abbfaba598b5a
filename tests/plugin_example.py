"""A user's plugin: one robust aggregator and one attack, registered by name.

Named in a config (``plugins: [plugin_example]``), a sweep file, or on the
command line (``--plugin tests/plugin_example.py``), after which
``defence: [nnm, median_window_mean]`` and ``attack: scaled_flip`` work like
built-in names.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import jaxrobust as jr
from jaxrobust.attacks import Attack


@jr.register("aggregator", "median_window_mean")
def median_window_mean(
    f: int, *, n: int | None = None, keep: int | None = None
) -> optax.GradientTransformation:
    """Mean of the ``keep`` vectors closest to the coordinate-wise median (default ``n - f``).

    Needs ``n > 2f``, so that the median is that of honest vectors' range.
    """
    if n is not None and not n > 2 * f:
        raise ValueError(f"median_window_mean needs n > 2f, got n={n}, f={f}")

    def update(updates, state, params=None):
        del params
        leaves = jax.tree_util.tree_leaves(updates)
        workers = leaves[0].shape[0]
        flat = jnp.concatenate([leaf.reshape(workers, -1) for leaf in leaves], axis=1)
        median = jnp.median(flat, axis=0)
        distance = jnp.sum((flat - median) ** 2, axis=1)
        chosen = jnp.argsort(distance)[: workers - f if keep is None else keep]
        mean = jax.tree_util.tree_map(lambda leaf: jnp.mean(leaf[chosen], axis=0), updates)
        return mean, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


@jr.register("attack", "scaled_flip")
def scaled_flip(scale: float = 2.0) -> Attack:
    """Every Byzantine worker sends ``-scale`` times the mean of the honest vectors."""

    def apply(inputs, state):
        def one(leaf):
            bad = (-scale * jnp.mean(leaf, axis=0)).astype(leaf.dtype)
            return jnp.broadcast_to(bad, (inputs.num_byzantine, *bad.shape))

        return jax.tree_util.tree_map(one, inputs.honest), state

    return Attack("scaled_flip", apply)
