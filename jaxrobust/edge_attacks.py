"""Per-edge attacks of decentralized learning: a Byzantine node may send each neighbour its own.

In a decentralized round every honest node ``i`` receives the models of its
neighbours. A Byzantine neighbour sees everything (an omniscient adversary)
and may send a different vector along each edge. An :class:`EdgeAttack`
builds, for one receiving node, the vectors of its ``k_b`` Byzantine
neighbours from an :class:`EdgeInput` (the node's own model, its honest
neighbours' models and the gossip weights of its edges); the decentralized
algorithms (:mod:`jaxrobust.algorithms.gossip`) vmap it over the honest
nodes.

Every server attack of :mod:`jaxrobust.attacks` that needs nothing but the
honest vectors (``sign_flip``, ``alie``, ``ipm``, ``foe``, ``gaussian``,
``inf``, ``nan``, ``none``, or a user's) becomes a per-edge attack computed
per neighbourhood (:func:`per_neighbourhood`). **Convention**: the attack
is applied to the receiver's view, the differences ``x_j - x_i`` of the
honest models it aggregates (its own, difference zero, and its honest
neighbours'), and the receiver's model is added back. For ALIE this is
exactly the decentralized ALIE of He, Karimireddy and Jaggi (2022) (mean
minus ``z`` standard deviations of the target's and its honest neighbours'
models); sign flipping sends ``x_i - mean_j (x_j - x_i)``, the
neighbourhood's pull on ``i`` reflected; every such attack is
translation-equivariant.

Two attacks exist only per edge and are registered in the ``"attack"``
registry: ``dissensus`` (He et al. 2022) and ``spectral`` (Gaucher et al.
2025). Configuring either with a server algorithm is refused by
:meth:`jaxrobust.config.Config.validate`.

References
----------
L. He, S. P. Karimireddy, M. Jaggi, "Byzantine-robust decentralized learning
via ClippedGossip", arXiv:2202.01545 (2022): the dissensus attack, and
ALIE, IPM and bit flipping adapted to graphs (their experiments).

R. Gaucher, A. Dieuleveut, H. Hendrikx, "Unified breakdown analysis for
Byzantine robust gossip", ICML 2025 (the spectral heterogeneity attack).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Annotated, NamedTuple

import jax
import jax.numpy as jnp
from annotated_types import Ge, Gt

from jaxrobust import attacks, kernels
from jaxrobust.attacks import Attack, AttackInput
from jaxrobust.core import registry
from jaxrobust.core.types import PyTree

__all__ = [
    "EdgeAttack",
    "EdgeInput",
    "dissensus",
    "edge_attack_of",
    "per_neighbourhood",
    "spectral",
]


class EdgeInput(NamedTuple):
    """What the Byzantine neighbours of one honest node ``i`` see.

    Attributes
    ----------
    own : pytree
        ``x_i``, the receiver's model (leaves ``(...)``).
    honest : pytree
        Its honest neighbours' models, leaves ``(k_h, ...)``.
    self_weight : float32 scalar
        ``W_ii``.
    honest_weights : float32 array ``(k_h,)``
        ``W_ij`` of the honest neighbours.
    byzantine_weights : float32 array ``(k_b,)``
        ``W_ij`` of the Byzantine neighbours.
    num_byzantine : int
        ``k_b`` (a Python int): how many vectors to return.
    key : PRNG key
        Randomness of the attack (its own key per receiving node).
    fiedler : float32 scalar
        The receiver's entry of the honest subgraph's Fiedler vector, scaled
        to a largest modulus of one.
    """

    own: PyTree
    honest: PyTree
    self_weight: jax.Array
    honest_weights: jax.Array
    byzantine_weights: jax.Array
    num_byzantine: int
    key: jax.Array
    fiedler: jax.Array


@dataclasses.dataclass(frozen=True)
class EdgeAttack(Attack):
    """An :class:`~jaxrobust.attacks.Attack` sent per edge of a graph.

    ``edge(inputs: EdgeInput) -> vectors`` returns the ``k_b`` vectors
    (leaves ``(k_b, ...)``) the Byzantine neighbours send to one node. Its
    server ``apply`` refuses to run (the configuration check refuses such
    a setting first).
    """

    edge: Callable[[EdgeInput], PyTree] | None = None


def _server_apply(name: str):
    def apply(inputs, state):
        raise ValueError(
            f"attack {name!r} is sent per edge of a graph; use it with a decentralized "
            "algorithm (gossip, robust_gossip, bridge, clipped_gossip, cs_plus_rg, gts_rg)"
        )

    return apply


def _num_honest(inp: EdgeInput) -> int:
    """``k_h``, the receiver's honest neighbours (static)."""
    return jax.tree_util.tree_leaves(inp.honest)[0].shape[0]


def _add_own(own, vectors):
    return jax.tree_util.tree_map(lambda v, o: v + o[None].astype(v.dtype), vectors, own)


