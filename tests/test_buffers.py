import numpy as np
import pytest
import torch

from hybridrl.core.buffers import TransitionBuffer


def offline_arrays(n=100, obs_dim=3, act_dim=2):
    rng = np.random.default_rng(0)
    return {
        "observations": rng.normal(size=(n, obs_dim)), "actions": rng.uniform(-1, 1, (n, act_dim)),
        "rewards": np.arange(n, dtype=np.float32), "next_observations": rng.normal(size=(n, obs_dim)),
        "terminals": np.zeros(n),
    }


def test_exact_offline_fraction():
    buffer = TransitionBuffer(3, 2, offline=offline_arrays(), online_capacity=50)
    for _ in range(20):
        buffer.add(np.zeros(3), np.zeros(2), -1.0, np.zeros(3), 0.0)
    batch = buffer.sample(64, offline_fraction=0.25)
    assert len(batch) == 64
    assert int((batch.reward >= 0).sum()) == 16  # offline rewards are >= 0, online ones -1


def test_uniform_sampling_over_both_parts_and_errors():
    buffer = TransitionBuffer(3, 2, offline=offline_arrays(n=10), online_capacity=10)
    with pytest.raises(RuntimeError, match="online ring is still empty"):
        buffer.sample(8, offline_fraction=0.5)
    with pytest.raises(ValueError, match="offline_fraction"):
        buffer.sample(8, offline_fraction=1.5)
    buffer.add(np.zeros((10, 3)), np.zeros((10, 2)), -np.ones(10), np.zeros((10, 3)), np.zeros(10))
    share = (buffer.sample(20_000).reward < 0).float().mean().item()
    assert abs(share - 0.5) < 0.02


def test_ring_overwrites_oldest():
    buffer = TransitionBuffer(1, 1, online_capacity=4)
    buffer.add(np.arange(6).reshape(6, 1), np.zeros((6, 1)), np.arange(6), np.zeros((6, 1)), np.zeros(6))
    assert len(buffer) == 4
    assert sorted(buffer.online["reward"].tolist()) == [2.0, 3.0, 4.0, 5.0]


def test_state_dict_resumes_the_same_draws():
    buffer = TransitionBuffer(3, 2, offline=offline_arrays(), online_capacity=8, seed=3)
    buffer.add(np.ones((5, 3)), np.zeros((5, 2)), np.full(5, -1.0), np.ones((5, 3)), np.zeros(5))
    buffer.sample(7)
    state = buffer.state_dict()
    expected = [buffer.sample(16, offline_fraction=0.5).reward for _ in range(3)]
    fresh = TransitionBuffer(3, 2, offline=offline_arrays(), online_capacity=8, seed=99)
    fresh.load_state_dict(state)
    got = [fresh.sample(16, offline_fraction=0.5).reward for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


def test_rejects_wrong_row_shapes():
    data = offline_arrays()
    data["actions"] = data["actions"][:, :1]
    with pytest.raises(ValueError, match="actions has rows of shape"):
        TransitionBuffer(3, 2, offline=data)


def test_fractional_samples_are_mixed_batches_that_keep_offline_and_online_rows_apart():
    from hybridrl.core.buffers import MixedBatch

    offline = {"observations": np.zeros((10, 3)), "actions": np.zeros((10, 2)), "rewards": np.zeros(10),
               "next_observations": np.zeros((10, 3)), "terminals": np.zeros(10)}
    buffer = TransitionBuffer(3, 2, offline=offline, online_capacity=5)
    for _ in range(5):
        buffer.add(np.ones(3), np.ones(2), 1.0, np.ones(3), 0.0)
    batch = buffer.sample(9, offline_fraction=1 / 3)
    assert isinstance(batch, MixedBatch) and len(batch) == 9 and batch.offline_rows == 3
    assert torch.equal(batch.offline.reward, torch.zeros(3)) and torch.equal(batch.online.reward, torch.ones(6))
    assert batch.is_offline.tolist() == [True] * 3 + [False] * 6
    assert torch.equal(batch.reward, torch.cat([batch.offline.reward, batch.online.reward]))
