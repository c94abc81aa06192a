"""Normalized scores of RL runs at one evaluation step, across grid directories: equal budgets from unequal runs.

A grid's report scores each run at its end. To compare a method run for 10k updates with methods run
for 20k, read every run's evaluation at step 10k (the longer runs evaluated there on the way):

    python benchmarks/scores_at_step.py runs/bench/offline-20k runs/bench/offline-10k --step 10000

prints one row per (method, dataset): mean ± sd (ddof=0, as the report) over seeds of the score evaluated at that
step, the number of seeds, and the runs' full budgets. Runs that did not evaluate at the step (or have
not reached it) are listed as missing. A run's score at step N of a longer run is not always the score
of a run of N steps: methods whose schedules span the run (IQL's cosine actor decay) were at a higher
learning rate there.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

from hybridrl.bench.report.runs import RL_KINDS, load_runs


def scores_at_step(grids: list[str], step: int, key: str = "eval/normalized_score") -> dict:
    """{(method, dataset): {"scores": [...], "seeds": [...], "budgets": {...}, "missing": [...]}}."""
    table: dict = defaultdict(lambda: {"scores": [], "seeds": [], "budgets": set(), "missing": []})
    for grid in grids:
        for run in load_runs(grid):
            if run.spec is None or run.spec.get("kind") not in RL_KINDS:
                continue
            if not any(key in m for m in run.metrics):
                continue  # a metric the method does not log (BC has no critic)
            row = table[(run.spec["method"], run.spec.get("dataset") or run.spec.get("env"))]
            found = [m[key] for m in run.metrics if m.get("step") == step and key in m]
            if not found:
                row["missing"].append(run.run_id)
                continue
            row["scores"].append(found[-1])
            row["seeds"].append(run.spec.get("seed"))
            row["budgets"].add(run.spec.get("steps"))
    return dict(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("grids", nargs="+", help="grid directories (hybridrl bench --out)")
    parser.add_argument("--step", type=int, required=True, help="the evaluation step to read")
    parser.add_argument("--key", default="eval/normalized_score",
                        help="the evaluation metric, e.g. eval/q_start_gap (Q(s0, pi) - discounted return)")
    args = parser.parse_args(argv)
    table = scores_at_step(args.grids, args.step, args.key)
    print(f"{args.key} at step {args.step}: mean ± sd over seeds (n, budgets of the runs)")
    for (method, dataset), row in sorted(table.items(), key=lambda item: (item[0][1], item[0][0])):
        scores = row["scores"]
        if scores:
            sd = statistics.pstdev(scores)  # ddof=0, as the report
            budgets = ",".join(str(b) for b in sorted(b for b in row["budgets"] if b is not None))
            print(f"{dataset:<40} {method:<8} {statistics.mean(scores):7.1f} ± {sd:5.1f}  "
                  f"(n={len(scores)}, runs of {budgets})")
        if row["missing"]:
            print(f"{dataset:<40} {method:<8} no evaluation at this step: {', '.join(row['missing'])}")


if __name__ == "__main__":
    main()
