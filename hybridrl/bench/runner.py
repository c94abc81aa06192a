"""Run a grid of ``RunSpec``s: one directory per run, finished runs skipped, died runs resumed.

Each run directory holds:

    spec.json          what the run is (written first; a rerun with another spec there is refused)
    environment.json   Python, package versions, device, git commit, host
    config.json, metrics.jsonl, checkpoint.pt ...   written by the training loop
    scores.json        the final scores, written last and atomically: its presence means "finished"

Runs execute in a local process pool (one process per run, ``cores // workers`` torch threads each) or,
when asked, on Ray (a local Ray instance or a cluster address); the results files are the same. A
worker holds an exclusive lock on its run directory, so two grids sharing a directory never run the
same run twice at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from hybridrl.bench.rundir import ENVIRONMENT, ERROR, LOCK, SCORES, SPEC, read_scores
from hybridrl.bench.suites import LATE_KINDS, RunSpec
from hybridrl.core.checkpoint import atomic_write_json, atomic_write_text

PACKAGES = ("hybridrl", "torch", "numpy", "gymnasium", "mujoco", "minari", "transformers", "trl", "accelerate",
            "peft", "d3rlpy", "ray")


class GridError(ValueError):
    """The grid cannot run as asked (a run directory holds another run, duplicate runs...)."""


def environment(device: str) -> dict[str, Any]:
    """Where a run ran: enough to reproduce it or to explain a difference."""
    from importlib import metadata

    import torch

    from hybridrl.core.seeding import resolve_device

    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    resolved = resolve_device(device)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions,
            "device": str(resolved),
            "device_name": torch.cuda.get_device_name(resolved) if resolved.type == "cuda" else platform.processor(),
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "git_commit": commit,
            "hostname": socket.gethostname()}


def execute(spec_dict: dict[str, Any], run_dir: str, device: str, threads: int | None) -> dict[str, Any]:
    """Run one spec to completion in this process (a pool worker, a Ray task, or inline)."""
    import torch

    from hybridrl.bench.execute import EXECUTORS

    spec, path = RunSpec.from_dict(spec_dict), Path(run_dir)
    if threads:
        torch.set_num_threads(threads)
    with open(path / LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return {"run_id": spec.run_id, "status": "busy", "error": "another process is running it"}
        scores = read_scores(path)
        if scores is not None:  # finished meanwhile by another grid
            return {"run_id": spec.run_id, "status": "finished", "scores": scores}
        atomic_write_json(path / ENVIRONMENT, environment(device))
        start = time.perf_counter()
        try:
            result = EXECUTORS[spec.kind](spec, path, device, threads)
        except Exception as err:  # reported per run; the grid goes on with the others
            message = f"{type(err).__name__}: {err}"
            atomic_write_text(path / ERROR, message + "\n")
            return {"run_id": spec.run_id, "status": "failed", "error": message}
        # "dataset" is what the run trains on (its dataset, its env, or both), as in spec.json
        scores = {"kind": spec.kind, "method": spec.method, "dataset": spec.target, "seed": spec.seed,
                  "steps": spec.steps, **result, "wall_s": time.perf_counter() - start}
        atomic_write_json(path / SCORES, scores)
        (path / ERROR).unlink(missing_ok=True)
        return {"run_id": spec.run_id, "status": "finished", "scores": scores}


def _worker_init() -> None:
    # A pool worker dies with the grid: a killed grid must not leave orphans training in its run dirs.
    with contextlib.suppress(OSError, AttributeError):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class GridResult:
    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    busy: list[str] = field(default_factory=list)
    """Runs another process holds (its lock): neither finished nor failed here."""


def _claim(spec: RunSpec, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / SPEC
    wanted = spec.to_dict()
    if path.exists():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError:
            existing = None
        if existing is not None and existing != wanted and not _same_run(existing, spec):
            raise GridError(f"{run_dir} holds a different run ({path} differs): use another --out or delete it")
        if existing is not None:
            return
    atomic_write_json(path, wanted)


def _same_run(existing: Any, spec: RunSpec) -> bool:
    """Whether a spec.json in another layout (written before runs named their env apart) is ``spec``."""
    try:
        return RunSpec.from_dict(existing) == spec
    except (TypeError, ValueError, AttributeError):
        return False


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def run_grid(specs: Sequence[RunSpec], out: Path, *, workers: int | None = None, device: str = "auto",
             threads: int | None = None, ray: bool = False, ray_address: str | None = None,
             echo: Callable[[str], None] = print) -> GridResult:
    """Run every unfinished spec under ``out``; returns what finished, was skipped, or failed."""
    out = Path(out)
    ids = [s.run_id for s in specs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise GridError(f"the grid lists the same run twice: {', '.join(duplicates)}")
    result = GridResult()
    pending: list[RunSpec] = []
    for spec in specs:
        _claim(spec, out / spec.run_id)
        if read_scores(out / spec.run_id) is not None:
            result.skipped.append(spec.run_id)
        else:
            pending.append(spec)
    workers = max(1, min(workers or default_workers(), max(len(pending), 1)))
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    if result.skipped:
        echo(f"{len(result.skipped)} of {len(specs)} runs already finished in {out}; running {len(pending)}")
    if not pending:
        return result
    echo(f"running {len(pending)} runs: {'Ray' if ray or ray_address else f'{workers} processes'}, "
         f"{threads} torch thread(s) each, device {device}")
    start = time.perf_counter()
    counter = iter(range(1, len(pending) + 1))

    def report(outcome: dict[str, Any]) -> None:
        done, run_id = next(counter), outcome["run_id"]
        if outcome["status"] == "finished":
            result.finished.append(run_id)
            s = outcome["scores"]
            value = "n/a" if s["score"] is None else f"{s['score']:.4g}"
            echo(f"[{done}/{len(pending)}] {run_id}: {s['metric']} {value} ({s['wall_s']:.0f} s)")
        elif outcome["status"] == "busy":
            result.busy.append(run_id)
            echo(f"[{done}/{len(pending)}] {run_id}: busy: {outcome['error']}")
        else:
            result.failed[run_id] = outcome["error"]
            echo(f"[{done}/{len(pending)}] {run_id}: {outcome['status']}: {outcome['error']}")

    # runs that read other runs' outputs go last
    for phase in ([s for s in pending if s.kind not in LATE_KINDS], [s for s in pending if s.kind in LATE_KINDS]):
        jobs = [(s.to_dict(), str(out / s.run_id), device, threads) for s in phase]
        if jobs:
            _run_jobs(jobs, workers, threads, ray, ray_address, report)
    echo(f"grid done in {time.perf_counter() - start:.0f} s: {len(result.finished)} finished, "
         f"{len(result.failed)} failed, {len(result.skipped)} skipped"
         + (f", {len(result.busy)} busy in another process" if result.busy else ""))
    return result


def _run_jobs(jobs: list[tuple], workers: int, threads: int, ray: bool, ray_address: str | None,
              report: Callable[[dict[str, Any]], None]) -> None:
    if ray or ray_address:
        _run_on_ray(jobs, workers, threads, ray_address, report)
    elif workers == 1 or len(jobs) == 1:
        for job in jobs:
            report(execute(*job))
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=get_context("spawn"),
                                 initializer=_worker_init) as pool:
            run_ids = {pool.submit(execute, *job): job[0]["run_id"] for job in jobs}
            futures: set[Future] = set(run_ids)
            while futures:
                done, futures = wait(futures, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        report(future.result())
                    except Exception as err:  # the worker process itself died (killed, out of memory)
                        report({"run_id": run_ids[future], "status": "failed",
                                "error": f"worker died: {type(err).__name__}: {err}"})


def _run_on_ray(jobs: list[tuple], workers: int, threads: int, address: str | None,
                report: Callable[[dict[str, Any]], None]) -> None:
    """The same jobs as Ray tasks; on a cluster, ``out`` must be on a filesystem every node sees."""
    try:
        import ray
    except ImportError as err:
        raise GridError("Ray is not installed: pip install 'hybridrl[ray]' (or drop --ray)") from err
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=None if address else workers * threads, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        task = ray.remote(num_cpus=threads, max_retries=0)(execute)
        refs = [task.remote(*job) for job in jobs]
        while refs:
            done, refs = ray.wait(refs, num_returns=1)
            report(ray.get(done[0]))
    finally:
        if started:
            ray.shutdown()
