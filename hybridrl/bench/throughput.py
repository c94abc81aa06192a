"""Gradient updates per second and achieved FLOP/s of every RL method, next to d3rlpy's.

For a method of the registry, both libraries get the same network sizes, batch size and settings
(sampled actions, policy delay, target noise, expectile, state normalization, reward scaling; Hopper's
shapes: 11-d observations, 3-d actions), each its own default optimizer (ours fused Adam, d3rlpy's
PyTorch's default Adam). FLOPs per update are counted with ``torch.utils.flop_counter``, averaged over
as many updates as make one actor step (TD3+BC's policy delay); achieved FLOP/s is reported as a
fraction of the machine's measured rate for an 8192x256x256 fp32 matmul on the same threads. Timing
runs in rounds that interleave the implementations and the matmul reference (a change in the
machine's load touches all alike), and medians are reported. d3rlpy's batches are drawn before the
clock starts (its sampler is Python-side); ours come from the device buffer inside the timed loop.

DPO's tokens per second next to TRL's ``DPOTrainer`` is measured by ``pref_throughput``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

OBS_DIM, ACT_DIM = 11, 3  # Hopper


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, repeats: int = 30) -> float:
    """FLOP/s of an 8192x256 by 256x256 fp32 matmul (median of ``repeats``)."""
    a = torch.randn(8192, 256, device=device)
    b = torch.randn(256, 256, device=device)
    for _ in range(5):
        a @ b
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        _sync(device)
        times.append((time.perf_counter() - start) / 10)
    return 2 * 8192 * 256 * 256 / statistics.median(times)


def random_dataset(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Hopper-shaped random transitions with an episode end every 1000 rows."""
    rng = np.random.default_rng(seed)
    terminals = np.zeros(n, dtype=np.float32)
    terminals[999::1000] = 1.0
    return {
        "observations": rng.normal(size=(n, OBS_DIM)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, ACT_DIM)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "next_observations": rng.normal(size=(n, OBS_DIM)).astype(np.float32),
        "terminals": terminals,
    }


def time_block(update: Callable[[], Any], device: torch.device, seconds: float) -> float:
    """Updates per second over one block of about ``seconds``."""
    _sync(device)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        update()
        n += 1
    _sync(device)
    return n / (time.perf_counter() - start)


def count_flops(update: Callable[[], Any], updates: int = 1) -> float:
    """FLOPs of one update, averaged over ``updates`` consecutive ones (a method whose actor steps
    every k-th update costs the mean over k)."""
    counter = FlopCounterMode(display=False)
    with counter:
        for _ in range(updates):
            update()
    return counter.get_total_flops() / updates


def updates_per_cycle(config: Any) -> int:
    """Consecutive updates that hold each kind of step once (the policy delay; 1 for most methods)."""
    return max(1, int(getattr(config, "policy_delay", 1)))


def dataset_view(data: dict[str, np.ndarray], device: torch.device):
    """The build context's view of ``data``: its statistics (state normalization) and its episodes'
    returns (reward scaling), episodes ending at terminals."""
    from hybridrl.core.context import OfflineView

    starts = np.concatenate([[0], np.flatnonzero(data["terminals"][:-1]) + 1])
    returns = np.add.reduceat(data["rewards"].astype(np.float64), starts)
    return OfflineView.from_arrays(data, returns, device)


def hybridrl_update(method: str, data: dict[str, np.ndarray], device: torch.device,
                    config: Any = None) -> tuple[Callable[[], Any], Any]:
    """One update of the registered method (its default config unless given), and that config.

    The method is built from ``data`` as a run builds it (its statistics; a budget of 1M updates)."""
    from hybridrl import registry
    from hybridrl.core.buffers import TransitionBuffer
    from hybridrl.core.context import BuildContext

    spec = registry.get(method)
    config = config or spec.config()
    device = torch.device(device)
    ctx = BuildContext.of_sizes(OBS_DIM, ACT_DIM, device=device, total_steps=1_000_000,
                                offline=dataset_view(data, device))
    algo = spec.build(config, ctx)
    buffer = TransitionBuffer(OBS_DIM, ACT_DIM, device=device, offline=data)
    return (lambda: algo.update(buffer.sample(config.batch_size))), config


