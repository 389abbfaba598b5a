"""Time of one robust step against a plain data-parallel step, side by side.

The ARC paper's MNIST setting: 13 workers (10 honest + 3 Byzantine), batch 25
per worker, the 431,080-parameter CNN, CWTM o NNM o ARC, aggregator-aware
ALIE. The plain data-parallel step computes one gradient of the same total
batch (325 examples) and applies SGD. Both run ``--steps`` steps after
compilation the way the simulator runs them (a ``lax.scan``, or on CPU, where
this CNN's convolutions are ~14x slower inside a loop body, separate calls of
one jitted step); the figure is milliseconds per step (best of
``--repeats``). Data are random MNIST-shaped images (the time does not depend
on pixel values).

When ``torch`` and ``byzfl`` are importable (the benchmark venv, see
``benchmarks/README.md``), a last row times ByzFL's own federated loop on the
same setting: its ``Client`` / ``ByzantineClient`` / ``Server`` classes driven
exactly like the DSGD branch of ``byzfl/benchmark/train.py`` (honest clients
one after another, then the attack, the pre-aggregators and aggregator, the
server's SGD step and the broadcast), with ByzFL's ``cnn_mnist`` (the same CNN
in torch), TrMean o NNM o ARC and ``Optimal_ALittleIsEnough``. One round is
timed after a warm-up round: best of ``--repeats`` blocks of ``--steps``
rounds, per round. Torch keeps its default thread count.

Run: ``python benchmarks/step.py [--steps 20] [--repeats 3] [--skip-byzfl]``
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrobust import models, simulator
from jaxrobust.config import Config
from jaxrobust.data.datasets import Dataset


def fake_mnist(train: int = 6000, test: int = 100, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(
        name="mnist-shaped",
        x_train=rng.standard_normal((train, 28, 28, 1)).astype(np.float32),
        y_train=rng.integers(0, 10, train).astype(np.int32),
        x_test=rng.standard_normal((test, 28, 28, 1)).astype(np.float32),
        y_test=rng.integers(0, 10, test).astype(np.int32),
        num_classes=10,
    )


def best_time(fn, *args, repeats: int) -> float:
    out = fn(*args)
    jax.block_until_ready(out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def robust_ms(config: Config, dataset: Dataset, steps: int, repeats: int) -> float:
    config = config.replace(steps=steps, eval_every=steps)
    init, chunk, _, _ = simulator.compiled_run(config, dataset)
    seeds = np.arange(1)
    states = simulator.initial_states(config, dataset, init, seeds)
    return 1e3 * best_time(chunk, states, repeats=repeats) / steps


#: The ARC MNIST setting of the step benchmarks (Allouah et al., 2024): 13 workers of
#: which 3 Byzantine, the 431k CNN, batch 25, momentum 0.9 (defence and attack per row).
ARC_SETTING = Config(
    dataset="mnist",
    model="arc_cnn",
    num_honest=10,
    num_byzantine=3,
    batch_size=25,
    lr=0.05,
    momentum=0.9,
    weight_decay=1e-4,
)


def data_parallel_ms(
    dataset: Dataset, batch: int, steps: int, repeats: int, model_name: str = "arc_cnn"
) -> float:
    """Milliseconds per plain data-parallel SGD step (one gradient of ``batch`` examples).

    ``steps`` steps as the simulator runs them: one ``lax.scan``, or on CPU with
    the CNN separate jitted calls (as ``simulator.StepLoop``).
    """
    model = models.resolve_model(model_name, dataset.num_classes)
    loss = models.cross_entropy_loss(model)
    tx = optax.sgd(0.05)
    x, y = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)

    def step(carry, key):
        params, opt = carry
        idx = jax.random.randint(key, (batch,), 0, x.shape[0])
        grads = jax.grad(loss)(params, (x[idx], y[idx]))
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), opt), None

    if jax.default_backend() == "cpu" and model_name == "arc_cnn":  # as simulator.StepLoop
        one = jax.jit(lambda carry, key: step(carry, key)[0])

        def run(params, opt, key):
            carry = (params, opt)
            for k in jax.random.split(key, steps):
                carry = one(carry, k)
            return carry

    else:

        @jax.jit
        def run(params, opt, key):
            return jax.lax.scan(step, (params, opt), jax.random.split(key, steps))[0]

    params = models.init_params(model, jax.random.key(0), dataset.input_shape)
    opt = tx.init(params)
    return 1e3 * best_time(run, params, opt, jax.random.key(1), repeats=repeats) / steps


# ByzFL's own model of the same architecture: conv 5x5x20 (VALID), ReLU, maxpool 2,
# conv 5x5x50, ReLU, maxpool 2, dense 500, ReLU, dense 10 (then log_softmax, with NLLLoss).
BYZFL_MODEL, BYZFL_LOSS, ARC_CNN_PARAMS = "cnn_mnist", "NLLLoss", 431_080


def load_byzfl_framework():
    """``(torch, byzfl.fed_framework, byzfl.attacks.attacks, None)``, or ``(..., reason)``."""
    try:
        # benchmarks/aggregators.py (next to this script): imports torch, then byzfl
        # behind its stand-in ``torchvision`` module.
        from aggregators import load_byzfl
    except ImportError as exc:
        return None, None, None, f"benchmarks/aggregators.py not importable: {exc}"
    torch, byzfl_aggregators, reason = load_byzfl()
    if byzfl_aggregators is None:
        return None, None, None, reason
    fed = importlib.import_module("byzfl.fed_framework")
    attacks = importlib.import_module("byzfl.attacks.attacks")
    return torch, fed, attacks, None


def byzfl_round_ms(
    dataset: Dataset, base: Config, f: int, steps: int, repeats: int
) -> tuple[float | None, dict]:
    """ms per round of ByzFL's DSGD loop (best of ``repeats`` blocks of ``steps`` rounds)."""
    torch, fed, attacks, reason = load_byzfl_framework()
    if reason is not None:
        return None, {"skipped": reason}
    from byzfl.utils.misc import set_random_seed
    from torch.utils.data import DataLoader, TensorDataset

    attack_name = (
        "Optimal_ALittleIsEnough"
        if hasattr(attacks, "Optimal_ALittleIsEnough")
        else "ALittleIsEnough"
    )
    aggregator = {"name": "TrMean", "parameters": {"f": f}}
    pre_aggregators = [
        {"name": "ARC", "parameters": {"f": f}},
        {"name": "NNM", "parameters": {"f": f}},
    ]
    set_random_seed(0)

    def tensors(x, y):
        data = TensorDataset(
            torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))),  # NHWC -> NCHW
            torch.from_numpy(y.astype(np.int64)),
        )
        data.targets = data.tensors[1]  # what DataDistributor reads
        return data

    train = tensors(dataset.x_train, dataset.y_train)
    test = DataLoader(tensors(dataset.x_test, dataset.y_test), batch_size=100)
    # ByzFL's iid split: one shuffled DataLoader of batch_size per honest client.
    loaders = fed.DataDistributor(
        {
            "data_distribution_name": "iid",
            "nb_honest": base.num_honest,
            "data_loader": DataLoader(train),
            "batch_size": base.batch_size,
        }
    ).split_data()
    optim = {
        "optimizer_name": "SGD",
        "learning_rate": base.lr,
        "weight_decay": base.weight_decay,
        "milestones": [],
        "learning_rate_decay": 1.0,
    }
    clients = [
        fed.Client(
            {
                "model_name": BYZFL_MODEL,
                "device": "cpu",
                **optim,
                "loss_name": BYZFL_LOSS,
                "LabelFlipping": False,
                "training_dataloader": loader,
                "momentum": base.momentum,
                "nb_labels": 10,
                "store_per_client_metrics": False,
            }
        )
        for loader in loaders
    ]
    server = fed.Server(
        {
            "model_name": BYZFL_MODEL,
            "device": "cpu",
            "test_loader": test,
            **optim,
            "aggregator_info": copy.deepcopy(aggregator),
            "pre_agg_list": copy.deepcopy(pre_aggregators),
        }
    )
    byzantine = fed.ByzantineClient(
        {
            "name": attack_name,
            "f": f,
            "parameters": {
                "aggregator_info": copy.deepcopy(aggregator),
                "pre_agg_list": copy.deepcopy(pre_aggregators),
                "f": f,
            },
        }
    )
    count = sum(p.numel() for p in server.model.parameters())
    assert count == ARC_CNN_PARAMS, f"ByzFL's {BYZFL_MODEL} has {count:,} parameters"
    state = server.get_dict_parameters()
    for client in clients:
        client.set_model_state(state)

    def one_round() -> None:
        # The DSGD branch of byzfl/benchmark/train.py, minus evaluation and loss logging.
        for client in clients:
            client.compute_gradients()
        honest = [client.get_flat_gradients_with_momentum() for client in clients]
        server.update_model_with_gradients(honest + byzantine.apply_attack(honest))
        new_state = server.get_dict_parameters()
        for client in clients:
            client.set_model_state(new_state)

    one_round()  # warm-up
    best, rounds = float("inf"), []
    for _ in range(repeats):
        block = time.perf_counter()
        for _ in range(steps):
            start = time.perf_counter()
            one_round()
            rounds.append(time.perf_counter() - start)
        best = min(best, (time.perf_counter() - block) / steps)
    info = {
        "attack": attack_name,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "params": count,
        "fastest_round_ms": 1e3 * min(rounds),
    }
    return 1e3 * best, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-byzfl", action="store_true", help="leave out ByzFL's round")
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()
    load_before = os.getloadavg()

    dataset = fake_mnist()
    base = ARC_SETTING
    robust = "CWTM o NNM o ARC, aggregator-aware ALIE (ARC setting)"
    rows = {
        "plain data-parallel step (one gradient of 325 examples, SGD)": data_parallel_ms(
            dataset, 325, args.steps, args.repeats
        ),
        "13 per-worker gradients + momentum, mean, no attack": robust_ms(
            base.replace(num_byzantine=0, num_honest=13, defence=("mean",), attack="none"),
            dataset,
            args.steps,
            args.repeats,
        ),
        "CWTM o NNM o ARC, sign flipping": robust_ms(
            base.replace(defence=("arc", "nnm", "trimmed_mean"), attack="sign_flip"),
            dataset,
            args.steps,
            args.repeats,
        ),
        robust: robust_ms(
            base.replace(defence=("arc", "nnm", "trimmed_mean"), attack="alie_aware"),
            dataset,
            args.steps,
            args.repeats,
        ),
    }
    byzfl_ms, byzfl_info = None, {"skipped": "--skip-byzfl"}
    if not args.skip_byzfl:
        byzfl_ms, byzfl_info = byzfl_round_ms(
            dataset, base, base.num_byzantine, args.steps, args.repeats
        )
    byzfl_row = f"ByzFL round: TrMean o NNM o ARC, {byzfl_info.get('attack', '-')}"
    if byzfl_ms is not None:
        rows[byzfl_row] = byzfl_ms
    load_after = os.getloadavg()

    plain = next(iter(rows.values()))
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({platform.processor()})")
    if byzfl_ms is not None:
        print(
            f"torch {byzfl_info['torch']} ({byzfl_info['torch_threads']} threads, the default), "
            f"ByzFL {BYZFL_MODEL}: {byzfl_info['params']:,} parameters"
        )
    else:
        print(f"ByzFL: {byzfl_info['skipped']}")
    print(
        f"1-minute load average before / after: {load_before[0]:.2f} / {load_after[0]:.2f} "
        f"(nproc {os.cpu_count()}); --steps {args.steps} --repeats {args.repeats}"
    )
    print(f"{'step':64s} {'ms/step':>9s} {'vs plain':>9s}")
    for name, ms in rows.items():
        print(f"{name:64s} {ms:9.1f} {ms / plain:8.2f}x")
    if byzfl_ms is not None:
        print(
            f"ByzFL / jaxrobust robust step ({robust}): {byzfl_ms / rows[robust]:.1f}x; "
            f"ByzFL's fastest single round {byzfl_info['fastest_round_ms']:.1f} ms"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "ms_per_step": rows,
                    "byzfl": byzfl_info,
                    "loadavg_1min": [load_before[0], load_after[0]],
                },
                fh,
                indent=1,
            )


if __name__ == "__main__":
    main()
