"""Online SAC on Hopper-v5: the learning curve (return vs environment steps) per seed, and SAC
updates per second next to d3rlpy's SAC with the same sizes (2x256, batch 256).

    python benchmarks/sac_hopper.py --steps 300000 --seeds 0 1 2     # the learning claim (hours on 2 cores)
    python benchmarks/sac_hopper.py --speed-only                     # updates/s, seconds
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hybridrl.bench.throughput import measure
from hybridrl.core.checkpoint import atomic_write_json
from hybridrl.core.config import RunConfig
from hybridrl.core.logging import read_metrics
from hybridrl.core.seeding import resolve_device
from hybridrl.runners import run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--eval-every", type=int, default=10_000)
    parser.add_argument("--speed-only", action="store_true")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", default="runs/sac_hopper")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    speed = measure("sac", device=str(device), seconds=args.seconds)
    result: dict = {"device": str(device), "threads": torch.get_num_threads(),
                    "updates_per_s": {"hybridrl": speed["updates_per_s"]}}
    if speed["reference"] is not None:
        result["updates_per_s"]["d3rlpy"] = speed["reference"]["updates_per_s"]
    for name, ups in result["updates_per_s"].items():
        print(f"{name:<9} SAC updates/s: {ups:.1f}")
    if not args.speed_only:
        result["curves"] = {}
        for seed in args.seeds:
            run_dir = Path(args.out) / f"sac-s{seed}"
            run_config = RunConfig(steps=args.steps, seed=seed, device=args.device, eval_every=args.eval_every)
            final = run("sac", run_config, env="hopper", out_dir=run_dir)
            curve = [(row["step"], row["eval/return"]) for row in read_metrics(run_dir / "metrics.jsonl")
                     if "eval/return" in row]
            result["curves"][seed] = curve
            best_step = next((s for s, ret in curve if ret >= 2500), None)
            print(f"seed {seed}: final return {final['return_mean']:.0f}; first eval >= 2500 at "
                  f"{best_step if best_step is not None else 'never'}")
    atomic_write_json(Path(args.out) / "summary.json", result)
    return result


if __name__ == "__main__":
    main()
