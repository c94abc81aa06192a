"""What PRDC's nearest-neighbour search costs: PRDC updates/s next to TD3+BC's on a 1M-transition dataset.

Both methods get their default configs (2x256 nets, batch 256, policy delay 2) and the same synthetic
halfcheetah-shaped dataset (obs 17, act 6): episodes of 1000 steps whose states move on a smooth
6-dimensional orbit (a few sinusoids per episode, mapped into 17 dimensions, plus noise) and whose
actions are a noisy squashed linear function of the state. Locomotion data is like that: low
intrinsic dimension, neighbours close along trajectories. A KD-tree's query time depends on it, so
``--data gaussian`` (i.i.d. normal states) is there for contrast.

The search's cost also depends on how far the actor's actions are from the data's: an untrained
actor answers ~0 everywhere, far from most dataset actions, and a KD-tree must then visit most of its
cells; a trained PRDC actor stays near dataset actions. The script times a few PRDC updates of the
untrained actor ("cold"), then fits the actor to the dataset's actions by ``--pretrain`` steps of
behaviour cloning (untimed; a stand-in for a trained policy that costs no searches), then times
blocks of TD3+BC and PRDC updates, interleaved over ``--rounds`` rounds on the same threads, and
reports medians. The time spent inside the neighbour query is measured too (the profile: search
against the rest).

    python benchmarks/prdc_search.py --threads 1          # CPU: the KD-tree (about 3 minutes)
    python benchmarks/prdc_search.py --device cuda        # accelerator: the chunked scan on the device
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

from hybridrl.core.buffers import TransitionBuffer
from hybridrl.core.checkpoint import atomic_write_json
from hybridrl.core.context import BuildContext, OfflineView
from hybridrl.core.seeding import resolve_device
from hybridrl.offline.prdc import PRDC, PRDCConfig
from hybridrl.offline.td3bc import TD3BC, TD3BCConfig

OBS_DIM, ACT_DIM, EPISODE = 17, 6, 1000


def synthetic_dataset(n: int, kind: str, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """D4RL-style arrays of ``n`` transitions in episodes of 1000 steps, and the episode returns."""
    rng = np.random.default_rng(seed)
    episodes = n // EPISODE
    if kind == "structured":
        latent = 6
        t = np.arange(EPISODE + 1)[None, :, None]
        freq = rng.uniform(0.05, 0.5, (episodes, 1, latent))
        phase = rng.uniform(0, 2 * np.pi, (episodes, 1, latent))
        amp = rng.uniform(0.5, 1.5, (episodes, 1, latent))
        orbit = amp * np.sin(freq * t + phase) + 0.3 * rng.normal(size=(episodes, 1, latent))
        states = orbit @ rng.normal(size=(latent, OBS_DIM)) + 0.05 * rng.normal(size=(episodes, EPISODE + 1, OBS_DIM))
    else:
        states = rng.normal(size=(episodes, EPISODE + 1, OBS_DIM))
    obs, next_obs = states[:, :-1].reshape(-1, OBS_DIM), states[:, 1:].reshape(-1, OBS_DIM)
    mixing = rng.normal(size=(OBS_DIM, ACT_DIM)) / np.sqrt(OBS_DIM)
    actions = np.tanh(obs @ mixing + 0.3 * rng.normal(size=(len(obs), ACT_DIM)))
    rewards = rng.normal(size=len(obs))
    data = {"observations": obs, "actions": actions, "rewards": rewards, "next_observations": next_obs,
            "terminals": np.zeros(len(obs))}
    return {k: v.astype(np.float32) for k, v in data.items()}, rewards.reshape(episodes, -1).sum(1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_block(update, device: torch.device, seconds: float) -> tuple[int, float]:
    """(updates, seconds) of one block of about ``seconds``; a positive even count (whole actor cycles)."""
    sync(device)
    start, n = time.perf_counter(), 0
    while n < 2 or n % 2 or time.perf_counter() - start < seconds:
        update()
        n += 1
    sync(device)
    return n, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--data", choices=("structured", "gaussian"), default="structured")
    parser.add_argument("--pretrain", type=int, default=2000, help="untimed BC steps of PRDC's actor before timing")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per method per round")
    parser.add_argument("--out", default="benchmarks/results/prdc_search.json")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    data, returns = synthetic_dataset(args.transitions, args.data)
    view = OfflineView.from_arrays(data, returns, device)
    ctx = BuildContext.of_sizes(OBS_DIM, ACT_DIM, device=device, offline=view)
    td3bc = TD3BC(TD3BCConfig(), ctx)
    start = time.perf_counter()
    prdc = PRDC(PRDCConfig(), ctx)
    index_build_s = time.perf_counter() - start
    batch_size = PRDCConfig().batch_size
    assert TD3BCConfig().batch_size == batch_size
    buffers = {name: TransitionBuffer(OBS_DIM, ACT_DIM, device=device, offline=view, seed=0)
               for name in ("td3bc", "prdc")}

    # The profile: wall time inside the neighbour query, synchronized so it is the search's own.
    query, spent = prdc.index.query, {"s": 0.0, "calls": 0}

    def timed_query(keys):
        sync(device)
        t0 = time.perf_counter()
        out = query(keys)
        sync(device)
        spent["s"] += time.perf_counter() - t0
        spent["calls"] += 1
        return out

    prdc.index.query = timed_query
    updates = {"td3bc": lambda: td3bc.update(buffers["td3bc"].sample(batch_size)),
               "prdc": lambda: prdc.update(buffers["prdc"].sample(batch_size))}

    print(f"{args.data} data, {args.transitions} transitions on {device}, {torch.get_num_threads()} threads; "
          f"index built in {index_build_s:.1f} s ({prdc.index.backend})", flush=True)
    for _ in range(10):
        updates["td3bc"]()
    # Cold: the untrained actor, two actor cycles.
    spent["s"], spent["calls"] = 0.0, 0
    n, seconds = time_block(updates["prdc"], device, 0.0)
    n2, seconds2 = time_block(updates["prdc"], device, 0.0)
    cold_ms = 1000 * (seconds + seconds2) / (n + n2)
    cold_search_ms = 1000 * spent["s"] / (n + n2)
    print(f"cold (untrained actor): {cold_ms:.1f} ms per PRDC update, {cold_search_ms:.1f} ms of it searching",
          flush=True)
    optim = torch.optim.Adam(prdc.actor.parameters(), lr=1e-3)
    for _ in range(args.pretrain):
        batch = buffers["prdc"].sample(batch_size)
        loss = (prdc.actor(prdc.normalizer(batch.obs)) - batch.action).pow(2).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
    mse = loss.detach().item()
    print(f"actor fitted to the data's actions by {args.pretrain} BC steps (mse {mse:.3f})", flush=True)

    rates: dict[str, list[float]] = {"td3bc": [], "prdc": []}
    query_share = []
    for r in range(args.rounds):
        for name in ("td3bc", "prdc"):
            spent["s"], spent["calls"] = 0.0, 0
            n, seconds = time_block(updates[name], device, args.seconds)
            rates[name].append(n / seconds)
            if name == "prdc":
                query_share.append(spent["s"] / seconds)
        print(f"round {r + 1}: td3bc {rates['td3bc'][-1]:.1f}/s, prdc {rates['prdc'][-1]:.1f}/s "
              f"(search {100 * query_share[-1]:.0f}% of prdc's time)", flush=True)

    med = {name: statistics.median(v) for name, v in rates.items()}
    ratio = med["td3bc"] / med["prdc"]
    share = statistics.median(query_share)
    # The search's cost per PRDC update, and what is left when it is taken away.
    per_update_ms = 1000 / med["prdc"]
    search_ms = share * per_update_ms
    distance = float(prdc.losses(buffers["prdc"].sample(batch_size))[1]["dc/distance"])
    result = {
        "device": str(device), "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "machine": platform.platform(), "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__, "data": args.data, "transitions": args.transitions,
        "obs_dim": OBS_DIM, "act_dim": ACT_DIM, "batch_size": batch_size, "pretrain_bc_steps": args.pretrain,
        "cold_prdc_ms_per_update": cold_ms, "cold_search_ms_per_update": cold_search_ms,
        "rounds": args.rounds, "seconds_per_block": args.seconds, "index_backend": prdc.index.backend,
        "index_build_s": index_build_s,
        "updates_per_s": {name: {"median": med[name], "rounds": rates[name]} for name in rates},
        "cost_ratio_prdc_over_td3bc": ratio,
        "search_share_of_prdc_time": share, "search_ms_per_prdc_update": search_ms,
        "prdc_ms_per_update_without_search": per_update_ms - search_ms,
        "td3bc_ms_per_update": 1000 / med["td3bc"],
        "mean_neighbour_distance_at_end": distance,
        "goal_ratio_at_most": 1.5, "goal_met": ratio <= 1.5,
    }
    print(f"td3bc {med['td3bc']:.1f} updates/s, prdc {med['prdc']:.1f} updates/s: a PRDC update costs "
          f"{ratio:.2f}x a TD3+BC update (goal <= 1.5x: {'met' if ratio <= 1.5 else 'not met'}); "
          f"the search takes {100 * share:.0f}% of PRDC's time ({search_ms:.2f} ms per update, "
          f"one query every 2 updates), the rest {per_update_ms - search_ms:.2f} ms vs TD3+BC's "
          f"{1000 / med['td3bc']:.2f} ms")
    if args.out:
        atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
