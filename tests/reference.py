"""Obviously-correct numpy references for the robust rules (float64, flat vectors).

Each takes ``x`` of shape ``(n, d)`` (worker vectors already flattened and
concatenated) and returns a ``(d,)`` vector, or ``(m, d)`` for pre-aggregators.
"""

from __future__ import annotations

import itertools

import numpy as np


def flatten(tree_leaves: list[np.ndarray]) -> np.ndarray:
    n = tree_leaves[0].shape[0]
    return np.concatenate([np.asarray(leaf, np.float64).reshape(n, -1) for leaf in tree_leaves], 1)


def mean(x):
    return x.mean(0)


def median(x):
    return np.median(x, axis=0)


def trimmed_mean(x, f):
    n = len(x)
    return np.sort(x, axis=0)[f : n - f].mean(0)


def meamed(x, f):
    n, d = x.shape
    med = np.median(x, axis=0)
    out = np.empty(d)
    for j in range(d):
        # nearest first; at equal distance the lower value first
        closest = np.lexsort((x[:, j], np.abs(x[:, j] - med[j])))[: n - f]
        out[j] = x[closest, j].mean()
    return out


def sq_dist(x):
    n = len(x)
    return np.array([[np.sum((x[i] - x[j]) ** 2) for j in range(n)] for i in range(n)])


def krum_scores(x, f):
    n = len(x)
    d = sq_dist(x)
    scores = []
    for i in range(n):
        others = np.sort(np.delete(d[i], i))
        scores.append(others[: n - f - 2].sum())
    return np.array(scores)


def krum(x, f):
    return x[np.argmin(krum_scores(x, f))]


def multi_krum(x, f, m=None):
    m = len(x) - f if m is None else m
    chosen = np.argsort(krum_scores(x, f), kind="stable")[:m]
    return x[chosen].mean(0)


def mda(x, f):
    n = len(x)
    d = sq_dist(x)
    best, best_diam = None, np.inf
    for subset in itertools.combinations(range(n), n - f):
        diam = max(d[i, j] for i in subset for j in subset)
        if diam < best_diam:
            best, best_diam = subset, diam
    return x[list(best)].mean(0)


def monna(x, f, trusted=0):
    dist = np.sum((x - x[trusted]) ** 2, axis=1)
    chosen = np.argsort(dist, kind="stable")[: len(x) - f]
    return x[chosen].mean(0)


def gm_spread(x):
    """``median_i median_j ||x_i - x_j||``; if 0 the smallest positive distance; if none 1e3."""
    d = np.sqrt(sq_dist(x))
    typical = np.median(np.median(d, axis=1))
    if typical > 0:
        return typical
    return d[d > 0].min() if (d > 0).any() else 1e3


def geometric_median(x, nu=None, iterations=8):
    """Smoothed Weiszfeld; ``nu=None``: 1e-3 times :func:`gm_spread`."""
    z = x.mean(0)
    if nu is None:
        nu = 1e-3 * gm_spread(x)
    for _ in range(iterations):
        w = 1.0 / np.maximum(nu, np.linalg.norm(x - z, axis=1))
        z = (w[:, None] * x).sum(0) / w.sum()
    return z


def centered_clipping(x, center, tau=None, iterations=3):
    """``tau=None``: the median distance to ``center``, fixed before the first step."""
    v = center.copy()
    if tau is None:
        tau = np.median(np.linalg.norm(x - center, axis=1))
    for _ in range(iterations):
        diff = x - v
        norms = np.linalg.norm(diff, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(norms > tau, tau / norms, 1.0)
        v = v + (scale[:, None] * diff).mean(0)
    return v


def caf(x, f):
    n = len(x)
    c = np.ones(n)
    best_mu, best_lambda = None, np.inf
    while c.sum() > n - 2 * f:
        mu = (c[:, None] * x).sum(0) / c.sum()
        y = x - mu
        cov = (c[:, None, None] * y[:, :, None] * y[:, None, :]).sum(0) / c.sum()
        evals, evecs = np.linalg.eigh(cov)
        lam, v = evals[-1], evecs[:, -1]
        if lam < best_lambda:
            best_mu, best_lambda = mu, lam
        tau = (y @ v) ** 2 * (c > 0)
        if tau.max() <= 0:
            break
        c = c * (1 - tau / tau.max())
    return best_mu


def dnc_all_coordinates(x, f, filter_fraction=1.0):
    """DnC with every coordinate sampled (the outcome then has no randomness)."""
    n = len(x)
    y = x - x.mean(0)
    _, _, vt = np.linalg.svd(y, full_matrices=False)
    scores = (y @ vt[0]) ** 2
    removed = int(np.ceil(filter_fraction * f))
    keep = np.argsort(scores, kind="stable")[: n - removed]
    return x[keep].mean(0)


def arc(x, f):
    n = len(x)
    k = int(np.floor(2 * f * (n - f) / n))
    norms = np.linalg.norm(x, axis=1)
    threshold = np.sort(norms)[::-1][k]
    scale = np.minimum(1.0, threshold / norms)
    return x * scale[:, None]


def clip(x, c=None):
    """``c=None``: the median norm."""
    norms = np.linalg.norm(x, axis=1)
    if c is None:
        c = np.median(norms)
    with np.errstate(divide="ignore", invalid="ignore"):
        return x * np.where(norms > c, c / norms, 1.0)[:, None]


def nnm(x, f):
    d = sq_dist(x)
    out = np.empty_like(x)
    for i in range(len(x)):
        nearest = np.argsort(d[i], kind="stable")[: len(x) - f]
        out[i] = x[nearest].mean(0)
    return out


def bucketing(x, s, permutation):
    xs = x[np.asarray(permutation)]
    return np.stack([xs[i : i + s].mean(0) for i in range(0, len(x), s)])
