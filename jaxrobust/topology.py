"""Communication graphs of decentralized learning: topologies, gossip weights, neighbour tables.

A topology is a registered factory ``factory(n, **options) -> adjacency``
(a symmetric boolean ``(n, n)`` numpy array without self-loops) in the
``"topology"`` registry, so ``topology: erdos_renyi`` with
``topology_options: {p: 0.3}`` works in configs, sweeps and the CLI, and a
user adds a graph with ``jaxrobust.register("topology", name)``. A path to
a file holding an adjacency matrix (``.npy``, or text readable by
``numpy.loadtxt``) works in place of a name.

:func:`build_graph` places the Byzantine nodes (at random, or on the nodes
of highest degree), relabels the nodes so that the honest ones come first
(``0 .. h-1``, matching the honest workers' data) and computes the gossip
matrix ``W`` (Metropolis-Hastings or uniform weights), its spectral gap and
the fixed-degree neighbour tables the jitted step gathers from: the honest
nodes are grouped by their numbers of honest and Byzantine neighbours, and
each group holds an index table without padding, so a round costs
``O(edges x d)`` and never forms an ``n x n x d`` tensor.

References
----------
L. Xiao, S. Boyd, "Fast linear iterations for distributed averaging",
Systems & Control Letters 53 (2004) (Metropolis-Hastings weights, spectral
gap). L. He, S. P. Karimireddy, M. Jaggi, "Byzantine-robust decentralized
learning via ClippedGossip", arXiv:2202.01545 (2022).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
from annotated_types import Ge, Gt, Le

from jaxrobust.core import registry

__all__ = [
    "Graph",
    "NeighbourGroup",
    "build_graph",
    "complete",
    "erdos_renyi",
    "exponential",
    "gossip_matrix",
    "graph_of",
    "is_connected",
    "load_adjacency",
    "ring",
    "spectral_gap",
    "torus",
]

PLACEMENTS = ("random", "highest_degree")
WEIGHTS = ("metropolis", "uniform")

TOPOLOGIES = registry("topology")


# --------------------------------------------------------------------------
# Topologies
# --------------------------------------------------------------------------


def _check_n(name: str, n: int, least: int = 1) -> None:
    if not isinstance(n, int | np.integer) or n < least:
        raise ValueError(f"topology {name!r} needs n >= {least} nodes, got n={n}")


def _symmetric(edges_from: np.ndarray, edges_to: np.ndarray, n: int) -> np.ndarray:
    adjacency = np.zeros((n, n), dtype=bool)
    adjacency[edges_from, edges_to] = True
    adjacency |= adjacency.T
    np.fill_diagonal(adjacency, False)
    return adjacency


@TOPOLOGIES.register("complete")
def complete(n: int) -> np.ndarray:
    """Complete graph: every node is a neighbour of every other.

    Parameters
    ----------
    n : int
        Number of nodes (honest and Byzantine), ``n >= 1``.

    Returns
    -------
    numpy.ndarray
        ``bool`` ``(n, n)``, symmetric, no self-loops.

    Examples
    --------
    >>> complete(3).astype(int).tolist()
    [[0, 1, 1], [1, 0, 1], [1, 1, 0]]
    """
    _check_n("complete", n)
    return ~np.eye(n, dtype=bool)


@TOPOLOGIES.register("ring")
def ring(n: int) -> np.ndarray:
    """Ring (cycle): node ``i`` is linked to ``i - 1`` and ``i + 1`` modulo ``n``.

    Parameters
    ----------
    n : int
        Number of nodes, ``n >= 2`` (``n = 2`` is one edge).

    Returns
    -------
    numpy.ndarray
        ``bool`` ``(n, n)``.

    Examples
    --------
    >>> ring(4).sum(axis=1).tolist()
    [2, 2, 2, 2]
    """
    _check_n("ring", n, 2)
    i = np.arange(n)
    return _symmetric(i, (i + 1) % n, n)


@TOPOLOGIES.register("torus")
def torus(n: int, *, rows: Annotated[int, Ge(1)] | None = None) -> np.ndarray:
    """Two-dimensional torus: a ``rows x (n / rows)`` grid whose rows and columns wrap around.

    Parameters
    ----------
    n : int
        Number of nodes.
    rows : int or None
        Rows of the grid, a divisor of ``n`` (default: the largest divisor
        of ``n`` not above ``sqrt(n)``; ``rows = 1`` is a ring).

    Returns
    -------
    numpy.ndarray
        ``bool`` ``(n, n)``; every node has degree 4 when both sides are at
        least 3.

    Raises
    ------
    ValueError
        ``rows`` not a divisor of ``n``.

    Examples
    --------
    >>> torus(9).sum(axis=1).tolist()
    [4, 4, 4, 4, 4, 4, 4, 4, 4]
    >>> torus(10, rows=3)
    Traceback (most recent call last):
    ...
    ValueError: torus needs rows to divide n, got rows=3, n=10; divisors of 10: 1, 2, 5, 10
    """
    _check_n("torus", n, 2)
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    if rows is None:
        rows = max(d for d in divisors if d * d <= n)
    if rows not in divisors:
        raise ValueError(
            f"torus needs rows to divide n, got rows={rows}, n={n}; divisors of {n}: "
            + ", ".join(map(str, divisors))
        )
    cols = n // rows
    r, c = np.divmod(np.arange(n), cols)
    right = r * cols + (c + 1) % cols
    down = ((r + 1) % rows) * cols + c
    i = np.arange(n)
    return _symmetric(np.concatenate([i, i]), np.concatenate([right, down]), n)


@TOPOLOGIES.register("erdos_renyi")
def erdos_renyi(
    n: int,
    *,
    p: Annotated[float, Gt(0), Le(1)] = 0.3,
    seed: Annotated[int, Ge(0)] = 0,
    max_tries: Annotated[int, Ge(1)] = 1000,
) -> np.ndarray:
    """Erdos-Renyi graph ``G(n, p)``, resampled until it is connected.

    Parameters
    ----------
    n : int
        Number of nodes.
    p : float
        Probability of each edge, ``0 < p <= 1``.
    seed : int
        Seed of the graph (``numpy.random.default_rng``); the graph is shared
        by all seeds of a run.
    max_tries : int
        Samples drawn before giving up.

    Returns
    -------
    numpy.ndarray
        ``bool`` ``(n, n)``, connected.

    Raises
    ------
    ValueError
        ``p`` outside ``(0, 1]``, or no connected sample in ``max_tries``.

    Examples
    --------
    >>> a = erdos_renyi(20, p=0.3, seed=1)
    >>> bool(is_connected(a)), bool((a == a.T).all())
    (True, True)
    """
    _check_n("erdos_renyi", n)
    if not 0.0 < p <= 1.0:
        raise ValueError(f"erdos_renyi needs 0 < p <= 1, got p={p}")
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        upper = np.triu(rng.random((n, n)) < p, 1)
        adjacency = upper | upper.T
        if is_connected(adjacency):
            return adjacency
    raise ValueError(
        f"erdos_renyi drew no connected graph in {max_tries} tries with n={n}, p={p}; "
        f"raise p (connectivity needs p above about log(n)/n = {np.log(max(n, 2)) / n:.3f})"
    )


@TOPOLOGIES.register("exponential")
def exponential(n: int) -> np.ndarray:
    """Exponential graph: node ``i`` is linked to ``i + 2^k`` modulo ``n`` for every ``2^k < n``.

    Undirected version of the exponential graph of Assran et al. (2019)
    and Ying et al. (2021): degree about ``2 log2(n)``.

    Parameters
    ----------
    n : int
        Number of nodes.

    Returns
    -------
    numpy.ndarray
        ``bool`` ``(n, n)``.

    References
    ----------
    B. Ying, K. Yuan, Y. Chen, H. Hu, P. Pan, W. Yin, "Exponential graph is
    provably efficient for decentralized deep training", NeurIPS 2021.

    Examples
    --------
    >>> np.flatnonzero(exponential(8)[0]).tolist()
    [1, 2, 4, 6, 7]
    """
    _check_n("exponential", n, 2)
    i = np.arange(n)
    hops = [2**k for k in range(int(np.floor(np.log2(n - 1))) + 1)] if n > 1 else []
    src = np.concatenate([i for _ in hops])
    dst = np.concatenate([(i + h) % n for h in hops])
    return _symmetric(src, dst, n)


@TOPOLOGIES.register("adjacency")
def adjacency(n: int, *, matrix: list[list[float]] | None = None) -> np.ndarray:
    """A graph given in memory: ``topology_options: {matrix: [[0, 1, ...], ...]}``.

    For a graph built in Python (networkx, a data set's own network) without
    writing a file: ``Config(topology="adjacency", topology_options={"matrix":
    a.tolist()})`` keeps the configuration serialisable (YAML, run ids).

    Parameters
    ----------
    n : int
        Number of nodes.
    matrix : nested list
        ``n x n`` finite numbers; nonzero entries are edges, the diagonal is
        ignored. A numpy array works too, but only a list (``a.tolist()``)
        keeps the configuration writable to YAML.

    Returns
    -------
    numpy.ndarray
        ``bool`` ``(n, n)``.

    Raises
    ------
    ValueError
        No ``matrix``, or one that is not square, not of ``n`` nodes, not
        symmetric or not connected.

    Examples
    --------
    >>> adjacency(3, matrix=[[0, 1, 0], [1, 0, 1], [0, 1, 0]]).sum(axis=1).tolist()
    [1, 2, 1]
    """
    if matrix is None:
        raise ValueError(
            "topology 'adjacency' needs topology_options: {matrix: [[0, 1, ...], ...]}"
        )
    try:
        array = np.asarray(matrix, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"topology_options matrix must be an n x n matrix of numbers: {err}"
        ) from None
    if not np.isfinite(array).all():
        raise ValueError("topology_options matrix must hold finite numbers (nonzero: an edge)")
    return _checked_adjacency(array, n, "topology_options matrix")


def load_adjacency(path: str, n: int | None = None) -> np.ndarray:
    """An adjacency matrix from a file: ``.npy``, or text readable by ``numpy.loadtxt``.

    Nonzero entries are edges; the diagonal is ignored.

    Parameters
    ----------
    path : str
        The file.
    n : int or None
        The expected number of nodes (checked when given).

    Returns
    -------
    numpy.ndarray
        ``bool`` ``(n, n)``.

    Raises
    ------
    ValueError
        A matrix that is not square, not symmetric, not of size ``n`` or not
        connected.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "path.txt")
    >>> np.savetxt(path, [[0, 1, 0], [1, 0, 1], [0, 1, 0]])
    >>> load_adjacency(path, 3).sum(axis=1).tolist()
    [1, 2, 1]
    """
    matrix = np.load(path) if path.endswith(".npy") else np.loadtxt(path, delimiter=None)
    return _checked_adjacency(np.asarray(matrix), n, f"adjacency matrix {path}")


def _checked_adjacency(matrix: np.ndarray, n: int | None, what: str) -> np.ndarray:
    """``matrix != 0`` without self-loops, once square, of ``n`` nodes, symmetric, connected."""
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{what} must be square, got shape {matrix.shape}")
    if n is not None and matrix.shape[0] != n:
        raise ValueError(
            f"{what} has {matrix.shape[0]} nodes, but the run has "
            f"n = num_honest + num_byzantine = {n}"
        )
    adjacency = matrix != 0
    np.fill_diagonal(adjacency, False)
    if not (adjacency == adjacency.T).all():
        raise ValueError(f"{what} must be symmetric (an undirected graph)")
    if not is_connected(adjacency):
        raise ValueError(f"{what} is not connected")
    return adjacency


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------


def is_connected(adjacency: np.ndarray) -> bool:
    """Whether an undirected graph is connected (breadth-first search from node 0).

    Examples
    --------
    >>> is_connected(ring(5)), is_connected(np.zeros((2, 2), bool))
    (True, False)
    """
    n = adjacency.shape[0]
    if n == 0:
        return False
    seen = np.zeros(n, dtype=bool)
    seen[0] = True
    frontier = np.array([0])
    while frontier.size:
        reached = adjacency[frontier].any(axis=0) & ~seen
        seen |= reached
        frontier = np.flatnonzero(reached)
    return bool(seen.all())


def gossip_matrix(adjacency: np.ndarray, weights: str = "metropolis") -> np.ndarray:
    """The gossip (mixing) matrix ``W`` of a graph, ``float64`` ``(n, n)``.

    Parameters
    ----------
    adjacency : numpy.ndarray
        ``bool`` ``(n, n)``, symmetric, no self-loops.
    weights : str
        ``"metropolis"`` (Metropolis-Hastings: ``W_ij = 1 / (1 + max(d_i, d_j))``
        on edges, the rest of each row on the diagonal: symmetric and doubly
        stochastic) or ``"uniform"`` (``W_ij = 1 / (1 + d_i)`` for ``j`` a
        neighbour or ``i`` itself: row stochastic; doubly stochastic on
        regular graphs).

    Returns
    -------
    numpy.ndarray
        ``W``, rows summing to one.

    Raises
    ------
    ValueError
        An unknown ``weights`` (the message lists the choices).

    References
    ----------
    L. Xiao, S. Boyd, "Fast linear iterations for distributed averaging",
    Systems & Control Letters 53 (2004) (the Metropolis-Hastings weights).

    Examples
    --------
    >>> gossip_matrix(ring(3)).round(4).tolist()[0]
    [0.3333, 0.3333, 0.3333]
    >>> gossip_matrix(np.array([[0, 1], [1, 0]], bool), "uniform").tolist()
    [[0.5, 0.5], [0.5, 0.5]]
    """
    if weights not in WEIGHTS:
        raise ValueError(f"unknown gossip weights {weights!r}; choose one of: {', '.join(WEIGHTS)}")
    adjacency = np.asarray(adjacency, dtype=bool)
    degree = adjacency.sum(axis=1).astype(np.float64)
    if weights == "metropolis":
        w = np.where(adjacency, 1.0 / (1.0 + np.maximum(degree[:, None], degree[None, :])), 0.0)
    else:
        w = np.where(adjacency, 1.0 / (1.0 + degree[:, None]), 0.0)
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    return w


def spectral_gap(w: np.ndarray) -> float:
    """``1 - |lambda_2(W)|``: one minus the second largest eigenvalue modulus of ``W``.

    The rate at which plain gossip averaging contracts the distance to the
    average (per round, in squared norm about ``(1 - gap)^2``). Zero for a
    disconnected graph.

    Examples
    --------
    >>> round(spectral_gap(gossip_matrix(complete(4))), 6)
    1.0
    >>> round(spectral_gap(gossip_matrix(ring(4))), 6)
    0.666667
    """
    w = np.asarray(w, dtype=np.float64)
    if w.shape[0] < 2:
        return 1.0
    symmetric = np.allclose(w, w.T)
    values = np.linalg.eigvalsh(w) if symmetric else np.linalg.eigvals(w)
    moduli = np.sort(np.abs(values))[::-1]
    return float(max(0.0, 1.0 - moduli[1]))


def _fiedler(adjacency: np.ndarray) -> tuple[float, np.ndarray]:
    """Algebraic connectivity and Fiedler vector (unit norm) of a graph's Laplacian."""
    n = adjacency.shape[0]
    if n < 2:
        return 0.0, np.zeros(n)
    laplacian = np.diag(adjacency.sum(axis=1)) - adjacency.astype(np.float64)
    values, vectors = np.linalg.eigh(laplacian)
    vector = vectors[:, 1]
    # a deterministic sign: the largest entry in modulus is positive
    vector = vector * (1.0 if vector[np.argmax(np.abs(vector))] >= 0 else -1.0)
    return float(values[1]), vector


