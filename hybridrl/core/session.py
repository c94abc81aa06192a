"""The one training session: what every long-running loop shares (RL, pairwise, self-play, factory).

A session owns a run directory::

    .session.lock    held (``flock``) while a process trains here; a second process is refused
    config.json      the run's record: what defines it (a rerun with another record is refused)
    metrics.jsonl    one JSON line per log step or evaluation
    checkpoint.pt    the last good checkpoint (atomic): the loop's state, the RNGs, the record,
                     and how many metric lines it covers
    results.json     written last, atomically: its presence means "finished"

and the behaviour around it, the same for every loop:

- a rerun of the same command resumes from ``checkpoint.pt``; the metric lines written after that
  checkpoint are dropped and written again, so a resumed run's ``metrics.jsonl`` equals an
  uninterrupted run's; a finished run is not rerun;
- metrics are kept on the device in a window and leave it once per flush (one sync); a non-finite
  mean, or non-finite parameters at a checkpoint, stop the run with :class:`DivergenceError`, and the
  last good checkpoint stays;
- a corrupt ``config.json``, ``results.json`` or ``checkpoint.pt`` is named as such, never mistaken
  for another run;
- Ctrl-C ends with :class:`Interrupted`, whose one line says what is saved and how to resume.

Loops subclass nothing: they open a ``Session`` and call ``add`` / ``flush`` / ``log`` / ``save`` /
``finish`` on it.
"""

from __future__ import annotations

import errno
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from hybridrl.core.checkpoint import atomic_save, atomic_write_json, load_checkpoint
from hybridrl.core.logging import MetricsLogger, start_wandb
from hybridrl.core.seeding import rng_state, set_rng_state

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
RESULTS = "results.json"
# not ".lock": the bench grid holds its own flock on that name around the very loop that opens this
# session, and two flocks on one file conflict even within one process
LOCK = ".session.lock"


class RunDirectoryError(ValueError):
    """The run directory cannot be used for this run (another run's, busy, corrupt, not writable)."""


class DivergenceError(RuntimeError):
    """Training produced NaN/inf; the last good checkpoint is kept."""


class Interrupted(KeyboardInterrupt):
    """The user pressed Ctrl-C; progress up to the last checkpoint is saved.

    Still a ``KeyboardInterrupt``: an ``except Exception`` around a loop (a bench grid going on to its
    next run, a user's own script) must not swallow Ctrl-C because it now carries a message.
    """


