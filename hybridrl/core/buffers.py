"""Device-resident transition storage: a fixed offline part plus an online ring.

Everything lives on the training device as tensors. Sampling draws indices with a device-side
``torch.Generator`` and gathers rows there, so a batch never round-trips through the host and the
dataset is copied to the device once. The generator's state is part of ``state_dict`` so a resumed
run draws exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np
import torch

FIELDS = ("obs", "action", "reward", "next_obs", "terminated")
# D4RL's dictionary keys for the same fields.
D4RL_KEYS = {"obs": "observations", "action": "actions", "reward": "rewards",
             "next_obs": "next_observations", "terminated": "terminals"}


@dataclass(frozen=True)
class Batch:
    """A batch of transitions; B rows, all on one device, float32.

    ``terminated`` is 1.0 where the episode ended in a true terminal state (no bootstrap) and 0.0
    otherwise, including time-limit truncations, which do bootstrap.
    """

    obs: torch.Tensor  # (B, obs_dim)
    action: torch.Tensor  # (B, act_dim), in [-1, 1]
    reward: torch.Tensor  # (B,)
    next_obs: torch.Tensor  # (B, obs_dim)
    terminated: torch.Tensor  # (B,)

    def __len__(self) -> int:
        return self.obs.shape[0]

    @staticmethod
    def concat(first: Batch, second: Batch) -> Batch:
        return Batch(*(torch.cat([getattr(first, f.name), getattr(second, f.name)]) for f in fields(Batch)))


@dataclass(frozen=True)
class MixedBatch(Batch):
    """A hybrid batch: its first ``offline_rows`` rows come from the dataset, the rest from the online ring.

    It is a ``Batch`` (methods that treat all rows alike use it as one); methods that weigh the two
    kinds differently (H2O) or need them apart read ``offline`` and ``online``, which are views.
    """

    offline_rows: int = 0

    @property
    def offline(self) -> Batch:
        n = self.offline_rows
        return Batch(*(getattr(self, name)[:n] for name in FIELDS))

    @property
    def online(self) -> Batch:
        n = self.offline_rows
        return Batch(*(getattr(self, name)[n:] for name in FIELDS))

    @property
    def is_offline(self) -> torch.Tensor:
        """(B,) bool: which rows come from the dataset."""
        mask = torch.zeros(len(self), dtype=torch.bool, device=self.obs.device)
        mask[: self.offline_rows] = True
        return mask


class TransitionTensors(Protocol):
    """A dataset already on a device, field by field (``core.context.OfflineView`` is one)."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor


def as_tensor(x, device: torch.device) -> torch.Tensor:
    """float32 on ``device`` from an array, a tensor or a number."""
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=torch.float32)
    return torch.as_tensor(np.asarray(x), dtype=torch.float32).to(device)