# --------------------------------------------------------------------------
# A run's graph
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NeighbourGroup:
    """Honest nodes with the same numbers of honest and Byzantine neighbours.

    Attributes
    ----------
    nodes : int32 array ``(g,)``
        The group's honest nodes (``0 .. h-1``).
    honest : int32 array ``(g, k_h)``
        Each node's honest neighbours, in increasing order.
    byzantine : int32 array ``(g, k_b)``
        Each node's Byzantine neighbours (``h .. n-1``), in increasing order.
    self_weight : float32 array ``(g,)``
        ``W_ii``.
    honest_weights, byzantine_weights : float32 arrays ``(g, k_h)``, ``(g, k_b)``
        ``W_ij`` of the edges, in table order.
    fiedler : float32 array ``(g,)``
        The nodes' entries of the honest subgraph's Fiedler vector, scaled
        to a largest modulus of one (the spectral attack's profile).
    """

    nodes: np.ndarray
    honest: np.ndarray
    byzantine: np.ndarray
    self_weight: np.ndarray
    honest_weights: np.ndarray
    byzantine_weights: np.ndarray
    fiedler: np.ndarray

    @property
    def degree(self) -> int:
        """Neighbours of every node of the group (honest and Byzantine)."""
        return self.honest.shape[1] + self.byzantine.shape[1]

    @property
    def num_byzantine(self) -> int:
        """Byzantine neighbours of every node of the group."""
        return self.byzantine.shape[1]