def _d3rlpy_dataset(data: dict[str, np.ndarray]):
    import d3rlpy

    timeouts = np.zeros(len(data["rewards"]), dtype=np.float32)
    timeouts[-1] = 1.0
    terminals = data["terminals"].copy()
    terminals[-1] = 0.0
    return d3rlpy.dataset.MDPDataset(observations=data["observations"], actions=data["actions"],
                                     rewards=data["rewards"], terminals=terminals, timeouts=timeouts)


def _d3rlpy_config(method: str, config: Any):
    """d3rlpy's counterpart of our config, same sizes; None when d3rlpy has no such method."""
    import d3rlpy

    encoder = d3rlpy.models.VectorEncoderFactory(list(config.hidden))
    scaling = {"observation_scaler": d3rlpy.preprocessing.StandardObservationScaler()
               if getattr(config, "normalize_states", False) else None}
    if method == "td3bc":
        return d3rlpy.algos.TD3PlusBCConfig(
            actor_encoder_factory=encoder, critic_encoder_factory=encoder, batch_size=config.batch_size,
            actor_learning_rate=config.actor_lr, critic_learning_rate=config.critic_lr, gamma=config.gamma,
            tau=config.tau, n_critics=config.num_critics, target_smoothing_sigma=config.policy_noise,
            target_smoothing_clip=config.noise_clip, alpha=config.alpha, update_actor_interval=config.policy_delay,
            **scaling)
    if method == "iql":
        if config.deterministic_actor:
            return None  # d3rlpy's IQL has only the Gaussian actor
        # d3rlpy steps Q and V with one optimizer at the critic's rate; ours are equal by default
        schedule = (d3rlpy.optimizers.CosineAnnealingLRFactory(T_max=1_000_000) if config.cosine_schedule
                    else None)
        return d3rlpy.algos.IQLConfig(
            actor_encoder_factory=encoder, critic_encoder_factory=encoder, value_encoder_factory=encoder,
            batch_size=config.batch_size, actor_learning_rate=config.actor_lr, critic_learning_rate=config.critic_lr,
            actor_optim_factory=d3rlpy.optimizers.AdamFactory(lr_scheduler_factory=schedule),
            gamma=config.gamma, tau=config.tau, n_critics=config.num_critics, expectile=config.expectile,
            weight_temp=config.temperature, max_weight=config.max_weight,
            # our reward scale 1000 / (max - min episode return) is d3rlpy's return-based scaler
            reward_scaler=d3rlpy.preprocessing.ReturnBasedRewardScaler(multiplier=1000.0)
            if config.normalize_reward else None, **scaling)
    if method == "cql":
        # a fixed conservative weight, like our default (no Lagrange tuning)
        return d3rlpy.algos.CQLConfig(actor_encoder_factory=encoder, critic_encoder_factory=encoder,
                                      batch_size=config.batch_size, n_action_samples=config.num_sampled_actions,
                                      alpha_learning_rate=0.0, conservative_weight=config.cql_alpha)
    if method == "sac":
        return d3rlpy.algos.SACConfig(actor_encoder_factory=encoder, critic_encoder_factory=encoder,
                                      batch_size=config.batch_size)
    if method == "bc":
        return d3rlpy.algos.BCConfig(encoder_factory=encoder, batch_size=config.batch_size)
    return None