class TransitionBuffer:
    """Offline transitions (fixed) + an online ring of ``online_capacity`` rows.

    Args:
        obs_dim, act_dim: sizes of one observation and one action.
        device: where the tensors live and batches are drawn.
        offline: optional dataset: ``TransitionTensors`` such as an ``OfflineView`` (its device
            tensors are used as they are) or a
            D4RL-style mapping (observations, actions, rewards, next_observations, terminals) of
            arrays, copied to ``device`` once.
        online_capacity: rows of the ring that ``add`` writes to (0: offline only).
        seed: seed of the sampling generator.
    """

    def __init__(self, obs_dim: int, act_dim: int, *, device: torch.device | str = "cpu",
                 offline: Mapping[str, np.ndarray] | TransitionTensors | None = None, online_capacity: int = 0,
                 seed: int = 0) -> None:
        self.device = torch.device(device)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        shapes = {"obs": (obs_dim,), "action": (act_dim,), "reward": (), "next_obs": (obs_dim,), "terminated": ()}
        if offline is None:
            self.offline = {name: torch.empty((0, *shape), device=self.device) for name, shape in shapes.items()}
        elif isinstance(offline, Mapping):
            self.offline = {name: as_tensor(offline[D4RL_KEYS[name]], self.device) for name in FIELDS}
        else:  # device tensors: shared, not copied
            self.offline = {name: getattr(offline, name).to(self.device) for name in FIELDS}
        for name, shape in shapes.items():
            got = tuple(self.offline[name].shape[1:])
            if got != shape:
                raise ValueError(f"offline {D4RL_KEYS[name]} has rows of shape {got}, expected {shape}")
        self.online = {name: torch.zeros((online_capacity, *shape), device=self.device)
                       for name, shape in shapes.items()}
        self.online_capacity = online_capacity
        self.online_size = 0
        self._cursor = 0
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    @property
    def offline_size(self) -> int:
        return self.offline["obs"].shape[0]

    def __len__(self) -> int:
        return self.offline_size + self.online_size

    def add(self, obs, action, reward, next_obs, terminated) -> None:
        """Write one transition or a batch of them (leading dimension) into the online ring."""
        if self.online_capacity == 0:
            raise RuntimeError("this buffer has no online part: build it with online_capacity > 0")
        values = dict(zip(FIELDS, (obs, action, reward, next_obs, terminated), strict=True))
        rows = {name: as_tensor(v, self.device).reshape(-1, *self.online[name].shape[1:])
                for name, v in values.items()}
        n = rows["obs"].shape[0]
        idx = (self._cursor + torch.arange(n, device=self.device)) % self.online_capacity
        for name, value in rows.items():
            self.online[name][idx] = value
        self._cursor = (self._cursor + n) % self.online_capacity
        self.online_size = min(self.online_size + n, self.online_capacity)

    def _gather(self, part: dict[str, torch.Tensor], idx: torch.Tensor) -> Batch:
        return Batch(*(part[name][idx] for name in FIELDS))

    def _randint(self, high: int, n: int) -> torch.Tensor:
        return torch.randint(high, (n,), generator=self.generator, device=self.device)

    def sample(self, batch_size: int, *, offline_fraction: float | None = None) -> Batch:
        """Draw ``batch_size`` rows with replacement.

        ``offline_fraction=None`` samples uniformly over all stored rows (a ``Batch``). A number in
        [0, 1] takes exactly ``round(batch_size * offline_fraction)`` rows from the offline part and
        the rest from the online ring, as a ``MixedBatch`` with the offline rows first (hybrid
        methods fix the mix this way, e.g. RLPD's 50/50).
        """
        if offline_fraction is None:
            if len(self) == 0:
                raise RuntimeError("cannot sample from an empty buffer")
            if self.online_size == 0:
                return self._gather(self.offline, self._randint(self.offline_size, batch_size))
            if self.offline_size == 0:
                return self._gather(self.online, self._randint(self.online_size, batch_size))
            # One index over the union, resolved with torch.where: no host sync on the device.
            idx = self._randint(len(self), batch_size)
            from_offline = idx < self.offline_size
            offline_rows = self._gather(self.offline, idx.clamp(max=self.offline_size - 1))
            online_rows = self._gather(self.online, (idx - self.offline_size).clamp(min=0))
            return Batch(*(torch.where(from_offline.view(-1, *[1] * (a.dim() - 1)), a, b)
                           for a, b in zip(vars(offline_rows).values(), vars(online_rows).values(), strict=True)))
        if not 0.0 <= offline_fraction <= 1.0:
            raise ValueError(f"offline_fraction must be in [0, 1], got {offline_fraction}")
        n_offline = round(batch_size * offline_fraction)
        n_online = batch_size - n_offline
        if n_offline and self.offline_size == 0:
            raise RuntimeError("asked for offline rows but the buffer holds no offline data")
        if n_online and self.online_size == 0:
            raise RuntimeError("asked for online rows but the online ring is still empty")
        parts = []
        if n_offline:
            parts.append(self._gather(self.offline, self._randint(self.offline_size, n_offline)))
        if n_online:
            parts.append(self._gather(self.online, self._randint(self.online_size, n_online)))
        rows = parts[0] if len(parts) == 1 else Batch.concat(*parts)
        return MixedBatch(*(getattr(rows, name) for name in FIELDS), offline_rows=n_offline)

    def state_dict(self) -> dict:
        """The online ring and the sampler state; the offline part is reloaded from its dataset."""
        return {
            "online": {name: t[: self.online_size].cpu() if self.online_size < self.online_capacity else t.cpu()
                       for name, t in self.online.items()},
            "online_size": self.online_size,
            "cursor": self._cursor,
            "offline_size": self.offline_size,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["offline_size"] != self.offline_size:
            raise ValueError(f"checkpoint was made with {state['offline_size']} offline transitions, this buffer "
                             f"holds {self.offline_size}: resume with the same dataset")
        n = state["online_size"]
        for name, t in state["online"].items():
            self.online[name][: t.shape[0]] = t.to(self.device)
        self.online_size, self._cursor = n, state["cursor"]
        self.generator.set_state(state["generator"])