@dataclasses.dataclass(frozen=True)
class Graph:
    """A run's communication graph, honest nodes first.

    Attributes
    ----------
    adjacency : bool array ``(n, n)``
        Relabelled: nodes ``0 .. h-1`` honest, ``h .. n-1`` Byzantine.
    weights : float64 array ``(n, n)``
        The gossip matrix ``W`` (:func:`gossip_matrix`).
    num_honest : int
        ``h``.
    labels : int array ``(n,)``
        The node of the topology's own numbering behind each relabelled node.
    groups : tuple of NeighbourGroup
        The honest nodes grouped by their numbers of honest and Byzantine
        neighbours (every honest node in exactly one group).
    name : str
        The topology's name (or file path).
    weight_rule : str
        ``"metropolis"`` or ``"uniform"``.
    """

    adjacency: np.ndarray
    weights: np.ndarray
    num_honest: int
    labels: np.ndarray
    groups: tuple[NeighbourGroup, ...]
    name: str = ""
    weight_rule: str = "metropolis"

    @property
    def num_nodes(self) -> int:
        """``n``, honest and Byzantine nodes."""
        return self.adjacency.shape[0]

    @property
    def degrees(self) -> np.ndarray:
        """Every node's degree, ``(n,)``."""
        return self.adjacency.sum(axis=1)

    @property
    def byzantine_neighbours(self) -> np.ndarray:
        """Every honest node's number of Byzantine neighbours, ``(h,)``."""
        return self.adjacency[: self.num_honest, self.num_honest :].sum(axis=1)

    @property
    def byzantine_weight(self) -> np.ndarray:
        """Every honest node's gossip weight on Byzantine neighbours, ``(h,)``.

        ``delta_i = sum_{j Byzantine} W_ij``, the quantity whose maximum
        ``delta_max`` bounds ClippedGossip's error (He, Karimireddy, Jaggi
        2022): robust gossip needs it small against the spectral gap.

        Returns
        -------
        numpy.ndarray
            float64, ``(h,)``, each in ``[0, 1)``.

        Examples
        --------
        >>> sorted(build_graph(ring(6), num_byzantine=1).byzantine_weight.round(4).tolist())
        [0.0, 0.0, 0.0, 0.3333, 0.3333]
        """
        h = self.num_honest
        return self.weights[:h, h:].sum(axis=1)

    @property
    def spectral_gap(self) -> float:
        """:func:`spectral_gap` of ``W``."""
        return spectral_gap(self.weights)

    @property
    def honest_connectivity(self) -> float:
        """Algebraic connectivity of the honest subgraph's Laplacian (0 if disconnected)."""
        h = self.num_honest
        return _fiedler(self.adjacency[:h, :h])[0]

    def describe(self) -> str:
        """One line: nodes, edges, degrees, Byzantine neighbours and weight, spectral gap.

        Examples
        --------
        >>> for part in build_graph(ring(6), num_byzantine=1, name="ring").describe().split(", "):
        ...     print(part)
        ring: 6 nodes (5 honest)
        6 edges
        degree 2..2
        Byzantine neighbours per honest node <= 1
        Byzantine weight delta_max 0.3333
        spectral gap of W (metropolis) 0.3333
        honest algebraic connectivity 0.3820
        """
        d = self.degrees
        b = self.byzantine_neighbours
        return (
            f"{self.name or 'graph'}: {self.num_nodes} nodes ({self.num_honest} honest), "
            f"{int(self.adjacency.sum()) // 2} edges, degree {d.min()}..{d.max()}, "
            f"Byzantine neighbours per honest node <= {b.max() if b.size else 0}, "
            f"Byzantine weight delta_max {self.byzantine_weight.max(initial=0.0):.4f}, "
            f"spectral gap of W ({self.weight_rule}) {self.spectral_gap:.4f}, "
            f"honest algebraic connectivity {self.honest_connectivity:.4f}"
        )


