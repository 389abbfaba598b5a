"""Beyond one device: runs sharded over devices, and robust data-parallel training.

Two uses of a 1-D :class:`jax.sharding.Mesh`:

* **Independent runs over devices** (sweeps). A batch of runs is a pytree
  whose every leaf has a leading run axis; :func:`shard_runs` places it with
  ``PartitionSpec("runs")`` on a mesh from :func:`runs_mesh`, and
  :func:`over_runs` wraps a vmapped program in ``jax.shard_map`` so every
  device runs its own runs with no cross-device traffic. The batch must be a
  multiple of the device count: :func:`pad_to_multiple`.

* **Robust data-parallel training** (every device is a worker).
  :func:`data_parallel_step` shards a global batch over a ``workers`` mesh,
  computes one gradient per device, gathers them with ``lax.all_gather`` into
  updates with a leading worker axis (one row per device) and applies a
  jaxrobust optax chain to them, in place of ``lax.pmean``. Every device
  computes the same robust update, so the parameters stay replicated::

      import optax, jaxrobust as jr
      from jaxrobust import distributed

      mesh = distributed.workers_mesh()            # all devices, axis "workers"
      tx = optax.chain(jr.arc(1), jr.nnm(1), jr.trimmed_mean(1), optax.sgd(0.1))
      step = distributed.data_parallel_step(loss, tx, mesh)
      params, opt_state = distributed.replicate((params, tx.init(params)), mesh)
      batch = distributed.shard_batch((x, y), mesh)  # x: (B, ...), B divisible by n
      params, opt_state, loss_value = step(params, opt_state, batch)

  Each device holds the ``n`` gathered gradients, so memory grows as ``n``
  times the model: this suits the many-small-workers regime, not large models.

Multi-host: :func:`initialize_multihost` calls :func:`jax.distributed.initialize`
when a cluster is described in the environment; every host then runs the same
program and ``jax.devices()`` spans all hosts. Tested: one process from the
environment variables, and :func:`data_parallel_step` on 2 processes x 4 CPU
devices of one machine (gloo collectives) against 1 x 8; not on separate
machines or GPUs.

On CPU with many forced host devices (``--xla_force_host_platform_device_count``)
and few cores, XLA:CPU has been seen to deadlock in collectives when many steps
are queued: wait for each step's result (``loss.block_until_ready()``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any
T = TypeVar("T")

RUNS = "runs"
WORKERS = "workers"

#: Environment variables that describe a multi-process job to this helper.
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"


# --------------------------------------------------------------------------
# Multi-host start
# --------------------------------------------------------------------------


def initialize_multihost() -> bool:
    """Start JAX's multi-process runtime if the environment describes a job.

    * ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0) set: calls
      ``jax.distributed.initialize(address, num_processes, process_id)`` with
      ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` when set (JAX's own cluster
      detection fills in what is not);
    * a Slurm job step of several tasks (``SLURM_NTASKS > 1``) or an Open MPI
      job (``OMPI_MCA_orte_hnp_uri``): calls ``jax.distributed.initialize()``,
      which detects the rest;
    * otherwise, or if already initialised, does nothing.

    Call it before any other JAX call. Returns whether the runtime is
    initialised. Every host runs the same command; afterwards ``jax.devices()``
    lists the devices of all hosts and ``jax.local_devices()`` this host's.

    Returns
    -------
    bool
        ``True`` if the multi-process runtime is initialised (now or before),
        ``False`` if the environment describes no job (single process).

    Raises
    ------
    ValueError
        If ``JAX_NUM_PROCESSES`` or ``JAX_PROCESS_ID`` is set but is not an
        integer. Errors of ``jax.distributed.initialize`` itself (e.g. an
        unreachable coordinator) propagate unchanged.

    Examples
    --------
    With no job described in the environment, nothing is started:

    >>> import os
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {}, clear=True):
    ...     initialize_multihost()
    False
    """
    if jax.distributed.is_initialized():
        return True
    env = os.environ
    if env.get(COORDINATOR_ENV):
        num = env.get(NUM_PROCESSES_ENV)
        pid = env.get(PROCESS_ID_ENV)
        jax.distributed.initialize(
            env[COORDINATOR_ENV],
            num_processes=None if num is None else int(num),
            process_id=None if pid is None else int(pid),
        )
        return True
    slurm = int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in env
    if slurm or "OMPI_MCA_orte_hnp_uri" in env:
        jax.distributed.initialize()
        return True
    return False


# --------------------------------------------------------------------------
# Runs over devices
# --------------------------------------------------------------------------


def runs_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"runs"`` over ``devices`` (default: this host's devices).

    Runs are independent, so the mesh is host-local: each host can run its own.

    Parameters
    ----------
    devices : sequence of jax.Device, optional
        The devices, in mesh order (default ``jax.local_devices()``).

    Returns
    -------
    jax.sharding.Mesh
        A mesh of shape ``(len(devices),)`` with the single axis ``"runs"``.

    Examples
    --------
    >>> import jax
    >>> mesh = runs_mesh(jax.local_devices()[:1])
    >>> mesh.axis_names, mesh.devices.shape
    (('runs',), (1,))
    """
    devices = jax.local_devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (RUNS,))


def pad_to_multiple(items: Sequence[T], multiple: int) -> list[T]:
    """``items`` followed by copies of its last item, up to a multiple of ``multiple``.

    Parameters
    ----------
    items : sequence
        The batch (e.g. the configurations of a sweep's runs); not modified.
    multiple : int
        The length to pad to a multiple of, usually the device count.

    Returns
    -------
    list
        A new list of length ``ceil(len(items) / multiple) * multiple``: the
        items, then the last item repeated. The caller drops the results of
        the padding.

    Raises
    ------
    ValueError
        If ``items`` is empty (``"cannot pad an empty batch"``) or
        ``multiple < 1`` (``"multiple must be positive, got ..."``).

    Examples
    --------
    >>> pad_to_multiple(["a", "b", "c"], 2)
    ['a', 'b', 'c', 'c']
    >>> pad_to_multiple([1, 2, 3, 4], 4)
    [1, 2, 3, 4]
    >>> pad_to_multiple([], 2)
    Traceback (most recent call last):
        ...
    ValueError: cannot pad an empty batch
    >>> pad_to_multiple([1], 0)
    Traceback (most recent call last):
        ...
    ValueError: multiple must be positive, got 0
    """
    if not items:
        raise ValueError("cannot pad an empty batch")
    if multiple < 1:
        raise ValueError(f"multiple must be positive, got {multiple}")
    items = list(items)
    return items + [items[-1]] * (-len(items) % multiple)


def runs_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the mesh's ``runs`` axis, the rest whole.

    Parameters
    ----------
    mesh : jax.sharding.Mesh
        A mesh with a ``"runs"`` axis (:func:`runs_mesh`).

    Returns
    -------
    jax.sharding.NamedSharding
        ``NamedSharding(mesh, PartitionSpec("runs"))``.

    Examples
    --------
    >>> import jax
    >>> from jax.sharding import PartitionSpec
    >>> runs_sharding(runs_mesh(jax.local_devices()[:1])).spec == PartitionSpec("runs")
    True
    """
    return NamedSharding(mesh, PartitionSpec(RUNS))


def shard_runs(tree: PyTree, mesh: Mesh) -> PyTree:
    """Every leaf ``device_put`` with its leading (run) axis split over ``mesh``.

    The leading axis of every leaf must be a multiple of the device count
    (:func:`pad_to_multiple`).

    Parameters
    ----------
    tree : pytree
        Arrays (numpy or JAX, any dtype) of shape ``(R, ...)``, one row per run.
    mesh : jax.sharding.Mesh
        A mesh with a ``"runs"`` axis (:func:`runs_mesh`) of ``n`` devices.

    Returns
    -------
    pytree
        The same structure of ``jax.Array`` leaves, same shapes and dtypes,
        each with sharding :func:`runs_sharding`: device ``i`` holds runs
        ``i * R / n`` to ``(i + 1) * R / n - 1``.

    Raises
    ------
    ValueError
        If a leaf is a scalar or its leading axis is not a multiple of ``n``
        (``"a leaf of shape ... has no leading run axis divisible by ...
        devices; pad the batch with pad_to_multiple"``).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> mesh = runs_mesh(jax.local_devices()[:1])
    >>> runs = shard_runs({"lr": jnp.array([0.1, 0.2]), "x": jnp.zeros((2, 3))}, mesh)
    >>> runs["x"].shape, runs["x"].sharding == runs_sharding(mesh)
    ((2, 3), True)
    >>> shard_runs(jnp.float32(1.0), mesh)
    Traceback (most recent call last):
        ...
    ValueError: a leaf of shape () has no leading run axis divisible by 1 devices; ...
    """
    devices = mesh.devices.size
    for leaf in jax.tree_util.tree_leaves(tree):
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] % devices:
            raise ValueError(
                f"a leaf of shape {np.shape(leaf)} has no leading run axis divisible by "
                f"{devices} devices; pad the batch with pad_to_multiple"
            )
    return jax.device_put(tree, runs_sharding(mesh))


@functools.lru_cache(maxsize=4)
def over_runs(fn: Callable, mesh: Mesh) -> Callable:
    """``fn`` (vmapped over a leading run axis) run per device on its block of runs.

    ``jax.shard_map`` splits every argument and result along the leading axis
    over the mesh's ``runs`` axis; each device calls ``fn`` on its own runs,
    so the program has no cross-device communication. Cached per
    ``(fn, mesh)`` so the batches of a sweep group (its ``init``, ``chunk``
    and ``evaluate``) share their compiled programs; the cache is small so
    that earlier groups' programs, and the data they hold, are let go.

    The replication check of ``shard_map`` is off: the runs never communicate,
    and with it on, JAX 0.10.2 rejects a vmapped ``lax.cond`` whose branches
    close over unbatched values (as ``kernels.mix_rows`` does).

    Parameters
    ----------
    fn : callable
        A function of pytrees whose leaves all have a leading run axis,
        returning such pytrees (typically ``jax.vmap`` of a one-run
        program). Must be hashable (it is a cache key): pass the same
        function object to reuse the compiled program.
    mesh : jax.sharding.Mesh
        A mesh with a ``"runs"`` axis (:func:`runs_mesh`) of ``n`` devices.

    Returns
    -------
    callable
        The jitted, sharded ``fn``: same signature, arguments' and results'
        leading axes split over the devices (their length a multiple of
        ``n``; :func:`shard_runs`).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> mesh = runs_mesh(jax.local_devices()[:1])
    >>> double = over_runs(jax.vmap(lambda x: 2.0 * x), mesh)
    >>> double(shard_runs(jnp.arange(4.0), mesh))
    Array([0., 2., 4., 6.], dtype=float32)
    """
    spec = PartitionSpec(RUNS)
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False))


def device_count(tree: PyTree) -> int:
    """How many devices the leaves of ``tree`` are spread over (the most of any leaf).

    Parameters
    ----------
    tree : pytree
        A non-empty pytree of ``jax.Array`` leaves (each has a ``.sharding``).

    Returns
    -------
    int
        The largest number of devices holding any one leaf.

    Raises
    ------
    ValueError
        If ``tree`` has no leaves (from ``max`` of an empty sequence).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> mesh = runs_mesh(jax.local_devices()[:1])
    >>> device_count(shard_runs({"a": jnp.zeros(2), "b": jnp.ones((2, 5))}, mesh))
    1
    """
    return max(len(leaf.sharding.device_set) for leaf in jax.tree_util.tree_leaves(tree))


# --------------------------------------------------------------------------
# Robust data-parallel training
# --------------------------------------------------------------------------


def workers_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"workers"`` over ``devices`` (default: every device, all hosts).

    Parameters
    ----------
    devices : sequence of jax.Device, optional
        The devices, in worker order (default ``jax.devices()``, which spans
        all hosts after :func:`initialize_multihost`).

    Returns
    -------
    jax.sharding.Mesh
        A mesh of shape ``(len(devices),)`` with the single axis
        ``"workers"``: device ``i`` is worker ``i``.

    Examples
    --------
    >>> import jax
    >>> mesh = workers_mesh(jax.devices()[:1])
    >>> mesh.axis_names, mesh.size
    (('workers',), 1)
    """
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (WORKERS,))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Every leaf copied to every device of ``mesh``.

    Parameters
    ----------
    tree : pytree
        Arrays of any shape and dtype (e.g. ``(params, opt_state)``).
    mesh : jax.sharding.Mesh
        The mesh to replicate over.

    Returns
    -------
    pytree
        The same structure of ``jax.Array`` leaves, same shapes and dtypes,
        with sharding ``NamedSharding(mesh, PartitionSpec())``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> params = replicate({"w": jnp.zeros((2, 3))}, workers_mesh(jax.devices()[:1]))
    >>> params["w"].shape, params["w"].sharding.is_fully_replicated
    ((2, 3), True)
    """
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(batch: PyTree, mesh: Mesh) -> PyTree:
    """This process's examples as a global batch split over the mesh's single axis.

    One process: ``batch`` is the whole batch; device ``i`` gets the ``i``-th
    block of the leading (example) axis. Several processes: each passes its
    own part, the examples of its local devices in order, and the global
    batch is their concatenation (``jax.make_array_from_process_local_data``).

    Parameters
    ----------
    batch : pytree
        Array-likes (converted with ``np.asarray``, dtype kept) of shape
        ``(b, ...)``: this process's ``b`` examples. With one process, ``b``
        must be divisible by ``mesh.size``.
    mesh : jax.sharding.Mesh
        A 1-D mesh (:func:`workers_mesh`).

    Returns
    -------
    pytree
        The same structure of global ``jax.Array`` leaves of shape
        ``(B, ...)`` (``B`` the examples of all processes), split along the
        leading axis with ``NamedSharding(mesh, PartitionSpec(axis))``.

    Raises
    ------
    ValueError
        If ``mesh`` has more than one axis (``"too many values to unpack"``);
        JAX raises if the examples do not split evenly over the devices.

    Examples
    --------
    >>> import jax, numpy as np
    >>> from jax.sharding import PartitionSpec
    >>> mesh = workers_mesh(jax.devices()[:1])
    >>> x, y = shard_batch((np.ones((4, 2), np.float32), np.arange(4)), mesh)
    >>> x.shape, x.dtype, x.sharding.spec == PartitionSpec("workers")
    ((4, 2), dtype('float32'), True)
    >>> y
    Array([0, 1, 2, 3], dtype=int32)
    """
    (axis,) = mesh.axis_names
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    return jax.tree_util.tree_map(
        lambda leaf: jax.make_array_from_process_local_data(sharding, np.asarray(leaf)), batch
    )


def data_parallel_step(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    reduce: Literal["gather", "pmean"] = "gather",
    faulty: Callable[[PyTree, jax.Array], PyTree] | None = None,
) -> Callable[[PyTree, optax.OptState, PyTree], tuple[PyTree, optax.OptState, jax.Array]]:
    """A jitted data-parallel training step whose aggregation is a robust optax chain.

    Parameters
    ----------
    loss_fn
        ``loss_fn(params, batch) -> scalar`` on one device's part of the batch.
    tx
        With ``reduce="gather"``: an optax chain over updates with a leading
        worker axis of size ``n = mesh.size`` (jaxrobust pre-aggregators then
        one aggregator, then a server optimiser), e.g.
        ``optax.chain(jr.arc(1), jr.nnm(1), jr.trimmed_mean(1), optax.sgd(0.1))``.
        With ``reduce="pmean"``: a plain optax optimiser over the mean gradient
        (standard data parallelism, not robust).
    mesh
        A 1-D mesh (:func:`workers_mesh`); each device is one worker.
    reduce
        ``"gather"``: ``lax.all_gather`` the per-device gradients into
        ``(n, ...)`` leaves on every device and apply ``tx``; ``"pmean"``:
        ``lax.pmean`` them and apply ``tx``.
    faulty
        Optional ``faulty(grads, worker_index) -> grads``, applied on every
        device to its own gradient before the exchange: simulates faulty or
        Byzantine devices (e.g. ``jnp.where(index == 0, -1e6 * jnp.sign(g), g)``).

    Returns
    -------
    ``step(params, opt_state, batch) -> (params, opt_state, loss)``: ``params``
    and ``opt_state`` replicated (``tx.init(params)``; :func:`replicate`),
    ``batch`` a pytree whose leaves have a leading example axis divisible by
    ``n`` (device ``i`` gets the ``i``-th block; :func:`shard_batch`), ``loss``
    the mean of the devices' losses. The new parameters and state are
    replicated: every device computes the same update from the same gathered
    gradients (``all_gather(..., to="invarying")``, checked by ``shard_map``).

    Raises
    ------
    ValueError
        If ``mesh`` is not 1-D (``"expected a 1-D mesh, got axes ..."``) or
        ``reduce`` is neither ``"gather"`` nor ``"pmean"``
        (``"reduce must be 'gather' or 'pmean', got ..."``).

    Examples
    --------
    One step of least squares on a mesh of one device (one worker, so no
    trimming: ``trimmed_mean(0)``); the gradient at zero of
    ``0.5 * mean((x @ w - y) ** 2)`` is ``-x.T @ y / 4 = (-2, -1.25)``:

    >>> import jax, jax.numpy as jnp, numpy as np, optax
    >>> import jaxrobust as jr
    >>> def loss(params, batch):
    ...     x, y = batch
    ...     return 0.5 * jnp.mean((x @ params - y) ** 2)
    >>> mesh = workers_mesh(jax.devices()[:1])
    >>> tx = optax.chain(jr.trimmed_mean(0), optax.sgd(0.1))
    >>> step = data_parallel_step(loss, tx, mesh)
    >>> params, opt_state = replicate((jnp.zeros(2), tx.init(jnp.zeros(2))), mesh)
    >>> x = np.array([[1, 0], [0, 1], [1, 1], [2, 0]], np.float32)
    >>> y = np.array([1, 2, 3, 2], np.float32)
    >>> params, opt_state, loss_value = step(params, opt_state, shard_batch((x, y), mesh))
    >>> params, loss_value
    (Array([0.2  , 0.125], dtype=float32), Array(2.25, dtype=float32))
    >>> data_parallel_step(loss, tx, mesh, reduce="sum")
    Traceback (most recent call last):
        ...
    ValueError: reduce must be 'gather' or 'pmean', got 'sum'
    """
    if len(mesh.axis_names) != 1:
        raise ValueError(f"expected a 1-D mesh, got axes {mesh.axis_names}")
    if reduce not in ("gather", "pmean"):
        raise ValueError(f"reduce must be 'gather' or 'pmean', got {reduce!r}")
    (axis,) = mesh.axis_names
    value_and_grad = jax.value_and_grad(loss_fn)

    def local(params, opt_state, batch):
        # Differentiate a per-device copy: the gradient of the replicated (invariant)
        # parameters would be summed over devices by shard_map's transpose.
        mine = jax.lax.pcast(params, axis, to="varying")
        loss, grads = value_and_grad(mine, batch)
        if faulty is not None:
            grads = faulty(grads, jax.lax.axis_index(axis))
        if reduce == "gather":
            received = jax.lax.all_gather(grads, axis, to="invarying")  # (n, ...) leaves
        else:
            received = jax.lax.pmean(grads, axis)
        updates, opt_state = tx.update(received, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, jax.lax.pmean(loss, axis)

    replicated, split = PartitionSpec(), PartitionSpec(axis)
    return jax.jit(
        jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(replicated, replicated, split),
            out_specs=(replicated, replicated, replicated),
        )
    )


def split_batch(batch: PyTree, n: int) -> PyTree:
    """``(B, ...)`` leaves as ``(n, B / n, ...)``: the per-device blocks on one device.

    The blocks are those :func:`shard_batch` gives the ``n`` devices, so a
    single-device simulation (``vmap`` over the leading axis) sees the same
    per-worker data as :func:`data_parallel_step`.

    Parameters
    ----------
    batch : pytree
        Arrays (with ``.shape`` and ``.reshape``) of shape ``(B, ...)``.
    n : int
        Number of blocks (devices).

    Returns
    -------
    pytree
        The same structure, each leaf of shape ``(n, B // n, ...)``, same dtype.

    Raises
    ------
    ValueError
        If a leaf's ``B`` is not divisible by ``n``
        (``"batch of B examples does not split over n devices"``).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x, y = split_batch((jnp.zeros((6, 3)), jnp.arange(6)), 2)
    >>> x.shape, y
    ((2, 3, 3), Array([[0, 1, 2],
           [3, 4, 5]], dtype=int32))
    >>> split_batch(jnp.zeros(5), 2)
    Traceback (most recent call last):
        ...
    ValueError: batch of 5 examples does not split over 2 devices
    """

    def split(leaf):
        if leaf.shape[0] % n:
            raise ValueError(f"batch of {leaf.shape[0]} examples does not split over {n} devices")
        return leaf.reshape(n, leaf.shape[0] // n, *leaf.shape[1:])

    return jax.tree_util.tree_map(split, batch)