def d3rlpy_update(method: str, config: Any, data: dict[str, np.ndarray],
                  device: torch.device) -> Callable[[], Any] | None:
    """One d3rlpy update of the same method and sizes; None when d3rlpy lacks it or is not installed."""
    try:
        import d3rlpy  # noqa: F401
    except ImportError:
        return None
    d3_config = _d3rlpy_config(method, config)
    if d3_config is None:
        return None
    from d3rlpy.algos.utility import build_scalers_with_transition_picker

    dataset = _d3rlpy_dataset(data)
    algo = d3_config.create(device=f"cuda:{device.index or 0}" if device.type == "cuda" else "cpu:0")
    build_scalers_with_transition_picker(algo, dataset)  # fit its state and reward scalers, as fit() does
    algo.build_with_dataset(dataset)
    batches = [dataset.sample_transition_batch(config.batch_size) for _ in range(64)]
    counter = iter(range(10**12))
    return lambda: algo.update(batches[next(counter) % len(batches)])


def measure(method: str, *, device: str = "auto", threads: int | None = None, seconds: float = 20.0,
            rounds: int = 5, warmup: int = 5, rows: int = 100_000) -> dict[str, Any]:
    """Throughput of ``method`` (and its d3rlpy or TRL reference) as ``scores.json`` fields, on a
    random dataset of ``rows`` transitions."""
    from hybridrl.core.runtime import keep_freed_memory
    from hybridrl.core.seeding import resolve_device

    if threads:
        torch.set_num_threads(threads)
    if method == "dpo":
        return _measure_dpo()
    keep_freed_memory()  # as the training loops do
    torch.manual_seed(0)
    dev = resolve_device(device)
    data = random_dataset(rows)
    ours, config = hybridrl_update(method, data, dev)
    updates = {"hybridrl": ours}
    reference = d3rlpy_update(method, config, data, dev)
    if reference is not None:
        updates["d3rlpy"] = reference
    cycle = updates_per_cycle(config)
    rows = {name: {"flops_per_update": count_flops(update, cycle)} for name, update in updates.items()}
    for update in updates.values():
        for _ in range(warmup):
            update()
    peaks, rates = [], {name: [] for name in updates}
    for _ in range(rounds):
        peaks.append(matmul_rate(dev, repeats=5))
        for name, update in updates.items():
            rates[name].append(time_block(update, dev, seconds / rounds))
    peak = statistics.median(peaks)
    for name, row in rows.items():
        row["updates_per_s"] = statistics.median(rates[name])
        row["achieved_flops_per_s"] = row["flops_per_update"] * row["updates_per_s"]
        row["fraction_of_matmul"] = row["achieved_flops_per_s"] / peak
        row["matmul_flops_per_s"] = peak
        row["peak_memory_mb"] = (torch.cuda.max_memory_allocated(dev) / 2**20) if dev.type == "cuda" else None
    ours_row = rows["hybridrl"]
    return {"metric": "updates_per_s", "score": ours_row["updates_per_s"], **ours_row, "device": str(dev),
            "threads": torch.get_num_threads(),
            "reference": {"library": "d3rlpy", **rows["d3rlpy"]} if "d3rlpy" in rows else None}


def _measure_dpo() -> dict[str, Any]:
    """Tokens/s of our trainer and TRL's DPOTrainer (precomputed reference) on the preset model."""
    from hybridrl.bench.pref_throughput import compare, load_config

    results = compare(load_config(), variants=("hybridrl", "trl-tuned"), repeats=1, threads=torch.get_num_threads(),
                      echo=lambda line: None)
    ours, trl = results["hybridrl"][0], results["trl-tuned"][0]

    def row(r: dict) -> dict[str, Any]:
        return {"tokens_per_s": r["tokens_per_s"], "peak_memory_mb": r["peak_rss_mb"], "flops_per_update": None,
                "achieved_flops_per_s": None, "matmul_flops_per_s": None, "fraction_of_matmul": None,
                "final_loss": r["last_loss"]}

    return {"metric": "tokens_per_s", "score": ours["tokens_per_s"], **row(ours), "device": "cpu",
            "threads": torch.get_num_threads(), "reference": {"library": "trl", **row(trl)}}
