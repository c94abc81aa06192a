"""Online SAC on Hopper-v5: the learning curve (return vs environment steps) per seed, and SAC
updates per second next to d3rlpy's SAC with the same sizes (2x256, batch 256).

    python benchmarks/sac_hopper.py --steps 300000 --seeds 0 1 2     # the learning claim (hours on 2 cores)
    python benchmarks/sac_hopper.py --speed-only                     # updates/s, seconds
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from hybridrl.core.buffers import TransitionBuffer
from hybridrl.core.config import RunConfig
from hybridrl.core.logging import read_metrics
from hybridrl.core.seeding import resolve_device
from hybridrl.online.sac import SAC, SACConfig
from hybridrl.runners import run_online

OBS_DIM, ACT_DIM = 11, 3


def updates_per_second(device: torch.device, seconds: float) -> dict[str, float]:
    rng = np.random.default_rng(0)
    n = 100_000
    data = {"observations": rng.normal(size=(n, OBS_DIM)), "actions": rng.uniform(-1, 1, (n, ACT_DIM)),
            "rewards": rng.normal(size=n), "next_observations": rng.normal(size=(n, OBS_DIM)),
            "terminals": np.zeros(n)}
    algo = SAC(OBS_DIM, ACT_DIM, SACConfig(), device)
    buffer = TransitionBuffer(OBS_DIM, ACT_DIM, device=device, offline=data)
    result = {"hybridrl": _time(lambda: algo.update(buffer.sample(256)), seconds)}
    try:
        import d3rlpy
    except ImportError:
        return result
    timeouts = np.zeros(n, dtype=np.float32)
    timeouts[-1] = 1.0
    dataset = d3rlpy.dataset.MDPDataset(observations=data["observations"].astype(np.float32),
                                        actions=data["actions"].astype(np.float32),
                                        rewards=data["rewards"].astype(np.float32),
                                        terminals=np.zeros(n, dtype=np.float32), timeouts=timeouts)
    encoder = d3rlpy.models.VectorEncoderFactory([256, 256])
    sac = d3rlpy.algos.SACConfig(actor_encoder_factory=encoder, critic_encoder_factory=encoder,
                                 batch_size=256).create(device="cuda:0" if device.type == "cuda" else "cpu:0")
    sac.build_with_dataset(dataset)
    batches = [dataset.sample_transition_batch(256) for _ in range(64)]
    counter = iter(range(10**12))
    result["d3rlpy"] = _time(lambda: sac.update(batches[next(counter) % 64]), seconds)
    return result


def _time(update, seconds: float) -> float:
    for _ in range(10):
        update()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        update()
        n += 1
    return n / (time.perf_counter() - start)


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
    result: dict = {"device": str(device), "threads": torch.get_num_threads(),
                    "updates_per_s": updates_per_second(device, args.seconds)}
    for name, ups in result["updates_per_s"].items():
        print(f"{name:<9} SAC updates/s: {ups:.1f}")
    if not args.speed_only:
        result["curves"] = {}
        for seed in args.seeds:
            run_dir = Path(args.out) / f"sac-s{seed}"
            run = RunConfig(steps=args.steps, seed=seed, device=args.device, eval_every=args.eval_every)
            final = run_online("sac", "hopper", run, out_dir=run_dir)
            curve = [(row["step"], row["eval/return"]) for row in read_metrics(run_dir / "metrics.jsonl")
                     if "eval/return" in row]
            result["curves"][seed] = curve
            best_step = next((s for s, ret in curve if ret >= 2500), None)
            print(f"seed {seed}: final return {final['return_mean']:.0f}; first eval >= 2500 at "
                  f"{best_step if best_step is not None else 'never'}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