def _plain(value: Any) -> Any:
    """JSON's view of a record (tuples become lists, paths strings), for comparing records."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def finite(state: Any) -> bool:
    """Whether every floating tensor in a nested state (dicts, lists, tensors) is finite."""
    if isinstance(state, torch.Tensor):
        return bool(torch.isfinite(state).all()) if state.is_floating_point() else True
    if isinstance(state, dict):
        return all(finite(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return all(finite(v) for v in state)
    return True


def _differing(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The keys in which two records differ; nested dicts name their inner keys (``run.lr``)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [prefix.rstrip(".")] if prefix else []
    keys = sorted(set(old) | set(new))
    return [name for k in keys for name in _differing(old.get(k), new.get(k), f"{prefix}{k}.")]


def _read_json(path: Path, what: str, fix: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        reason = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8 text"
        raise RunDirectoryError(f"{path} is corrupt ({what} is not valid JSON: {reason}); {fix}") from None


def prepare_run_dir(out_dir: Path) -> Path:
    """Create ``out_dir`` (and its parents) or say in one line why it cannot be a run directory."""
    out_dir = Path(out_dir)
    for parent in [out_dir, *out_dir.parents]:
        if parent.exists() and not parent.is_dir():
            raise RunDirectoryError(f"cannot use {out_dir} as a run directory: {parent} is a file; "
                                    "pass another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        reason = "read-only filesystem" if err.errno == errno.EROFS else (err.strerror or type(err).__name__)
        raise RunDirectoryError(f"cannot write to run directory {out_dir} ({reason}); pass another --out") from None
    return out_dir


class _DirectoryLock:
    """An exclusive, non-blocking ``flock`` on ``out_dir/.lock``, released when the process ends."""

    def __init__(self, out_dir: Path) -> None:
        import fcntl

        self.path = out_dir / LOCK
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(self._fd, 32, 0).decode(errors="replace").strip()
            holder = f"process {pid}" if pid else "another process"
            os.close(self._fd)
            raise RunDirectoryError(f"run directory {out_dir} is in use by {holder}: wait for it to "
                                    "finish, or pass another --out") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = -1


class Session:
    """One run directory and the behaviour around it (see the module docstring).

    Args:
        out_dir: the run directory; made if missing.
        record: what defines the run (JSON-ready); saved as ``config.json`` and compared on rerun.
            Leave out what may change between reruns (device, threads, progress bar).
        total: the step the loop runs to (for the progress bar).
        desc: the progress bar's label.
        progress: show a progress bar.
        step_key: the name of the step column in ``metrics.jsonl`` ("step", "iteration", ...).
        rate_name: the metric that counts window entries per second (None: none).
        main_process: False on the non-main processes of a multi-process run: they read the
            checkpoint but write nothing and hold no lock.
        tensorboard: also write TensorBoard events under ``out_dir/tb``.
        wandb: also send metric lines to a Weights & Biases run, the same one across resumes.
        map_location: where tensors of the checkpoint are loaded to.
    """

    def __init__(self, out_dir: str | os.PathLike, record: dict[str, Any], *, total: int, desc: str = "train",
                 progress: bool = True, step_key: str = "step", rate_name: str | None = "time/updates_per_s",
                 main_process: bool = True, tensorboard: bool = False, wandb: bool = False,
                 map_location: str | torch.device = "cpu") -> None:
        self.out_dir = Path(out_dir)
        self.record = _plain(record)
        self.total = total
        self.desc = desc
        self.progress = progress
        self.step_key = step_key
        self.rate_name = rate_name
        self.main = main_process
        self.tensorboard = tensorboard
        self.wandb = wandb
        self._lock: _DirectoryLock | None = None
        self._map_location = map_location
        if self.main:
            prepare_run_dir(self.out_dir)
            self._lock = _DirectoryLock(self.out_dir)
            self._remove_torn_writes()
        try:
            self._claim()
            self.finished: dict[str, Any] | None = self._read_results()
            self.resume_state: dict[str, Any] | None = None
            if self.finished is None and (self.out_dir / CHECKPOINT).exists():
                self.resume_state = self._read_checkpoint(map_location)
        except BaseException:
            self.release()
            raise
        self.start = int(self.resume_state["step"]) if self.resume_state else 0
        self.last_good: int | None = self.start if self.resume_state else None
        self.window: list[dict[str, torch.Tensor]] = list(self.resume_state.get("metric_window", [])
                                                          if self.resume_state else [])
        self._tick = time.perf_counter()
        self._rows = 0
        self.logger: MetricsLogger | None = None
        self.bar: Any = None

    # -- the run directory ----------------------------------------------------------------------------

    def _remove_torn_writes(self) -> None:
        """Delete temporary files of atomic writes that a kill interrupted (nobody else writes here: we
        hold the lock)."""
        for path in self.out_dir.glob(".*.tmp"):
            path.unlink(missing_ok=True)

    def _claim(self) -> None:
        path = self.out_dir / CONFIG
        if path.exists():
            existing = _read_json(path, CONFIG, "delete that file and rerun the same command to write it again "
                                              "(the checkpoint is kept and checked against the command)")
            saved = (self.out_dir / CHECKPOINT).exists() or (self.out_dir / RESULTS).exists()
            if existing != self.record and not saved and self.main:
                # the other run stopped before its first checkpoint (it diverged at once, or was refused):
                # nothing of it can resume, so the corrected command takes the directory over
                (self.out_dir / METRICS).unlink(missing_ok=True)
                atomic_write_json(path, self.record)
            elif existing != self.record:
                differing = _differing(existing, self.record)
                raise RunDirectoryError(
                    f"run directory {self.out_dir} holds another run (it differs in "
                    f"{', '.join(differing) or 'its layout'}): rerun with that run's settings to resume it, "
                    "or pass another --out")
        elif self.main:
            atomic_write_json(path, self.record)

    def _read_results(self) -> dict[str, Any] | None:
        path = self.out_dir / RESULTS
        if not path.exists():
            return None
        return _read_json(path, RESULTS, "delete that file and rerun the same command: the run then redoes its "
                                         "end from the last checkpoint")

    def _read_checkpoint(self, map_location: str | torch.device) -> dict[str, Any]:
        state = load_checkpoint(self.out_dir / CHECKPOINT, map_location=map_location)
        if "record" in state and _plain(state["record"]) != self.record:
            raise RunDirectoryError(f"{self.out_dir / CHECKPOINT} was written by another run than {CONFIG} "
                                    "describes: delete the checkpoint to start over, or pass another --out")
        return state

    def start_over(self) -> None:
        """Forget this run's checkpoint and results (same record): it starts again from step 0.

        Call before ``with session:``; the metric lines go too.
        """
        if self.main:
            for name in (RESULTS, CHECKPOINT):
                (self.out_dir / name).unlink(missing_ok=True)
        self.finished, self.resume_state, self.start, self.last_good = None, None, 0, None
        self.window = []

    def resume_finished(self) -> None:
        """Go on with a finished run (e.g. to more iterations than it had): its results are dropped
        and the loop resumes from the last checkpoint. Call before ``with session:``."""
        if self.finished is None:
            return
        if self.main:
            (self.out_dir / RESULTS).unlink(missing_ok=True)
        self.finished = None
        if (self.out_dir / CHECKPOINT).exists():
            self.resume_state = self._read_checkpoint(self._map_location)
            self.start = self.last_good = int(self.resume_state["step"])

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- the loop -------------------------------------------------------------------------------------

    def __enter__(self) -> Session:
        from tqdm.auto import tqdm

        if self.main:
            self.logger = MetricsLogger(self.out_dir / METRICS, step_key=self.step_key,
                                        keep_lines=self.resume_state.get("metric_rows") if self.resume_state else 0,
                                        tensorboard_dir=self.out_dir / "tb" if self.tensorboard else None,
                                        wandb_run=start_wandb(self.out_dir, self.record) if self.wandb else None)
            self._rows = self.logger.rows
        self.bar = tqdm(total=self.total, initial=self.start, desc=self.desc, unit=self.step_key,
                        disable=not (self.progress and self.main), dynamic_ncols=True, mininterval=1.0)
        self._tick = time.perf_counter()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.logger is not None:
            self.logger.close()
        self.release()
        if exc_type is KeyboardInterrupt:
            saved = (f"progress up to {self.step_key} {self.last_good} is saved in {self.out_dir}"
                     if self.last_good else f"no checkpoint had been written in {self.out_dir} yet")
            raise Interrupted(f"interrupted; {saved}: rerun the same command to resume") from None

    def restore_rng(self) -> None:
        """Put every RNG back where the checkpoint left it (call after rebuilding the loop's objects)."""
        if self.resume_state is not None and "rng" in self.resume_state:
            set_rng_state(self.resume_state["rng"])

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        """Keep one step's metrics (detached scalars, left on their device) for the next flush."""
        self.window.append(metrics)

    def flush(self, step: int, extra: dict[str, Any] | None = None,
              reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
        """Log the window's means (one device sync) with ``extra``; raise on NaN/inf. Returns the row.

        ``reduce`` maps the stacked means (one tensor) before they leave the device, e.g. a mean over
        the processes of a multi-process run.
        """
        means: dict[str, float] = {}
        if self.window:
            keys = list(dict.fromkeys(k for m in self.window for k in m))
            # restored entries sit on the CPU; new ones on the training device
            device = next((v.device for m in reversed(self.window) for v in m.values()), torch.device("cpu"))
            stacked = torch.stack([torch.stack([m[k].float().reshape(()).to(device) for m in self.window
                                                if k in m]).mean()
                                   for k in keys])
            if reduce is not None:
                stacked = reduce(stacked)
            means = dict(zip(keys, stacked.tolist(), strict=True))
            bad = [k for k, v in means.items() if not math.isfinite(v)]
            if bad:
                raise DivergenceError(self._diverged(step, bad[0]))
            now = time.perf_counter()
            if self.rate_name is not None:
                means[self.rate_name] = len(self.window) / max(now - self._tick, 1e-9)
            self._tick, self.window = now, []
            if self.bar is not None:
                self.bar.set_postfix({k: f"{means[k]:.3g}" for k in keys[:3]}, refresh=False)
        means.update(extra or {})
        if means:
            self.log(step, means, restart_clock=False)
        return means

    def log(self, step: int, row: dict[str, Any], *, restart_clock: bool = True) -> None:
        """Write one metrics line now (evaluations, per-iteration summaries)."""
        if self.logger is not None:
            self.logger.log(step, row)
            self._rows += 1
        if restart_clock:
            self._tick = time.perf_counter()  # time outside updates does not count against their rate

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def save(self, step: int, state: dict[str, Any], *, check: Any = None) -> None:
        """Checkpoint ``state`` at ``step`` atomically, unless ``check`` (default: ``state``) is not finite.

        The checkpoint also holds every RNG's state, the record and the metric lines written so far.
        """
        if not finite(state if check is None else check):
            raise DivergenceError(self._diverged(step, "parameters"))
        if self.main:
            # the metrics of steps since the last flush, so the first line after a resume averages
            # the same steps as an uninterrupted run's
            window = [{k: v.detach().cpu() for k, v in m.items()} for m in self.window]
            atomic_save({**state, "step": step, "rng": rng_state(), "record": self.record,
                         "metric_rows": self._rows, "metric_window": window}, self.out_dir / CHECKPOINT)
        self.last_good = step

    def finish(self, results: dict[str, Any]) -> dict[str, Any]:
        """Write ``results.json`` (atomically, last): the run is finished."""
        if self.main:
            atomic_write_json(self.out_dir / RESULTS, results)
        self.finished = results
        return results

    def divergence(self, step: int, what: str) -> DivergenceError:
        """The error to raise when a loop finds ``what`` non-finite itself (outside ``flush``/``save``)."""
        return DivergenceError(self._diverged(step, what))

    def _diverged(self, step: int, what: str) -> str:
        kept = (f"the last good checkpoint ({self.step_key} {self.last_good}) is kept in {self.out_dir / CHECKPOINT}"
                if self.last_good else "no checkpoint had been written yet")
        return (f"training diverged at {self.step_key} {step} ({what} is NaN/inf); {kept}; "
                "lower the learning rates or check the data for outliers")


@contextmanager
def interrupt_message(out_dir: Path) -> Iterator[None]:
    """For work outside a session's ``with`` (e.g. a final evaluation): Ctrl-C still gets one line."""
    try:
        yield
    except Interrupted:
        raise  # a session already said what is saved
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; the last checkpoint in {out_dir} is kept: rerun the same command "
                          "to resume") from None

