"""Exact nearest-neighbour search over a fixed set of points, on the device the points live on.

``NearestNeighbours(points).query(keys)`` returns, for each key, its Euclidean distance to the
nearest point and that point's row. Two backends give the same answer:

- ``tree`` (points on the CPU): a ``scipy.spatial.cKDTree`` built once, queried with as many
  workers as torch has threads, so ``--threads`` bounds it like the rest of the run. The tree is
  built on the points' principal axes (centred and rotated, float64): a rotation keeps every
  distance, and a KD-tree splits along coordinates, so on data of low intrinsic dimension (states
  along trajectories, actions that follow them) its cells then cut across the data's spread instead
  of along axes it barely varies on. Measured on 1M points in 23 dimensions (``benchmarks/
  prdc_search.py``'s data), queries far from the points ran about 5x faster than on the raw axes.
  Distances are reported in the original coordinates, from the rows found.
- ``scan`` (points on an accelerator; also available on the CPU): a brute-force scan on the
  points' device, chunked over the points so that memory stays at ``keys x chunk_size`` floats.
  Each chunk is screened in float32 with the matmul form |x|^2 - 2 q.x + |q|^2 and keeps its
  ``candidates`` best rows; the candidates are then rescored in float64 with the direct form
  sum((q - x)^2), which is how the tree measures distances too. The screen's rounding is bounded,
  so a key whose best candidate beats every discarded row by more than that bound is certified
  exact; the few keys that are not (near ties, TF32 matmuls) are screened again in float64.

Neither backend ever copies the points between devices after construction.

Tie rule: points at the same float64 distance from a key are equally near. The scan returns the
lowest row among them (when the tied rows are among its candidates, as they are unless more than
``candidates`` rows tie); the tree returns whichever its traversal meets first. Two backends may
therefore return different rows for a tied key, with equal distances.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

Backend = Literal["auto", "tree", "scan"]

# Unit roundoff of a float32 matmul at each of torch's precision settings: exact float32, TF32
# (10 stored mantissa bits), bfloat16 (7).
_FP32_MATMUL_UNIT = {"highest": 2.0**-24, "high": 2.0**-11, "medium": 2.0**-8}
_FP64_UNIT = 2.0**-53


def _matmul_unit(device: torch.device) -> float:
    unit = _FP32_MATMUL_UNIT.get(torch.get_float32_matmul_precision(), 2.0**-8)
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        unit = max(unit, _FP32_MATMUL_UNIT["high"])
    return unit


def _principal_axes(points: np.ndarray, sample: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """Centre (D,) and orthonormal axes (D, D), by decreasing variance, of (N, D) float64 points.

    The covariance comes from at most ``sample`` evenly strided rows: the axes only steer the tree's
    splits, so any rotation is exact and an estimate is enough.
    """
    stride = max(1, len(points) // sample)
    subset = points[::stride]
    centre = subset.mean(axis=0)
    centred = subset - centre
    _, axes = np.linalg.eigh(centred.T @ centred)
    return centre, np.ascontiguousarray(axes[:, ::-1])


class NearestNeighbours:
    """The nearest of ``points`` (N, D) to each key, exactly; see the module docstring.

    Args:
        points: (N, D) floating tensor; kept by reference (not copied) on its device.
        backend: ``auto`` picks ``tree`` for CPU points and ``scan`` otherwise.
        chunk_size: rows of ``points`` per scanned block (scan backend).
        candidates: rows kept per block and key by the float32 screen (scan backend).
    """

    def __init__(self, points: torch.Tensor, *, backend: Backend = "auto", chunk_size: int = 1 << 17,
                 candidates: int = 8) -> None:
        if points.dim() != 2 or points.shape[0] == 0 or not points.is_floating_point():
            raise ValueError(f"points must be a non-empty (N, D) float tensor, got {tuple(points.shape)}")
        if chunk_size < 1 or candidates < 1:
            raise ValueError("chunk_size and candidates must be >= 1")
        if backend == "auto":
            backend = "tree" if points.device.type == "cpu" else "scan"
        if backend not in ("tree", "scan"):
            raise ValueError(f"unknown backend {backend!r}: tree, scan or auto")
        if backend == "tree" and points.device.type != "cpu":
            # A tree on the host would copy every query's keys and results across devices.
            raise ValueError("the tree backend needs the points on the CPU; use scan on an accelerator")
        self.backend = backend
        self.points = points.detach()
        self.chunk_size = chunk_size
        self.candidates = candidates
        if backend == "tree":
            from scipy.spatial import cKDTree

            points64 = self.points.double().numpy()
            self._centre, self._axes = _principal_axes(points64)
            # float64, as the tree computes anyway. Midpoint splits (balanced_tree=False), measured on 1M
            # points in 23 dimensions: built in 0.9 s instead of 1.2 s, and queries no slower.
            self._tree = cKDTree((points64 - self._centre) @ self._axes, balanced_tree=False)
        else:
            self._screen_points = self.points.float()
            self._sq_norms = self._screen_points.pow(2).sum(dim=1)
            self._max_sq_norm = float(self._sq_norms.max())

    def __len__(self) -> int:
        return self.points.shape[0]

    @torch.no_grad()
    def query(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For (B, D) keys: (B,) float64 distances to the nearest points and (B,) int64 rows of them."""
        if keys.dim() != 2 or keys.shape[1] != self.points.shape[1]:
            raise ValueError(f"keys must be (B, {self.points.shape[1]}), got {tuple(keys.shape)}")
        keys = keys.detach()
        if keys.device != self.points.device:
            raise ValueError(f"keys are on {keys.device}, the points on {self.points.device}")
        if self.backend == "tree":
            keys64 = keys.double()
            rotated = (keys64.numpy() - self._centre) @ self._axes
            _, rows = self._tree.query(rotated, k=1, workers=torch.get_num_threads())
            rows = torch.from_numpy(rows.astype(np.int64, copy=False))
            # The distance in the original coordinates (the rotation's rounding is ~1e-16 relative).
            return (keys64 - self.points[rows].double()).norm(dim=1), rows
        return self._scan(keys)

    def _scan(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys64 = keys.double()
        sq_dist, rows, certified = self._screen(keys, torch.float32, _matmul_unit(keys.device))
        # Data-dependent, hence one device sync per query; worth it to stay exact.
        redo = (~certified).nonzero().squeeze(1)
        if redo.numel():
            sq_redo, rows_redo, _ = self._screen(keys64[redo], torch.float64, _FP64_UNIT)
            sq_dist[redo], rows[redo] = sq_redo, rows_redo
        return sq_dist.sqrt(), rows

    def _screen(self, keys: torch.Tensor, dtype: torch.dtype, unit: float,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Best rows by screening in ``dtype``, rescored exactly; returns (sq. distances, rows, certified)."""
        q = keys.to(dtype)
        kept_dist, kept_rows = [], []
        for start in range(0, len(self), self.chunk_size):
            block = self._screen_points[start:start + self.chunk_size].to(dtype)
            norms = self._sq_norms[start:start + self.chunk_size].to(dtype)
            # |x|^2 - 2 q.x; |q|^2 is the same for every row of a key and is added after the top-k.
            partial = torch.addmm(norms.unsqueeze(0), q, block.T, alpha=-2.0)
            dist, rows = partial.topk(min(self.candidates, block.shape[0]), dim=1, largest=False)
            kept_dist.append(dist)
            kept_rows.append(rows + start)
        dist, pos = torch.cat(kept_dist, dim=1).topk(min(self.candidates, len(self)), dim=1, largest=False)
        rows = torch.cat(kept_rows, dim=1).gather(1, pos)
        q_sq = q.pow(2).sum(dim=1)
        # Every discarded row screened at least as far as the last kept one: a lower bound on its
        # exact distance is that screen value minus the screen's rounding bound (Higham's gamma_D on
        # the dot product and the norms, plus the three additions).
        bound = (2 * keys.shape[1] + 8) * unit * (q_sq + self._max_sq_norm)
        floor = (dist[:, -1] + q_sq - bound).double()
        exact = (keys.double().unsqueeze(1) - self.points[rows].double()).pow(2).sum(dim=-1)
        best = exact.min(dim=1, keepdim=True).values
        # Lowest row among exact ties (the module's tie rule).
        sentinel = torch.iinfo(torch.int64).max
        row = torch.where(exact == best, rows, torch.full_like(rows, sentinel)).min(dim=1).values
        best = best.squeeze(1)
        certified = (best < floor) | torch.tensor(len(self) <= self.candidates, device=keys.device)
        return best, row, certified
