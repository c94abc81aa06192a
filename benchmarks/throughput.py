"""Gradient updates per second of an offline method (CQL by default): hybridrl next to d3rlpy, same
sizes, one run.

CQL: both agents get 3x256 actor and critics, two critics, batch 256 and 10 sampled actions of each
kind (uniform, policy at s, policy at s'); d3rlpy's CQL runs with a fixed conservative weight
(``alpha_learning_rate=0``) like hybridrl's default. TD3+BC, IQL, BC, SAC (``--method``): the method's
defaults (the paper's: 2x256 networks, batch 256), mirrored in d3rlpy's config
(``hybridrl.bench.throughput``). Batches are drawn before the clock starts for d3rlpy (its sampler is
Python-side); hybridrl's are drawn from its device buffer inside the timed loop.

For each we report updates/s, FLOPs per update (``torch.utils.flop_counter``) and achieved FLOP/s as a
fraction of the machine's measured matmul rate (an 8192x256x256 fp32 matmul on the same threads).
Timing runs in rounds that interleave the two libraries and the matmul reference; medians are reported.

    python benchmarks/throughput.py                     # CPU, torch's default threads
    python benchmarks/throughput.py --device cuda       # on a GPU machine
    python benchmarks/throughput.py --profile           # where each library's time goes
    python benchmarks/throughput.py --method iql --threads 1 --profile
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch

from hybridrl import registry
from hybridrl.bench.throughput import (
    count_flops,
    d3rlpy_update,
    hybridrl_update,
    matmul_rate,
    random_dataset,
    time_block,
    updates_per_cycle,
)
from hybridrl.core.checkpoint import atomic_write_json
from hybridrl.core.config import with_overrides
from hybridrl.core.runtime import keep_freed_memory
from hybridrl.core.seeding import resolve_device

CQL_HIDDEN = (256, 256, 256)
"""CQL's networks here: CORL's 3x256, as d3rlpy's reproduction; every other method keeps its defaults."""


def profile_updates(name: str, update, device, updates: int = 20) -> None:
    """torch.profiler's table of ``updates`` updates (operators by self time) and cProfile's Python view."""
    import cProfile
    import pstats

    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(updates):
            update()
    print(f"--- {name}: torch.profiler, {updates} updates, by self CPU time")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    # Python-side cost (dispatch, optimizer loops, scalers) that the operator table spreads thin
    profiler = cProfile.Profile()
    profiler.runcall(lambda: [update() for _ in range(updates)])
    print(f"--- {name}: cProfile, {updates} updates, by internal time")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="cql", help="a registered RL method d3rlpy also has: cql, td3bc, iql, "
                        "bc, sac")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-sampled-actions", type=int, default=10, help="CQL only")
    parser.add_argument("--seconds", type=float, default=30.0, help="timed seconds per implementation")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--skip-d3rlpy", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--default-allocator", action="store_true",
                        help="leave glibc's thresholds alone (the training loops raise them for both libraries)")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/throughput.json for "
                        "CQL, throughput-METHOD.json beside it for another method)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    allocator_tuned = False if args.default_allocator else keep_freed_memory()
    torch.manual_seed(0)
    device = resolve_device(args.device)
    data = random_dataset(100_000)
    sizes = {"batch_size": args.batch_size}
    if args.method == "cql":
        sizes.update(hidden=CQL_HIDDEN, num_sampled_actions=args.num_sampled_actions)
    config = with_overrides(registry.get(args.method).config(), sizes)
    ours, _ = hybridrl_update(args.method, data, device, config)
    updates = {"hybridrl": ours}
    reference = None if args.skip_d3rlpy else d3rlpy_update(args.method, config, data, device)
    if reference is not None:
        updates["d3rlpy"] = reference
    elif not args.skip_d3rlpy:
        print("d3rlpy is not installed (pip install 'hybridrl[bench]'); reporting hybridrl alone")
    cycle = updates_per_cycle(config)
    rows = {name: {"flops_per_update": count_flops(update, cycle)} for name, update in updates.items()}
    for update in updates.values():
        for _ in range(args.warmup):
            update()
    # Rounds interleave the implementations and the matmul reference, so a change in the machine's
    # load touches all of them alike; the medians are reported.
    peaks, block_rates = [], {name: [] for name in updates}
    for _ in range(args.rounds):
        peaks.append(matmul_rate(device, repeats=5))
        for name, update in updates.items():
            block_rates[name].append(time_block(update, device, args.seconds / args.rounds))
    peak = statistics.median(peaks)
    for name, rates in block_rates.items():
        rows[name].update(updates_per_s=statistics.median(rates), updates_per_s_rounds=rates)
    if args.profile:
        for name, update in updates.items():
            profile_updates(name, update, device)
    for row in rows.values():
        row["flops_per_s"] = row["flops_per_update"] * row["updates_per_s"]
        row["fraction_of_matmul"] = row["flops_per_s"] / peak

    print(f"{args.method}: device {device} ({platform.processor() or platform.machine()}), "
          f"threads {torch.get_num_threads()}, "
          f"matmul 8192x256x256: {peak / 1e9:.1f} GFLOP/s, glibc thresholds raised: {allocator_tuned}")
    print(f"{'impl':<10} {'updates/s':>10} {'GFLOP/update':>13} {'GFLOP/s':>9} {'of matmul':>10}")
    for name, row in rows.items():
        print(f"{name:<10} {row['updates_per_s']:>10.2f} {row['flops_per_update'] / 1e9:>13.2f} "
              f"{row['flops_per_s'] / 1e9:>9.1f} {row['fraction_of_matmul']:>9.0%}")
    if "d3rlpy" in rows:
        speedup = rows["hybridrl"]["updates_per_s"] / rows["d3rlpy"]["updates_per_s"]
        print(f"hybridrl / d3rlpy updates per second: {speedup:.2f}x")
    result = {"method": args.method, "device": str(device), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "matmul_flops_per_s": peak, "batch_size": args.batch_size,
              "num_sampled_actions": getattr(config, "num_sampled_actions", None), "hidden": list(config.hidden),
              "allocator_tuned": allocator_tuned, "results": rows}
    suffix = "" if args.method == "cql" else f"-{args.method}"
    atomic_write_json(args.out or f"benchmarks/results/throughput{suffix}.json", result)
    return result


if __name__ == "__main__":
    main()