def _placement(adjacency: np.ndarray, b: int, placement: str, seed: int) -> np.ndarray:
    n = adjacency.shape[0]
    if placement not in PLACEMENTS:
        raise ValueError(
            f"unknown byzantine_placement {placement!r}; choose one of: {', '.join(PLACEMENTS)}"
        )
    if placement == "random":
        return np.sort(np.random.default_rng(seed).permutation(n)[:b])
    degree = adjacency.sum(axis=1)
    return np.sort(np.lexsort((np.arange(n), -degree))[:b])  # highest degree, ties: lowest index


def build_graph(
    adjacency: np.ndarray,
    num_byzantine: int = 0,
    *,
    placement: str = "random",
    weights: str = "metropolis",
    seed: int = 0,
    name: str = "",
) -> Graph:
    """Place the Byzantine nodes, relabel honest first, and build the gossip tables.

    Parameters
    ----------
    adjacency : numpy.ndarray
        ``bool`` ``(n, n)``, symmetric, no self-loops, connected.
    num_byzantine : int
        ``b``, Byzantine nodes among the ``n``.
    placement : str
        ``"random"`` (a uniformly random set, from ``seed``) or
        ``"highest_degree"`` (the ``b`` nodes of highest degree, ties to the
        lowest index).
    weights : str
        The gossip weights, ``"metropolis"`` or ``"uniform"`` (:func:`gossip_matrix`).
    seed : int
        Seed of the random placement.
    name : str
        The topology's name, for :meth:`Graph.describe`.

    Returns
    -------
    Graph

    Raises
    ------
    ValueError
        ``b`` not in ``[0, n)``, a disconnected graph, an asymmetric matrix or
        an unknown placement or weight rule (the message lists the choices).

    Examples
    --------
    >>> g = build_graph(complete(4), num_byzantine=1, placement="highest_degree")
    >>> g.labels.tolist(), [grp.num_byzantine for grp in g.groups]
    ([1, 2, 3, 0], [1])
    >>> g.groups[0].honest.tolist(), g.groups[0].byzantine.tolist()
    ([[1, 2], [0, 2], [0, 1]], [[3], [3], [3]])
    """
    adjacency = np.asarray(adjacency, dtype=bool).copy()
    np.fill_diagonal(adjacency, False)
    n = adjacency.shape[0]
    if adjacency.ndim != 2 or adjacency.shape != (n, n) or not (adjacency == adjacency.T).all():
        raise ValueError("a topology must be a symmetric (n, n) adjacency matrix")
    if not 0 <= num_byzantine < n:
        raise ValueError(f"num_byzantine must be in [0, n), got {num_byzantine} with n={n}")
    if not is_connected(adjacency):
        raise ValueError(f"topology {name or 'graph'!r} is not connected")
    byzantine = _placement(adjacency, num_byzantine, placement, seed)
    honest = np.setdiff1d(np.arange(n), byzantine)
    labels = np.concatenate([honest, byzantine])
    adjacency = adjacency[np.ix_(labels, labels)]
    w = gossip_matrix(adjacency, weights)
    h = n - num_byzantine
    _, fiedler = _fiedler(adjacency[:h, :h])
    scale = np.max(np.abs(fiedler)) if fiedler.size else 0.0
    fiedler = fiedler / scale if scale > 0 else fiedler

    by_shape: dict[tuple[int, int], list[int]] = {}
    for i in range(h):
        k_h = int(adjacency[i, :h].sum())
        k_b = int(adjacency[i, h:].sum())
        by_shape.setdefault((k_h, k_b), []).append(i)
    groups = []
    for (k_h, k_b), nodes in sorted(by_shape.items()):
        nodes = np.asarray(nodes)
        hon = np.stack([np.flatnonzero(adjacency[i, :h]) for i in nodes]).reshape(len(nodes), k_h)
        byz = (np.stack([np.flatnonzero(adjacency[i, h:]) for i in nodes]) + h).reshape(
            len(nodes), k_b
        )
        groups.append(
            NeighbourGroup(
                nodes=nodes.astype(np.int32),
                honest=hon.astype(np.int32),
                byzantine=byz.astype(np.int32),
                self_weight=w[nodes, nodes].astype(np.float32),
                honest_weights=np.take_along_axis(w[nodes], hon, 1).astype(np.float32),
                byzantine_weights=np.take_along_axis(w[nodes], byz, 1).astype(np.float32),
                fiedler=fiedler[nodes].astype(np.float32),
            )
        )
    return Graph(adjacency, w, h, labels, tuple(groups), name, weights)


