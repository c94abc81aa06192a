"""Benchmark: last-iterate convergence of Nash-learning methods on random intransitive preference games.

Checks the two tabular acceptance items of issue 5:

1. exact preferences, random intransitive 10x10 games, beta = 0.1: Nash-MP and EGPO reach a duality
   gap below 1e-6 within 3000 iterations with a linear last-iterate rate (fitted slope of log gap and
   of log KL(pi* || pi_k), next to Nash-MP's bound (1 + 2 beta)^(-N/2), N = 2 queries per iteration);
   plain multiplicative weights (SPPO, no regularization) does not converge in last iterate.
2. sampled preferences (100 Bernoulli queries per win-rate estimate): the same methods still reduce the
   gap by at least 100x.

Usage::

    python benchmarks/nash_games.py --out results/nash_games            # full run (about a minute on CPU)
    python benchmarks/nash_games.py --out /tmp/ng --seeds 0 --games 3 --iterations 300 \
        --sampled-iterations 300

Also runs the MLP-policy versions (``games_neural``, exact preferences). Writes ``results.json`` and
``gap_exact.png``, ``gap_sampled_<T>.png``, ``gap_neural.png`` into ``--out``, each against iterations,
and beside them the same gaps against oracle queries (``*_queries.png``; Nash-MP and EGPO ask twice per
iteration) and, for the MLP policies, against SGD steps (``gap_neural_steps.png``). ``plot_gap_curves``
(in ``hybridrl.preference.games``) is the function behind ``hybridrl pref games``.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from hybridrl.core.checkpoint import atomic_write_json
from hybridrl.core.seeding import resolve_device
from hybridrl.preference.games import (
    GAP_FLOOR,
    METHODS,
    default_lr,
    duality_gap_batched,
    queries_per_iteration,
    random_games,
    regularized_nash_batched,
    solve_batched,
)
from hybridrl.preference.games_neural import gradient_steps_per_iteration, solve_neural

# (label, method, lr): EGPO is also run at its paper's tabular step (lr_sgd = 0.1 -> eta = 4 lr / (n beta)).
RUNS: list[tuple[str, str, str | None]] = [
    ("nash_mp", "nash_mp", None),
    ("egpo", "egpo", None),
    ("egpo (paper lr 0.1)", "egpo", "egpo_paper"),
    ("nash_md", "nash_md", None),
    ("inpo", "inpo", None),
    ("online_ipo", "online_ipo", None),
    ("sppo / MWU (beta=0 gap)", "sppo", None),
]
FLOOR = GAP_FLOOR  # gaps are plotted and fitted above this (exact zeros after rounding)


def _lr_for(tag: str | None, n: int, beta: float) -> float | None:
    if tag == "egpo_paper":
        return 4 * 0.1 / (n * beta)
    return None


def _fit_log_slope(values: np.ndarray, low: float = 1e-12, high: float = 1e-3) -> float:
    """Least-squares slope of log(values) against the iteration, on the linear phase low < v < high."""
    index = np.flatnonzero((values > low) & (values < high))
    if index.size < 5:
        return float("nan")
    return float(np.polyfit(index, np.log(values[index]), 1)[0])


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis, with 0 log 0 = 0."""
    return (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(-1)


def _quantiles(gaps: np.ndarray) -> dict[str, list[float]]:
    """Median and 10/90% quantiles over games of (T + 1, games) gaps, for the JSON."""
    clipped = np.maximum(gaps, FLOOR)
    return {
        "median": np.quantile(clipped, 0.5, axis=1).tolist(),
        "q10": np.quantile(clipped, 0.1, axis=1).tolist(),
        "q90": np.quantile(clipped, 0.9, axis=1).tolist(),
    }


def run_methods(
    n: int,
    beta: float,
    iterations: int,
    seeds: list[int],
    games_per_seed: int,
    samples: int | None,
    device: torch.device,
) -> dict[str, dict]:
    """Run every method on ``games_per_seed`` games for each seed; gaps and per-game statistics."""
    results: dict[str, dict] = {}
    for label, method, lr_tag in RUNS:
        gaps, kls, averages = [], [], []
        for seed in seeds:
            P, reference = random_games(games_per_seed, n, seed, device=device)
            history = solve_batched(
                P,
                reference,
                method,
                beta,
                iterations,
                lr=_lr_for(lr_tag, n, beta),
                samples=samples,
                seed=seed,
            )
            score_beta = 0.0 if method == "sppo" else beta
            gaps.append(duality_gap_batched(P, reference, history, score_beta).cpu().numpy())
            if method == "sppo":
                # The classical counterpart: MWU's time average does converge (unregularized game).
                average = history.cumsum(0) / torch.arange(1, iterations + 2, device=device).view(-1, 1, 1)
                averages.append(duality_gap_batched(P, reference, average, 0.0).cpu().numpy())
            else:
                equilibrium = regularized_nash_batched(P, reference, beta)
                kls.append(_kl(equilibrium, history).cpu().numpy())
        gap = np.concatenate(gaps, axis=1)  # (T + 1, games)
        entry: dict = {
            "method": method,
            "queries_per_iteration": queries_per_iteration(method, n, samples),
            "lr": _lr_for(lr_tag, n, beta),  # None: the method's default (see games.default_lr)
            "default_lr": default_lr(method, beta, n),
            "gap_start": gap[0].tolist(),
            "gap_final": gap[-1].tolist(),
            "reduction_last_iterate": (gap[0] / np.maximum(gap[-1], FLOOR)).tolist(),
            "reduction_last_1pct_mean": (
                gap[0] / np.maximum(gap[-max(1, iterations // 100) :].mean(0), FLOOR)
            ).tolist(),
            "curves": _quantiles(gap),
        }
        below = gap < 1e-6
        first = np.where(below.any(0), below.argmax(0), -1)
        entry["first_iteration_below_1e-6"] = first.tolist()
        entry["gap_slope_per_iteration"] = [_fit_log_slope(gap[:, g]) for g in range(gap.shape[1])]
        if kls:
            kl = np.concatenate(kls, axis=1)
            entry["kl_final"] = kl[-1].tolist()
            entry["kl_slope_per_iteration"] = [
                _fit_log_slope(kl[:, g], low=1e-13, high=1e-3) for g in range(kl.shape[1])
            ]
        if averages:
            average_gap = np.concatenate(averages, axis=1)
            entry["average_iterate_gap_final"] = average_gap[-1].tolist()
            entry["average_iterate_curves"] = _quantiles(average_gap)
        entry["_gaps"] = gap
        results[label] = entry
    return results


def run_neural(
    n: int,
    beta: float,
    iterations: int,
    seeds: list[int],
    games_per_seed: int,
    lr: float,
    device: torch.device,
) -> dict[str, dict]:
    """MLP-policy versions (games_neural) with exact preferences; final gaps per game."""
    results: dict[str, dict] = {}
    for method in METHODS:
        gaps = []
        for seed in seeds:
            P, reference = random_games(games_per_seed, n, seed, device=device)
            history = solve_neural(P, reference, method, beta, iterations, lr=lr, seed=seed)
            score_beta = 0.0 if method == "sppo" else beta
            gaps.append(duality_gap_batched(P, reference, history, score_beta).cpu().numpy())
        gap = np.concatenate(gaps, axis=1)
        label = "sppo / MWU (beta=0 gap)" if method == "sppo" else method
        results[label] = {
            "method": method,
            "gradient_steps_per_iteration": gradient_steps_per_iteration(method),
            "queries_per_iteration": queries_per_iteration(method, n, None),
            "lr": lr,
            "gap_start_median": float(np.median(gap[0])),
            "gap_final": gap[-1].tolist(),
            "gap_final_median": float(np.median(gap[-1])),
            "gap_final_max": float(gap[-1].max()),
            "curves": _quantiles(gap),
            "_gaps": gap,
        }
    return results


X_AXES = {"iteration": None, "oracle queries": "queries_per_iteration",
          "gradient steps": "gradient_steps_per_iteration"}
"""x-axis label -> the entry's per-iteration count it scales iterations by (methods differ in both)."""


def _plot(results: dict[str, dict], title: str, path: Path, zoom: int | None = None, x: str = "iteration") -> None:
    panels = [None, zoom] if zoom else [None]
    per_iteration = X_AXES[x]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.8), squeeze=False)
    for ax, limit in zip(axes[0], panels, strict=True):
        for label, entry in results.items():
            gaps = np.maximum(entry["_gaps"], FLOOR)
            steps = np.arange(gaps.shape[0]) * (entry[per_iteration] if per_iteration else 1)
            if limit:
                gaps, steps = gaps[: limit + 1], steps[: limit + 1]
            median = np.quantile(gaps, 0.5, axis=1)
            (line,) = ax.plot(steps, median, label=label, lw=1.5)
            ax.fill_between(
                steps,
                np.quantile(gaps, 0.1, axis=1),
                np.quantile(gaps, 0.9, axis=1),
                alpha=0.15,
                color=line.get_color(),
            )
            if "average_iterate_curves" in entry:
                average = np.maximum(np.asarray(entry["average_iterate_curves"]["median"]), FLOOR)
                ax.plot(
                    steps,
                    average[: len(steps)],
                    ls=":",
                    color=line.get_color(),
                    label="sppo time average (beta=0)",
                )
        ax.axhline(1e-6, color="grey", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel("duality gap (median, 10-90% band)")
        ax.set_title(title if not limit else f"first {limit} iterations")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _summary(results: dict[str, dict], beta: float) -> dict[str, dict]:
    """Per-method numbers for the report (medians and worst cases over games)."""
    summary: dict[str, dict] = {}
    for label, entry in results.items():
        gap_final = np.asarray(entry["gap_final"])
        reduction = np.asarray(entry["reduction_last_iterate"])
        reduction_window = np.asarray(entry["reduction_last_1pct_mean"])
        first = np.asarray(entry["first_iteration_below_1e-6"])
        slope = np.asarray(entry["gap_slope_per_iteration"])
        item = {
            "gap_final_median": float(np.median(gap_final)),
            "gap_final_max": float(gap_final.max()),
            "games_below_1e-6": int((gap_final < 1e-6).sum()),
            "games": int(gap_final.size),
            "worst_first_iteration_below_1e-6": int(first.max()) if (first >= 0).all() else None,
            "reduction_min": float(reduction.min()),
            "reduction_median": float(np.median(reduction)),
            "reduction_last_1pct_mean_min": float(reduction_window.min()),
            "gap_slope_median": float(np.nanmedian(slope)) if np.isfinite(slope).any() else None,
            "gap_slope_range": [float(np.nanmin(slope)), float(np.nanmax(slope))]
            if np.isfinite(slope).any()
            else None,
        }
        if "kl_slope_per_iteration" in entry:
            kl_slope = np.asarray(entry["kl_slope_per_iteration"])
            if np.isfinite(kl_slope).any():
                item["kl_slope_median"] = float(np.nanmedian(kl_slope))
                item["kl_slope_range"] = [float(np.nanmin(kl_slope)), float(np.nanmax(kl_slope))]
        if "average_iterate_gap_final" in entry:
            item["average_iterate_gap_final_median"] = float(np.median(entry["average_iterate_gap_final"]))
            last = entry["_gaps"][-len(entry["_gaps"]) // 6 :]
            item["last_iterate_gap_min_over_last_sixth"] = float(last.min())
            item["last_iterate_gap_start_median"] = float(np.median(entry["gap_start"]))
        summary[label] = item
    theory = -math.log(1 + 2 * beta)
    summary["_theory"] = {
        "nash_mp_kl_log_rate_per_iteration": theory,
        "nash_mp_kl_rate_per_query": -0.5 * math.log(1 + 2 * beta),
        "note": "Nash-MP bound KL(pi*||pi_N) = O((1+2beta)^(-N/2)), N queries, 2 queries per iteration",
    }
    return summary


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/nash_games"))
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--iterations", type=int, default=3000, help="exact-preference iterations")
    parser.add_argument("--sampled-iterations", type=int, nargs="+", default=[3000, 10000])
    parser.add_argument("--samples", type=int, default=100, help="Bernoulli queries per win-rate estimate")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--games", type=int, default=10, help="games per seed")
    parser.add_argument("--neural-iterations", type=int, default=1000, help="0 skips the MLP-policy runs")
    parser.add_argument("--neural-lr", type=float, default=0.05)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    exact = run_methods(args.n, args.beta, args.iterations, args.seeds, args.games, None, device)
    exact_title = f"exact preferences: n={args.n}, beta={args.beta}, seeds {args.seeds}"
    _plot(exact, exact_title, args.out / "gap_exact.png", zoom=200)
    _plot(exact, exact_title, args.out / "gap_exact_queries.png", zoom=200, x="oracle queries")
    report: dict = {
        "config": {**vars(args), "out": str(args.out), "device": str(device)},
        "commit": _git_commit(),
        "exact": {"summary": _summary(exact, args.beta)},
        "sampled": {},
    }
    for iterations in args.sampled_iterations:
        sampled = run_methods(args.n, args.beta, iterations, args.seeds, args.games, args.samples, device)
        sampled_title = f"{args.samples} samples per estimate: n={args.n}, beta={args.beta}, seeds {args.seeds}"
        _plot(sampled, sampled_title, args.out / f"gap_sampled_{iterations}.png")
        _plot(sampled, sampled_title, args.out / f"gap_sampled_{iterations}_queries.png", x="oracle queries")
        report["sampled"][str(iterations)] = {"summary": _summary(sampled, args.beta)}
        for entry in sampled.values():
            entry.pop("_gaps")
        report["sampled"][str(iterations)]["runs"] = sampled
    for entry in exact.values():
        entry.pop("_gaps")
    report["exact"]["runs"] = exact
    if args.neural_iterations:
        neural = run_neural(
            args.n, args.beta, args.neural_iterations, args.seeds, args.games, args.neural_lr, device
        )
        neural_title = f"MLP policies, exact preferences, SGD lr {args.neural_lr}"
        _plot(neural, neural_title, args.out / "gap_neural.png")
        _plot(neural, neural_title, args.out / "gap_neural_steps.png", x="gradient steps")
        for entry in neural.values():
            entry.pop("_gaps")
        report["neural"] = neural
    report["wall_time_s"] = time.perf_counter() - start
    atomic_write_json(args.out / "results.json", report)

    # One summary table on stdout.
    print(f"device={device} seeds={args.seeds} games/seed={args.games} n={args.n} beta={args.beta}")
    theory = report["exact"]["summary"]["_theory"]["nash_mp_kl_log_rate_per_iteration"]
    print(f"theory (Nash-MP KL bound): log-rate {theory:.4f} per iteration (factor {math.exp(theory):.4f})")
    for label, item in report["exact"]["summary"].items():
        if label.startswith("_"):
            continue
        print(
            f"exact   {label:26s} final gap median {item['gap_final_median']:.2e} "
            f"max {item['gap_final_max']:.2e} | <1e-6 by it. {item['worst_first_iteration_below_1e-6']} "
            f"| gap slope {item['gap_slope_median']} | KL slope {item.get('kl_slope_median')}"
        )
    for iterations, block in report["sampled"].items():
        for label, item in block["summary"].items():
            if label.startswith("_"):
                continue
            print(
                f"sampled T={iterations:>5s} {label:26s} reduction min {item['reduction_min']:.0f} "
                f"median {item['reduction_median']:.0f} "
                f"(last-1% mean min {item['reduction_last_1pct_mean_min']:.0f})"
            )
    for label, entry in report.get("neural", {}).items():
        print(
            f"neural T={args.neural_iterations} {label:26s} final gap median {entry['gap_final_median']:.2e} "
            f"max {entry['gap_final_max']:.2e} (start {entry['gap_start_median']:.2e})"
        )
    print(f"wall time {report['wall_time_s']:.1f}s; wrote {args.out}/results.json")
    return report


if __name__ == "__main__":
    main()