def _neighbourhood_differences(inp: EdgeInput) -> PyTree:
    """``x_j - x_i`` of the receiver (zero, first) and its honest neighbours: ``(1+k_h, ...)``."""
    return jax.tree_util.tree_map(
        lambda o, h: jnp.concatenate([jnp.zeros_like(o)[None], h - o[None]]), inp.own, inp.honest
    )


def per_neighbourhood(attack: Attack) -> EdgeAttack:
    """A server attack computed per neighbourhood, on the receiver's differences.

    The attack sees the ``1 + k_h`` differences ``x_j - x_i`` of the
    honest models node ``i`` aggregates (its own first) and returns ``k_b``
    vectors ``v``; the Byzantine neighbours send ``x_i + v``. ``none`` is
    the exception: Byzantine neighbour ``j`` behaves like an honest
    neighbour and sends honest neighbour ``j mod k_h``'s model (the
    receiver's own if it has none), never a copy of the receiver's model.

    Parameters
    ----------
    attack : Attack
        A stateless attack that needs neither flipped labels, nor the
        defence, nor the shift-back target.

    Returns
    -------
    EdgeAttack

    Raises
    ------
    ValueError
        An attack that needs more than the honest vectors (label flipping,
        the aggregator-aware attacks, shift-back, or a stateful one such as
        ``mimic``), naming the ones that can.

    Examples
    --------
    Sign flipping reflects the neighbourhood's pull: node ``i`` at 1 with
    honest neighbours at 2 and 6 receives ``1 - (0 + 1 + 5) / 3 = -1``.

    >>> import jax, jax.numpy as jnp
    >>> edge = per_neighbourhood(attacks.make_attack("sign_flip"))
    >>> inp = EdgeInput(jnp.array([1.0]), jnp.array([[2.0], [6.0]]), jnp.float32(0.5),
    ...                 jnp.array([0.25, 0.25]), jnp.array([0.25]), 1, jax.random.key(0),
    ...                 jnp.float32(0.0))
    >>> edge.edge(inp).tolist()
    [[-1.0]]
    """
    if attack.needs_flipped_labels or attack.needs_defence or attack.needs_shift_back:
        raise ValueError(
            f"attack {attack.name!r} cannot be sent per edge (it needs flipped labels, the "
            "defence or the shift-back target); per-edge attacks: " + ", ".join(EDGE_READY)
        )
    if jax.tree_util.tree_leaves(attack.init(jnp.zeros(1))):
        raise ValueError(
            f"attack {attack.name!r} keeps a state and cannot be sent per edge; per-edge "
            "attacks: " + ", ".join(EDGE_READY)
        )

    if attack.name == "none":  # behave like an honest neighbour, not like the receiver

        def honest_copies(inp: EdgeInput) -> PyTree:
            k_h = _num_honest(inp)
            if k_h == 0:
                return attacks.repeat(inp.own, inp.num_byzantine)
            rows = jnp.arange(inp.num_byzantine) % k_h
            return jax.tree_util.tree_map(lambda h: h[rows], inp.honest)

        return EdgeAttack(attack.name, attack.apply, edge=honest_copies)

    def edge(inp: EdgeInput) -> PyTree:
        diffs = _neighbourhood_differences(inp)
        vectors, _ = attack.apply(AttackInput(diffs, inp.num_byzantine, inp.key), ())
        return _add_own(inp.own, vectors)

    return EdgeAttack(attack.name, attack.apply, edge=edge)


# Server attacks that need nothing but the honest vectors (the built-ins).
EDGE_READY = ("none", "sign_flip", "ipm", "foe", "alie", "gaussian", "inf", "nan")


def dissensus(epsilon: Annotated[float, Gt(0)] = 1.0) -> EdgeAttack:
    """Dissensus: push each honest node away from its honest neighbours.

    The Byzantine neighbours of node ``i`` all send
    ``x_i - epsilon * sum_{j honest} W_ij (x_j - x_i) / sum_{j Byzantine} W_ij``,
    so that under plain gossip averaging the node's update
    ``sum_j W_ij (x_j - x_i)`` becomes ``(1 - epsilon)`` times its honest
    part: ``epsilon = 1`` cancels it (no consensus), ``epsilon > 1``
    reverses it.

    Parameters
    ----------
    epsilon : float
        The strength, ``> 0``.

    Returns
    -------
    EdgeAttack

    Raises
    ------
    ValueError
        ``epsilon <= 0``.

    References
    ----------
    L. He, S. P. Karimireddy, M. Jaggi, "Byzantine-robust decentralized
    learning via ClippedGossip", arXiv:2202.01545 (2022) (the dissensus
    attack).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> inp = EdgeInput(jnp.array([0.0]), jnp.array([[1.0], [3.0]]), jnp.float32(0.4),
    ...                 jnp.array([0.2, 0.2]), jnp.array([0.2]), 1, jax.random.key(0),
    ...                 jnp.float32(0.0))
    >>> dissensus(1.0).edge(inp).tolist()  # 0 - (0.2 * 1 + 0.2 * 3) / 0.2
    [[-4.0]]
    """
    if not epsilon > 0:
        raise ValueError(f"dissensus needs epsilon > 0, got epsilon={epsilon}")

    def edge(inp: EdgeInput) -> PyTree:
        weight = jnp.sum(inp.byzantine_weights)
        if _num_honest(inp) == 0:  # no honest neighbour: nothing to cancel
            return attacks.repeat(inp.own, inp.num_byzantine)
        diffs = jax.tree_util.tree_map(lambda h, o: h - o[None], inp.honest, inp.own)
        pull = kernels.weighted_sum(inp.honest_weights, diffs)
        vector = jax.tree_util.tree_map(
            lambda o, p: o - epsilon * p / jnp.where(weight > 0, weight, 1.0), inp.own, pull
        )
        return attacks.repeat(vector, inp.num_byzantine)

    return EdgeAttack("dissensus", _server_apply("dissensus"), edge=edge)


