"""The exact nearest-neighbour search: both backends find scipy's KD-tree neighbours (ties: equal distances)."""

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from hybridrl.core import neighbours
from hybridrl.core.neighbours import NearestNeighbours


def kdtree(points, keys):
    dist, rows = cKDTree(points.double().numpy()).query(keys.double().numpy(), k=1)
    return torch.from_numpy(dist), torch.from_numpy(rows)


def assert_same_neighbours(dist, rows, ref_dist, ref_rows, points, keys):
    """Equal rows, or rows at the same distance (a tie); the reported distances are the rows' own."""
    assert rows.dtype == torch.int64 and dist.dtype == torch.float64
    own = (keys.double() - points[rows].double()).norm(dim=1)
    assert torch.allclose(dist, own, rtol=1e-12, atol=1e-12)
    differ = rows != ref_rows
    assert torch.allclose(dist[differ], ref_dist[differ], rtol=1e-12, atol=1e-12)
    assert torch.allclose(dist, ref_dist, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("n", "dim", "chunk", "candidates"),
                         [(1, 3, 4, 8), (50, 2, 7, 1), (500, 5, 64, 4), (2000, 23, 333, 8), (3000, 9, 1 << 17, 2)])
def test_both_backends_find_the_kd_tree_neighbours(n, dim, chunk, candidates):
    gen = torch.Generator().manual_seed(n + dim)
    points = torch.randn(n, dim, generator=gen)
    # Keys near the points (the PRDC case) and far from them.
    near = points[torch.randint(0, n, (64,), generator=gen)] + 0.1 * torch.randn(64, dim, generator=gen)
    keys = torch.cat([near, 3 * torch.randn(64, dim, generator=gen)])
    ref_dist, ref_rows = kdtree(points, keys)
    for backend in ("tree", "scan"):
        index = NearestNeighbours(points, backend=backend, chunk_size=chunk, candidates=candidates)
        assert_same_neighbours(*index.query(keys), ref_dist, ref_rows, points, keys)


def test_auto_picks_the_tree_for_cpu_points():
    assert NearestNeighbours(torch.zeros(3, 2)).backend == "tree"


def test_exact_ties_give_equal_distances_and_the_scan_the_lowest_row():
    # Rows 1, 3 and 5 are the same point; rows 0 and 2 are equally far from the key, on either side.
    points = torch.tensor([[0.0, 1.0], [5.0, 5.0], [0.0, -1.0], [5.0, 5.0], [9.0, 9.0], [5.0, 5.0]])
    keys = torch.tensor([[0.0, 0.0], [5.0, 5.0], [5.1, 5.0]])
    ref_dist, ref_rows = kdtree(points, keys)
    for chunk in (1, 2, 6):
        dist, rows = NearestNeighbours(points, backend="scan", chunk_size=chunk).query(keys)
        assert rows.tolist() == [0, 1, 1]
        assert_same_neighbours(dist, rows, ref_dist, ref_rows, points, keys)
    assert_same_neighbours(*NearestNeighbours(points, backend="tree").query(keys), ref_dist, ref_rows, points, keys)


def test_keys_the_float32_screen_cannot_certify_are_searched_again_in_float64(monkeypatch):
    # Near ties closer than float32 can tell apart: the answer must still be the exact nearest row.
    base = torch.randn(200, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    points = torch.cat([base, base + 1e-7]).float()
    keys = base[:32].float() + 3e-8
    ref_dist, ref_rows = kdtree(points, keys)
    calls = []
    screen = NearestNeighbours._screen

    def spy(self, keys, dtype, unit):
        calls.append((dtype, keys.shape[0]))
        return screen(self, keys, dtype, unit)

    monkeypatch.setattr(NearestNeighbours, "_screen", spy)
    # A screen that pretends to be TF32-coarse certifies no key: every key is redone in float64.
    monkeypatch.setattr(neighbours, "_matmul_unit", lambda device: 2.0**-11)
    index = NearestNeighbours(points, backend="scan", chunk_size=50, candidates=2)
    assert_same_neighbours(*index.query(keys), ref_dist, ref_rows, points, keys)
    assert calls == [(torch.float32, 32), (torch.float64, 32)]


def test_bad_inputs_fail_with_one_line():
    with pytest.raises(ValueError, match="non-empty"):
        NearestNeighbours(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="CPU"):
        NearestNeighbours(torch.zeros(4, 3, device="meta"), backend="tree")
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        NearestNeighbours(torch.zeros(4, 3)).query(torch.zeros(2, 4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_device_scan_finds_the_kd_tree_neighbours():
    gen = torch.Generator().manual_seed(0)
    points = torch.randn(300_000, 23, generator=gen)
    keys = points[:512] + 0.3 * torch.randn(512, 23, generator=gen)
    ref_dist, ref_rows = kdtree(points, keys)
    index = NearestNeighbours(points.cuda())
    assert index.backend == "scan"
    dist, rows = index.query(keys.cuda())
    assert dist.device.type == "cuda" and rows.device.type == "cuda"
    assert_same_neighbours(dist.cpu(), rows.cpu(), ref_dist, ref_rows, points, keys)
    assert np.isfinite(dist.cpu().numpy()).all()
