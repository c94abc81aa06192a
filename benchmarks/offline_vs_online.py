"""Offline vs online on equal data: an offline method on a dataset of N transitions, next to online
SAC given N environment steps in the same task. Prints one table and writes JSON.

    python benchmarks/offline_vs_online.py --dataset hybridrl/hopper/medium-replay-v0 --algo cql \
        --offline-steps 100000 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from hybridrl.control.datasets import load
from hybridrl.core.checkpoint import atomic_write_json
from hybridrl.core.config import RunConfig
from hybridrl.runners import run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--algo", default="cql", help="offline method")
    parser.add_argument("--offline-steps", type=int, default=100_000, help="gradient updates of the offline method")
    parser.add_argument("--online-steps", type=int, default=None,
                        help="environment steps of SAC (default: the dataset's number of transitions)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/offline_vs_online")
    args = parser.parse_args(argv)

    data = load(args.dataset)
    online_steps = args.online_steps or len(data)
    task = data.env_id
    out = Path(args.out)
    scores: dict[str, list[float]] = {args.algo: [], "sac": []}
    for seed in args.seeds:
        offline_run = RunConfig(steps=args.offline_steps, seed=seed, device=args.device, eval_every=0)
        online_run = RunConfig(steps=online_steps, seed=seed, device=args.device, eval_every=0)
        offline = run(args.algo, offline_run, dataset=args.dataset, out_dir=out / f"{args.algo}-s{seed}")
        online = run("sac", online_run, env=task, out_dir=out / f"sac-s{seed}")
        scores[args.algo].append(offline["normalized_score"])
        scores["sac"].append(online["normalized_score"])
    rows = {name: {"mean": float(np.mean(v)), "std": float(np.std(v)), "scores": v} for name, v in scores.items()}
    print(f"{args.dataset}: {len(data)} transitions; seeds {args.seeds}")
    print(f"{'method':<22} {'budget':>22} {'normalized score':>18}")
    print(f"{args.algo + ' (offline)':<22} {f'{args.offline_steps} updates':>22} "
          f"{rows[args.algo]['mean']:>9.1f} ± {rows[args.algo]['std']:.1f}")
    sac = rows["sac"]
    print(f"{'sac (online)':<22} {f'{online_steps} env steps':>22} {sac['mean']:>9.1f} ± {sac['std']:.1f}")
    result = {"dataset": args.dataset, "transitions": len(data), "online_steps": online_steps,
              "offline_steps": args.offline_steps, "seeds": args.seeds, "results": rows}
    atomic_write_json(out / "summary.json", result)
    return result


if __name__ == "__main__":
    main()