def spectral(epsilon: Annotated[float, Gt(0)] = 1.0, seed: Annotated[int, Ge(0)] = 0) -> EdgeAttack:
    """Spectral heterogeneity: pull the honest nodes apart along the honest graph's Fiedler vector.

    The Byzantine neighbours of node ``i`` all send
    ``x_i + epsilon * u_i * r_i * e``: ``u`` is the Fiedler vector of the
    honest subgraph's Laplacian (scaled to a largest modulus of one), the
    slowest mode of honest gossip; ``r_i`` the largest distance from
    ``x_i`` to an honest neighbour's model, so the vectors stay within the
    honest spread that clipping and trimming let through; ``e`` one fixed
    unit direction drawn from ``seed``. Nodes on the two sides of the
    graph's sparsest cut are pushed in opposite directions, which gossip
    undoes most slowly.

    Parameters
    ----------
    epsilon : float
        The strength, ``> 0``.
    seed : int
        Seed of the direction ``e`` (``jax.random.key(seed)``).

    Returns
    -------
    EdgeAttack

    Raises
    ------
    ValueError
        ``epsilon <= 0``.

    Notes
    -----
    **Convention**: Gaucher et al. (2025) define the attack through the
    honest Laplacian's spectrum; the scale ``r_i`` and the single direction
    ``e`` are this library's reading for vector-valued models.

    References
    ----------
    R. Gaucher, A. Dieuleveut, H. Hendrikx, "Unified breakdown analysis for
    Byzantine robust gossip", ICML 2025 (the spectral heterogeneity
    attack).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> inp = EdgeInput(jnp.zeros(2), jnp.array([[3.0, 4.0]]), jnp.float32(0.5),
    ...                 jnp.array([0.25]), jnp.array([0.25]), 1, jax.random.key(0),
    ...                 jnp.float32(-1.0))
    >>> sent = spectral(2.0).edge(inp)
    >>> round(float(jnp.linalg.norm(sent)), 4)  # |epsilon * u_i * r_i| = 2 * 1 * 5
    10.0
    """
    if not epsilon > 0:
        raise ValueError(f"spectral needs epsilon > 0, got epsilon={epsilon}")

    def edge(inp: EdgeInput) -> PyTree:
        leaves, treedef = jax.tree_util.tree_flatten(inp.own)
        keys = jax.random.split(jax.random.key(seed), len(leaves))
        raw = [
            jax.random.normal(k, leaf.shape, jnp.float32)
            for k, leaf in zip(keys, leaves, strict=True)
        ]
        norm = jnp.sqrt(sum(jnp.sum(r * r) for r in raw))
        direction = jax.tree_util.tree_unflatten(treedef, [r / norm for r in raw])
        if _num_honest(inp) == 0:  # no honest spread to hide in
            return attacks.repeat(inp.own, inp.num_byzantine)
        radius = jnp.max(
            kernels.worker_norms(
                jax.tree_util.tree_map(lambda h, o: h - o[None], inp.honest, inp.own)
            )
        )
        scale = epsilon * inp.fiedler * radius
        vector = jax.tree_util.tree_map(
            lambda o, e: o + (scale * e).astype(o.dtype), inp.own, direction
        )
        return attacks.repeat(vector, inp.num_byzantine)

    return EdgeAttack("spectral", _server_apply("spectral"), edge=edge)


ATTACKS = registry("attack")
for _name, _factory in (("dissensus", dissensus), ("spectral", spectral)):
    ATTACKS.register(_name, _factory)
    _factory.per_edge = True


def edge_attack_of(config) -> EdgeAttack:
    """The per-edge attack of a configuration (``attack`` and ``attack_options``).

    Per-edge attacks are returned as they are; any other attack is computed
    per neighbourhood (:func:`per_neighbourhood`).

    Raises
    ------
    ValueError
        As :func:`jaxrobust.attacks.attack_of` and :func:`per_neighbourhood`.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> edge_attack_of(SimpleNamespace(attack="alie", attack_options={"z": 1.0})).name
    'alie'
    """
    attack = attacks.attack_of(config)
    if isinstance(attack, EdgeAttack):
        return attack
    return per_neighbourhood(attack)
