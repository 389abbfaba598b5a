"""A short demo of the robust rules inside a plain optax training loop.

Ten honest workers fit a linear least-squares model, each on its own data;
three Byzantine workers attack. Every defence is an ``optax.chain`` of
jaxrobust rules, and each run is one ``lax.scan`` of jitted steps. Prints
the distance to the honest optimum after training, per attack and defence.

Run: ``python -m jaxrobust.demo``
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrobust as jr

HONEST, BYZANTINE = 10, 3
N = HONEST + BYZANTINE


def make_problem(key, dim: int, samples: int):
    """Per-worker regression data with heterogeneous optima (worker shifts).

    Each of the ``HONEST`` workers has its own optimum ``truth + shift_w``
    (``shift_w ~ N(0, 0.25 I)``) and noisy targets (noise standard deviation
    0.1), so the honest gradients disagree even at the common optimum, as in
    the heterogeneous setting of Karimireddy, He and Jaggi, "Byzantine-Robust
    Learning on Heterogeneous Datasets via Bucketing" (ICLR 2022).

    Parameters
    ----------
    key : jax.Array
        PRNG key (``jax.random.key``); the data is a deterministic function
        of it.
    dim : int
        Number of features ``d`` (the model is a vector of ``d`` weights).
    samples : int
        Examples per honest worker ``s``.

    Returns
    -------
    features : jax.Array
        ``(HONEST, s, d)`` float32 inputs, one block per honest worker.
    targets : jax.Array
        ``(HONEST, s)`` float32 targets.
    optimum : jax.Array
        ``(d,)`` float32 least-squares minimiser of the average loss over all
        honest examples: the reference point that training should reach.

    Examples
    --------
    >>> import jax
    >>> features, targets, optimum = make_problem(jax.random.key(0), dim=3, samples=8)
    >>> features.shape, targets.shape, optimum.shape
    ((10, 8, 3), (10, 8), (3,))
    >>> str(features.dtype)
    'float32'

    At the optimum the mean of the honest gradients vanishes:

    >>> grads = worker_gradients(optimum, features, targets)
    >>> bool(abs(grads.mean(0)).max() < 1e-4)
    True
    """
    k1, k2, k3, k4 = jax.random.split(key, 4)
    truth = jax.random.normal(k1, (dim,))
    features = jax.random.normal(k2, (HONEST, samples, dim))
    shift = 0.5 * jax.random.normal(k3, (HONEST, dim))
    targets = jnp.einsum("wsd,wd->ws", features, truth + shift)
    targets = targets + 0.1 * jax.random.normal(k4, targets.shape)
    # The honest optimum of the average loss, for reference.
    a = features.reshape(-1, dim)
    optimum = jnp.linalg.lstsq(a, targets.reshape(-1))[0]
    return features, targets, optimum


def worker_gradients(params, features, targets):
    """One least-squares gradient per worker, ``vmap``-ed over the worker axis.

    Worker ``w``'s loss is ``0.5 * mean((features[w] @ params - targets[w]) ** 2)``.

    Parameters
    ----------
    params : jax.Array
        ``(d,)`` float model weights, shared by every worker.
    features : jax.Array
        ``(n, s, d)`` float inputs of ``n`` workers.
    targets : jax.Array
        ``(n, s)`` float targets.

    Returns
    -------
    jax.Array
        ``(n, d)`` gradients, one row per worker (float32 for float32 inputs).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> features = jnp.ones((2, 1, 3))            # 2 workers, 1 example, d = 3
    >>> targets = jnp.array([[1.0], [-2.0]])
    >>> worker_gradients(jnp.zeros(3), features, targets)
    Array([[-1., -1., -1.],
           [ 2.,  2.,  2.]], dtype=float32)
    """

    def loss(p, x, y):
        return 0.5 * jnp.mean((x @ p - y) ** 2)

    return jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(params, features, targets)


ATTACKS = {
    "honest_copies": lambda honest, key: honest[:BYZANTINE],
    "sign_flip": lambda honest, key: jnp.broadcast_to(
        -honest.mean(0), (BYZANTINE, honest.shape[1])
    ),
    "large_noise": lambda honest, key: 100.0 * jax.random.normal(key, (BYZANTINE, honest.shape[1])),
    "inf": lambda honest, key: jnp.full((BYZANTINE, honest.shape[1]), jnp.inf),
}

DEFENCES = {
    "mean": lambda f: jr.mean(),
    "median": lambda f: jr.median(f),
    "krum": lambda f: jr.krum(f),
    "geometric_median": lambda f: jr.geometric_median(f),
    "cwtm o nnm": lambda f: optax.chain(jr.nnm(f), jr.trimmed_mean(f)),
    "cwtm o nnm o arc": lambda f: optax.chain(jr.arc(f), jr.nnm(f), jr.trimmed_mean(f)),
}


def train(defence, attack, features, targets, steps: int, lr: float, key):
    """Train the linear model for ``steps`` steps under ``attack``, defended by ``defence``.

    Every step, the ``HONEST`` workers' gradients are smoothed by per-worker
    momentum (``optax.ema(0.5)``, the worker momentum of Karimireddy, He and
    Jaggi, "Learning from History for Byzantine Robust Optimization",
    ICML 2021), ``attack`` appends ``BYZANTINE`` rows, ``defence`` aggregates
    the ``N`` rows and SGD applies the result. The steps are one
    ``lax.scan``, so the whole run can be jitted.

    Parameters
    ----------
    defence : optax.GradientTransformation
        jaxrobust rule(s) over updates with a leading worker axis of size
        ``N`` (e.g. ``jaxrobust.median(BYZANTINE)``), ending in an aggregator.
    attack : callable
        ``attack(honest, key) -> (BYZANTINE, d)`` Byzantine rows from the
        ``(HONEST, d)`` honest (momentum) gradients; see ``ATTACKS``.
    features, targets : jax.Array
        ``(HONEST, s, d)`` and ``(HONEST, s)`` data from :func:`make_problem`.
    steps : int
        Number of training steps (static length of the scan).
    lr : float
        SGD learning rate.
    key : jax.Array
        PRNG key, split into one key per step for the attack.

    Returns
    -------
    jax.Array
        ``(d,)`` float32 parameters after training, started from zero. They
        contain ``nan`` when the defence lets a non-finite attack through.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import jaxrobust as jr
    >>> features, targets, optimum = make_problem(jax.random.key(0), dim=3, samples=8)
    >>> params = train(jr.median(BYZANTINE), ATTACKS["sign_flip"], features, targets,
    ...                steps=100, lr=0.1, key=jax.random.key(1))
    >>> params.shape
    (3,)
    >>> bool(jnp.linalg.norm(params - optimum) < 0.5 * jnp.linalg.norm(optimum))
    True

    The plain mean does not survive an infinite attack:

    >>> bool(jnp.isnan(train(jr.mean(), ATTACKS["inf"], features, targets,
    ...                      steps=2, lr=0.1, key=jax.random.key(1))).any())
    True
    """
    tx = optax.chain(jr.per_worker(optax.ema(0.5, debias=False), N), defence, optax.sgd(lr))
    params = jnp.zeros(features.shape[-1])
    state = tx.init(params)

    def step(carry, key):
        params, state = carry
        honest = worker_gradients(params, features, targets)
        grads = jnp.concatenate([honest, attack(honest, key)])
        updates, state = tx.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, state), jax.random.split(key, steps))
    return params


def main(argv=None) -> None:
    """Run every defence against every attack and print the distance table.

    For each pair in ``DEFENCES`` x ``ATTACKS``, jits :func:`train` and
    prints ``||params - optimum||`` after training (``diverged`` when it is
    not finite), then the wall time.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``): ``--dim`` (50),
        ``--samples`` (64), ``--steps`` (300), ``--lr`` (0.1), ``--seed`` (0).

    Returns
    -------
    None
        The table goes to standard output.

    Raises
    ------
    SystemExit
        From ``argparse``: on ``--help`` (code 0) or on invalid arguments
        (code 2).

    Examples
    --------
    A full run compiles one program per cell of the table (tens of seconds
    even with ``--steps 2``), so this example only shows the options:

    >>> try:
    ...     main(["--help"])
    ... except SystemExit as exit:
    ...     print("exit code", exit.code)
    usage: ...--steps STEPS...
    A short demo of the robust rules inside a plain optax training loop.
    ...
    exit code 0
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    key = jax.random.key(args.seed)
    features, targets, optimum = make_problem(key, args.dim, args.samples)
    start = float(jnp.linalg.norm(optimum))
    print(f"{HONEST} honest + {BYZANTINE} Byzantine workers, d={args.dim}, {args.steps} steps")
    print(f"distance to the honest optimum after training (start: {start:.3f})\n")
    header = f"{'defence':20s}" + "".join(f"{a:>13s}" for a in ATTACKS)
    print(header)
    print("-" * len(header))
    t0 = time.perf_counter()
    for name, make in DEFENCES.items():
        row = f"{name:20s}"
        for attack in ATTACKS.values():
            defence = make(BYZANTINE)
            run = jax.jit(
                lambda k, d=defence, a=attack: train(
                    d, a, features, targets, args.steps, args.lr, k
                )
            )
            params = run(jax.random.key(args.seed + 1))
            dist = float(jnp.linalg.norm(params - optimum))
            row += f"{dist:13.3f}" if np.isfinite(dist) else f"{'diverged':>13s}"
        print(row)
    print(f"\n({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