def adjacency_of(name: str, n: int, options: Mapping[str, Any] | None = None) -> np.ndarray:
    """The adjacency of a registered topology ``name`` (with its options) or of a file path.

    Raises
    ------
    ValueError
        Neither a registered name nor an existing file (the message lists the
        names), or an option the topology does not take.

    Examples
    --------
    >>> adjacency_of("erdos_renyi", 10, {"p": 0.5}).shape
    (10, 10)
    >>> adjacency_of("grid", 4)
    Traceback (most recent call last):
    ...
    ValueError: unknown topology 'grid' (not a registered name nor a file); choose one of: ...
    """
    options = dict(options or {})
    if name in TOPOLOGIES:
        return np.asarray(TOPOLOGIES.build(name, n, **options), dtype=bool)
    if os.path.isfile(name):
        if options:
            raise ValueError(f"a topology read from a file takes no options, got {options}")
        return load_adjacency(name, n)
    raise ValueError(
        f"unknown topology {name!r} (not a registered name nor a file); choose one of: "
        f"{', '.join(TOPOLOGIES)}, or a path to an adjacency matrix (.npy or text)"
    )


def graph_of(config) -> Graph:
    """The :class:`Graph` of a configuration.

    ``config.topology`` (default ``"complete"``) with ``topology_options``
    over ``n = num_honest + num_byzantine`` nodes, ``byzantine_placement``
    (default ``"random"``, seeded by ``data_seed``: one graph shared by every
    seed of a run) and ``gossip_weights`` (default ``"metropolis"``).

    Examples
    --------
    >>> from jaxrobust.config import Config
    >>> config = Config(algorithm="gossip", topology="ring", num_honest=5, num_byzantine=1)
    >>> graph_of(config).describe().split(",")[0]
    'ring: 6 nodes (5 honest)'
    """
    name = getattr(config, "topology", None) or "complete"
    adjacency = adjacency_of(name, config.num_workers, getattr(config, "topology_options", {}))
    return build_graph(
        adjacency,
        config.num_byzantine,
        placement=getattr(config, "byzantine_placement", None) or "random",
        weights=getattr(config, "gossip_weights", None) or "metropolis",
        seed=config.data_seed,
        name=name,
    )
