"""The defence: registered rules, by name, chained in the order they are applied.

``["arc", "nnm", "trimmed_mean"]`` is ``CWTM o NNM o ARC``: ARC first on the
received vectors, the aggregator last. Every rule, built-in or a user's, is
built the same way from its registry: ``factory(f, *, n=..., **options)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxrobust.core import check_defence, registry

__all__ = ["build_defence", "make_defence", "output_count", "rule_options"]


def output_count(tx: optax.GradientTransformation, n: int) -> int:
    """How many vectors a pre-aggregator hands on for ``n`` inputs (traced abstractly).

    Parameters
    ----------
    tx : optax.GradientTransformation
        A pre-aggregator (or any transformation keeping a leading worker axis).
    n : int
        Number of input vectors.

    Returns
    -------
    int
        The leading size of its output.

    Examples
    --------
    >>> from jaxrobust.core import registry
    >>> output_count(registry("preaggregator").build("bucketing", 1, n=6, bucket_size=2), 6)
    3
    """
    params = jnp.zeros((1,), jnp.float32)

    def run(updates):
        return tx.update(updates, tx.init(params), params)[0]

    return int(jax.eval_shape(run, jax.ShapeDtypeStruct((n, 1), jnp.float32)).shape[0])


def build_defence(
    names: Sequence[str],
    n: int,
    f: int,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> optax.GradientTransformation:
    """Chain the rules ``names`` (pre-aggregators first, one aggregator last) for ``n`` inputs.

    Parameters
    ----------
    names : sequence of str
        Registered rule names, in the order they are applied.
    n : int
        Number of received vectors.
    f : int
        The ``f`` every rule is told.
    options : mapping, optional
        Per rule name, the options passed to its factory.

    Raises
    ------
    ValueError
        Unknown or misplaced names (the message lists the valid ones), unknown
        options, or a rule whose bound fails for ``(n, f)`` (the message names it;
        the bound applies to the number of vectors the rule receives, which
        bucketing reduces).

    Returns
    -------
    optax.GradientTransformation
        ``optax.chain`` of the rules: updates with leading axis ``n`` in, one
        vector out.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> tx = build_defence(["nnm", "trimmed_mean"], n=5, f=1)
    >>> x = jnp.array([[1.0], [2.0], [3.0], [4.0], [100.0]])
    >>> float(tx.update(x, tx.init(jnp.zeros(1)))[0][0])
    2.5
    """
    aggregators, pre = registry("aggregator"), registry("preaggregator")
    names = check_defence(names)
    options = dict(options or {})
    chain, workers = [], n
    for i, name in enumerate(names):
        last = i == len(names) - 1
        kind = aggregators if last else pre
        tx = kind.build(name, f, n=workers, **dict(options.get(name, {})))
        chain.append(tx)
        if not last:
            workers = output_count(tx, workers)
    return optax.chain(*chain)


def rule_options(config) -> dict[str, dict[str, Any]]:
    """Per rule, the options a configuration gives it.

    The flat fields ``clip_norm``, ``bucket_size``, ``cc_tau`` and ``seed``
    (the key of the randomised rules) come first; ``defence_options`` (a
    mapping from rule names to options) overrides them. Only the rules in
    ``config.defence`` are kept.

    A configuration keeps the papers' absolute lengths as its defaults
    (``clip_norm = 2``, ``cc_tau = 10``, ``geometric_median``'s ``nu = 0.1``
    as in ByzFL), so existing configurations, their run ids and results are
    unchanged; ``clip_norm: null``, ``cc_tau: null`` and
    ``defence_options: {geometric_median: {nu: null}}`` select the rules'
    scale-aware defaults, which the Python API uses when the option is
    left out.

    Examples
    --------
    >>> from jaxrobust.config import Config
    >>> rule_options(Config(defence=("bucketing", "trimmed_mean"), bucket_size=3))
    {'bucketing': {'bucket_size': 3, 'key': 0}}
    """
    options = {
        "clip": {"max_norm": config.clip_norm},
        "bucketing": {"bucket_size": config.bucket_size, "key": config.seed},
        "centered_clipping": {"tau": config.cc_tau},
        "dnc": {"key": config.seed},
        "geometric_median": {"nu": 0.1},
    }
    for name, extra in (getattr(config, "defence_options", None) or {}).items():
        options[name] = {**options.get(name, {}), **dict(extra)}
    return {name: options[name] for name in config.defence if name in options}


def make_defence(config, n: int | None = None, *, f: int | None = None):
    """The defence of a configuration as an ``optax.chain``.

    Built for ``n`` received vectors (default: ``config.received_count``,
    all workers or the clients sampled per round) of which the rules assume
    at most ``f`` Byzantine (default: ``config.defence_f``). A rule that
    cannot take ``(n, f)`` raises a ``ValueError`` naming its bound (e.g.
    ``n > 2f``).

    Parameters
    ----------
    config : Config
        Gives ``defence`` and the rules' options (:func:`rule_options`).
    n : int, optional
        Number of received vectors.
    f : int, optional
        The ``f`` every rule is told.

    Returns
    -------
    optax.GradientTransformation

    Raises
    ------
    ValueError
        As :func:`build_defence`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from jaxrobust.config import Config
    >>> tx = make_defence(Config(defence=("median",)), n=3, f=1)
    >>> tx.update(jnp.array([[1.0], [5.0], [2.0]]), tx.init(jnp.zeros(1)))[0].tolist()
    [2.0]
    """
    f = config.defence_f if f is None else f
    n = config.received_count if n is None else n
    return build_defence(config.defence, n, f, rule_options(config))
